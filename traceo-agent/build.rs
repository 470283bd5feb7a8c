//! Embeds the kernel object built by `cargo xtask build-ebpf`. When it has not been built,
//! an empty placeholder keeps `cargo build` / `cargo test` working; the agent then refuses to
//! start with an error that names `cargo xtask build-ebpf`.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("TRACEO_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/bpfel-unknown-none/release/traceo"));
    println!("cargo:rerun-if-env-changed=TRACEO_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let embedded = if object.is_file() {
        object.canonicalize().expect("object path resolves")
    } else {
        let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("traceo-ebpf.missing");
        fs::write(&out, b"").expect("write placeholder");
        out
    };
    println!("cargo:rustc-env=TRACEO_EBPF_OBJECT={}", embedded.display());
}
