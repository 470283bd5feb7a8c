//! Read-only globals the agent sets at load time (`EbpfLoader::override_global`, frozen).

use traceo_ebpf_common::{KernelOffsets, ProbeSettings};

#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

#[unsafe(no_mangle)]
pub static SETTINGS: ProbeSettings = unsafe { core::mem::zeroed() };

/// A field of `OFFSETS`. Volatile: with a plain read LLVM folds the zero initialiser into
/// the code and the programs would read the wrong addresses.
macro_rules! offset {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&$crate::globals::OFFSETS.$field) };
        value
    }};
}

/// A field of `SETTINGS` (volatile for the same reason as `offset!`).
macro_rules! setting {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&$crate::globals::SETTINGS.$field) };
        value
    }};
}

pub(crate) use {offset, setting};
