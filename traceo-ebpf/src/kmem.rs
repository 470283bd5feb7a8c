//! Kernel memory the programs read through pointers whose type the verifier knows from BTF.

use aya_ebpf::helpers::bpf_get_current_task_btf;

/// The current task, as a pointer typed `struct task_struct *` for [`load`].
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: a helper call without arguments.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// A field of a kernel object whose type the verifier knows from BTF (the current task from
/// `bpf_get_current_task_btf`, and the struct pointers loaded from it): a direct load, which
/// the JIT turns into an address check and a load with a fault handler (a fault reads zeros),
/// where `bpf_probe_read_kernel` is a helper call (~30 ns on this class of VM). The verifier
/// checks the offset against the type, and rejects a load that straddles two members. So
/// `offset` must be a value the verifier knows: the `OFFSETS` global is frozen read-only data,
/// whose fields it reads as constants (moved to writable data, every such load is refused).
/// A pointer loaded this way may be null: test it before loading through it.
///
/// # Safety
/// `typed` must come from `bpf_get_current_task_btf` or from such a load, and `offset` be a
/// member's of its type, of `T`'s size.
#[inline(always)]
pub unsafe fn load<T>(typed: u64, offset: u64) -> T {
    // SAFETY: the caller's; the verifier enforces it at load.
    unsafe { core::ptr::read_volatile((typed + offset) as *const T) }
}
