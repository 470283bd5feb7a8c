//! Tracepoint, raw tracepoint and uprobe programs, one file per probe family. Each entry is
//! thin and named after the tracepoint it attaches to, so the agent can attach by name.

mod conn;
mod data;
mod floor;
mod nginx;
mod process;
mod syscall_exit;
mod task;
mod tls;

use aya_ebpf::programs::TracePointContext;

/// Argument `n` (0-based) of a `syscalls:sys_enter_*` record: they start at byte 16, 8 each.
#[inline(always)]
fn syscall_arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: the tracepoint record is at least this long for every syscall we attach to.
    unsafe { ctx.read_at::<u64>(16 + 8 * n) }.unwrap_or(u64::MAX)
}
