//! traceo's kernel programs. Built for `bpfel-unknown-none` by `cargo xtask build-ebpf`; on
//! the host this crate compiles to an empty binary so workspace-wide `cargo test` and
//! `cargo clippy` keep working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// For `atomic_xadd`: the BPF target has no atomic read-modify-write types (the build sets
// RUSTC_BOOTSTRAP, as `-Z build-std` needs).
#![cfg_attr(target_arch = "bpf", allow(internal_features), feature(core_intrinsics))]

#[cfg(target_arch = "bpf")]
mod filter;
#[cfg(target_arch = "bpf")]
mod globals;
#[cfg(target_arch = "bpf")]
mod kmem;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod runtime;
#[cfg(target_arch = "bpf")]
mod socket;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this only satisfies the linker.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
