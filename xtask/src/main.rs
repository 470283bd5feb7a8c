//! `cargo xtask`: everything that is not a plain `cargo build` of the agent.

mod bench;
mod demo;
mod fidelity;
mod fuzz;
mod procs;
mod setup;
mod soak;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "traceo's build, setup and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel programs (installs the BPF toolchain first when root on Debian/Ubuntu).
    BuildEbpf,
    /// Build the kernel programs, then the agent (release).
    Build,
    /// Build everything, then run the agent as root with these arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build everything, start a small bundled service, trace it, and show what the agent sees.
    Demo {
        /// Upload this many CSVs at once instead (good and malformed alternating) and check
        /// that each job is its own trace, none crossed with another's.
        #[arg(long, value_name = "N")]
        concurrent: Option<u32>,
    },
    /// Measure the cost of tracing side by side (as root); writes target/bench/bench.json.
    Bench {
        /// Fewer rounds and shorter runs (a smoke check, about a minute).
        #[arg(long)]
        quick: bool,
        /// Run only this section (repeatable): syscall, ssl, nginx (with capacity and memory at
        /// scale), memory (memory at scale alone), uvicorn, options (--thread-pools,
        /// --node-inject) or logs. All by default.
        #[arg(long = "only", value_name = "SECTION", value_parser = clap::builder::PossibleValuesParser::new(bench::SECTIONS))]
        only: Vec<String>,
        /// Measure this agent binary instead of building and measuring target/release's
        /// (A/B comparisons of two builds under the same conditions).
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
    },
    /// Precision and recall of the agent's parent links at 1, 10 and 50 requests in flight,
    /// against ground truth in the requests (as root); writes target/fidelity/fidelity.json.
    Fidelity {
        /// 10 and 50 in flight with fewer requests (a few minutes).
        #[arg(long)]
        quick: bool,
        /// Report only: do not fail when a precision is under its target.
        #[arg(long)]
        report_only: bool,
        /// Run only this scenario (repeatable; all by default).
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
        /// Measure this agent binary (e.g. another build to compare) instead of building one.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Run the asyncio scenarios with their front on this CPython instead: a path, a
        /// version X.Y (pyenv's or on PATH; skipped when absent) or `all` (3.9 to 3.14).
        /// Repeatable; writes target/fidelity/pythons.json.
        #[arg(long = "python", value_name = "PATH|X.Y|all")]
        pythons: Vec<String>,
    },
    /// The benchmark's syscall loop (run by `bench` as its own process).
    #[command(hide = true)]
    BenchLoop {
        #[arg(long)]
        size: usize,
        #[arg(long)]
        iterations: u64,
        /// Time `write`s of lines to this file instead (`-`: to stderr, fd 2).
        #[arg(long)]
        write: Option<String>,
    },
    /// Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the HTTP pipeline, the record
    /// reader, MCP/JSON and job-key parsing and the kernel event decoder; writes
    /// target/fuzz/fuzz.json and fails on a crash.
    Fuzz {
        /// Only this target (repeatable; all by default).
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Run each target for this many executions instead of a time.
        #[arg(long, value_name = "N")]
        runs: Option<u64>,
    },
    /// The agent for minutes under mixed load, garbage, process churn and a collector that
    /// goes away and comes back (as root): RSS must stay flat and every request be seen or
    /// counted as lost; writes target/soak/soak.json. Not part of CI.
    Soak {
        /// How long the load runs.
        #[arg(long, default_value_t = 3.0)]
        minutes: f64,
        /// The agent's kernel ring buffer size (its default otherwise).
        #[arg(long, value_name = "N")]
        ring_buffer_mib: Option<u32>,
    },
    /// Install what the tests need, build everything, run every test (unit and live, as root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check and clippy -D warnings on the whole workspace and on the fuzz crate.
    Lint,
    /// Install the toolchain and test dependencies only.
    Setup,
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

/// Run a command, failing with its description.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The eBPF build needs a compiler whose rust-src matches it (for build-std) and a
/// bpf-linker on the same LLVM: Debian's rustc-web by default, overridable.
fn build_ebpf() -> anyhow::Result<()> {
    let tools = setup::bpf_toolchain()?;
    let mut cmd = Command::new(&tools.cargo);
    cmd.current_dir(root().join("traceo-ebpf"))
        .args([
            "build",
            "--release",
            "-p",
            "traceo-ebpf",
            "--bins",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            // The workspace's release LTO and single codegen unit are for the agent;
            // bpf-linker links the object as before.
            "--config",
            "profile.release.lto=false",
            "--config",
            "profile.release.codegen-units=16",
        ])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", &tools.rustc)
        .env("PATH", setup::path_with_cargo_bin());
    // An outer rustup cargo leaks these; the inner build would pick the wrong compiler.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTDOC",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    if let Some(linker) = &tools.linker_override {
        cmd.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", linker);
    }
    run(&mut cmd)?;
    eprintln!("xtask: kernel object at {}", object_path().display());
    Ok(())
}

pub fn object_path() -> PathBuf {
    root().join("target/bpfel-unknown-none/release/traceo")
}

fn agent_binary(profile: &str) -> PathBuf {
    root().join("target").join(profile).join("traceo-agent")
}

fn main() -> std::process::ExitCode {
    match task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn task(task: Task) -> anyhow::Result<()> {
    match task {
        Task::BuildEbpf => build_ebpf(),
        Task::Build => {
            build_ebpf()?;
            run(cargo().current_dir(root()).args(["build", "--release", "-p", "traceo-agent"]))
        }
        Task::Run { args } => {
            build_ebpf()?;
            run(cargo().current_dir(root()).args(["build", "--release", "-p", "traceo-agent"]))?;
            let mut cmd = Command::new(agent_binary("release"));
            cmd.args(&args);
            setup::as_root(&mut cmd);
            run(&mut cmd)
        }
        Task::Demo { concurrent } => {
            let python = setup::test_dependencies()?;
            build_ebpf()?;
            run(cargo().current_dir(root()).args(["build", "--release", "-p", "traceo-agent"]))?;
            demo::run(&agent_binary("release"), &python, concurrent)
        }
        Task::Bench { quick, only, agent } => {
            let python = setup::test_dependencies()?;
            setup::bench_dependencies()?;
            build_ebpf()?;
            let agent = match agent {
                Some(path) => path,
                None => {
                    run(cargo().current_dir(root()).args(["build", "--release", "-p", "traceo-agent"]))?;
                    agent_binary("release")
                }
            };
            bench::run(&agent, &python, &bench::Settings { quick, only })
        }
        Task::Fidelity { quick, report_only, scenarios, agent, pythons } => {
            let python = setup::test_dependencies()?;
            setup::fidelity_dependencies()?;
            let agent = match agent {
                Some(path) => path,
                None => {
                    build_ebpf()?;
                    run(cargo().current_dir(root()).args(["build", "--release", "-p", "traceo-agent"]))?;
                    agent_binary("release")
                }
            };
            fidelity::run(&agent, &python, &fidelity::Settings { quick, report_only, scenarios, pythons })
        }
        Task::Fuzz { targets, seconds, runs } => fuzz::run_all(&fuzz::Settings { targets, seconds, runs }),
        Task::Soak { minutes, ring_buffer_mib } => {
            let python = setup::test_dependencies()?;
            soak::dependencies(&python)?;
            build_ebpf()?;
            run(cargo().current_dir(root()).args(["build", "--release", "-p", "traceo-agent"]))?;
            soak::run_soak(&agent_binary("release"), &python, &soak::Settings { minutes, ring_buffer_mib })
        }
        Task::BenchLoop { size, iterations, write: None } => bench::syscall_loop::run(size, iterations),
        Task::BenchLoop { size, iterations, write: Some(path) } => {
            bench::syscall_loop::write_run(&path, size, iterations)
        }
        Task::Setup => {
            setup::bpf_toolchain()?;
            setup::test_dependencies().map(|_| ())
        }
        Task::Test { args } => {
            let python = setup::test_dependencies()?;
            build_ebpf()?;
            run(cargo()
                .current_dir(root())
                .args(["test", "--workspace"])
                .args(&args)
                .env("TRACEO_PYTHON", python)
                .env("RUST_BACKTRACE", "1"))
        }
        Task::Lint => {
            run(cargo().current_dir(root()).args(["fmt", "--all", "--check"]))?;
            run(cargo().current_dir(root()).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
            // The fuzz crate is outside the workspace but built on the agent: lint it too.
            fuzz::lint()
        }
    }
}
