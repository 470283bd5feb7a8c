//! Installs what builds and tests need, when it is missing: quick no-ops when present.
//! As root on Debian/Ubuntu it installs; otherwise it prints the exact commands and stops.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

use crate::{root, run};

const APT_BPF: &[&str] = &["build-essential", "rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"];
/// Real servers and clients the live tests drive.
// openssl: test certificates and `s_server`; wget: a TLS client on GnuTLS (not probed).
const APT_TEST: &[&str] = &[
    "curl",
    "python3",
    "python3-venv",
    "python3-pip",
    "prometheus",
    "nginx-light",
    "openssl",
    "wget",
    "postgresql",
    "redis-server",
    "systemd",
    "iproute2",
    // NAT between the multi-host test's namespaces (a Service address, a masquerade).
    "nftables",
];
/// rotel ships a Rust OTLP collector binary: the third-party collector of the span tests.
const PIP_TEST: &[&str] = &[
    "uvicorn==0.54.*",
    "fastapi==0.165.*",
    "httpx==0.28.*",
    "requests==2.*",
    "mcp==2.3.*",
    "python-multipart==0.0.*",
    "rotel==0.0.1a15",
    // The fidelity harness's fronts: uvicorn on uvloop, aiohttp server and client.
    "uvloop==0.23.*",
    "aiohttp==3.14.*",
    // The database-span test's app: asyncpg (pooled) and redis-py's asyncio client.
    "asyncpg==0.32.*",
    "redis==7.*",
    // Validates deploy/kubernetes against the Kubernetes schema (tests/deploy.rs).
    "kubernetes-validate==1.37.*",
    // The log tests' gunicorn app (sync and gthread workers, their access log).
    "gunicorn==27.*",
    // The Sentry test's app reports its exceptions with the real SDK (tests/sentry.rs).
    "sentry-sdk==2.*",
];
const BPF_LINKER_INSTALL: &str = "LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo install bpf-linker@0.13.0 --locked --no-default-features --features llvm-22";

pub struct BpfToolchain {
    pub cargo: PathBuf,
    pub rustc: PathBuf,
    pub linker_override: Option<PathBuf>,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn has_apt() -> bool {
    Path::new("/usr/bin/apt-get").exists()
}

fn cargo_bin() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"))
        .join("bin")
}

/// PATH with cargo's bin folder (where `cargo install` puts bpf-linker) in front.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_bin()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).expect("paths without separators")
}

fn on_path(tool: &str) -> bool {
    env::split_paths(&path_with_cargo_bin()).any(|p| p.join(tool).is_file())
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !Command::new("dpkg").args(["-s", p]).output().is_ok_and(|o| o.status.success()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !(is_root() && has_apt()) {
        bail!(
            "missing Debian packages; install them with:\n  sudo apt-get update && sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The eBPF toolchain: EBPF_CARGO / EBPF_RUSTC / BPF_LINKER override the Debian defaults.
pub fn bpf_toolchain() -> anyhow::Result<BpfToolchain> {
    let linker_override = env::var_os("BPF_LINKER").map(PathBuf::from);
    if let (Some(cargo), Some(rustc)) = (env::var_os("EBPF_CARGO"), env::var_os("EBPF_RUSTC")) {
        return Ok(BpfToolchain { cargo: cargo.into(), rustc: rustc.into(), linker_override });
    }
    apt_install(APT_BPF)?;
    if linker_override.is_none() && !on_path("bpf-linker") {
        if !is_root() {
            bail!("bpf-linker is missing; install it with:\n  {BPF_LINKER_INSTALL}");
        }
        run(Command::new("cargo")
            .args(["install", "bpf-linker@0.13.0", "--locked", "--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(BpfToolchain { cargo: "/usr/bin/cargo".into(), rustc: "/usr/bin/rustc".into(), linker_override })
}

/// Debian packages and a Python virtualenv for the live tests; returns its python.
pub fn test_dependencies() -> anyhow::Result<PathBuf> {
    apt_install(APT_TEST)?;
    let venv = root().join("target/pyenv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".traceo-installed");
    let wanted = PIP_TEST.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&python).args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]).args(PIP_TEST))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// Load generators and servers for `cargo xtask bench` (Node.js: its runtime-option arms).
pub fn bench_dependencies() -> anyhow::Result<()> {
    apt_install(&["nginx-light", "wrk", "curl", "openssl", "nodejs"])
}

/// The fidelity harness's Node.js front (nginx and the Python fronts come with the tests').
pub fn fidelity_dependencies() -> anyhow::Result<()> {
    apt_install(&["nodejs"])
}

/// Prefix with sudo unless already root (only for `cargo xtask run`).
pub fn as_root(cmd: &mut Command) {
    if !is_root() {
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        *cmd = Command::new("sudo");
        cmd.arg(program).args(args);
    }
}
