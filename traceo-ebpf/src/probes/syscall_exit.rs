//! Every socket syscall, from one raw tracepoint at syscall exit (x86-64).
//!
//! The kernel's `sys_exit` raw tracepoint hands the program the task's saved user registers
//! and the return value. The arguments are still in those registers at exit (the kernel
//! does not write them back), so no enter program parks them: only the egress syscalls'
//! entries note the time (`data::egress_entry`). The program runs at every syscall of every
//! process: whether the process is traced is its first test (the answer this CPU remembers
//! for the task, else the per-process flag: `filter::exit_traced`), the syscall number its
//! second. A failed call (an event loop's EAGAIN reads) stops there, before any
//! walk.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, helpers::bpf_probe_read_user, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use traceo_ebpf_common::{stat, syscall};

use super::{conn, data, data::Call};
use crate::{
    filter::{Current, exit_traced},
    maps::count,
};

/// x86-64 `struct pt_regs` from `r10` (byte 56) to `orig_ax` (byte 120): one read.
#[repr(C)]
pub(super) struct Regs {
    r10: u64,
    _r9: u64,
    _r8: u64,
    _ax: u64,
    _cx: u64,
    pub(super) dx: u64,
    pub(super) si: u64,
    pub(super) di: u64,
    /// The syscall number.
    pub(super) orig_ax: u64,
}

pub(super) const REGS_AT: u64 = 56;

/// x86-64 syscall numbers (`arch/x86/entry/syscalls/syscall_64.tbl`).
pub(super) mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const CONNECT: u64 = 42;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    // The filter stays in the program itself: every syscall of every process passes here, and
    // a call to a BPF function costs an untraced syscall ~7 ns more (a return goes through the
    // kernel's return thunk where the CPU needs the SRSO mitigation).
    match exit_traced(ctx.arg(0)) {
        Some(cur) => on_traced_exit(&cur, &ctx),
        None => 0,
    }
}

/// A traced process's syscall: which one, and what it did.
#[inline(never)]
fn on_traced_exit(cur: &Current, ctx: &RawTracePointContext) -> u32 {
    let regs: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    // SAFETY: probe reads of kernel memory fail cleanly on a bad pointer.
    let Ok(r) = (unsafe { bpf_probe_read_kernel((regs + REGS_AT) as *const Regs) }) else {
        count(stat::SOCKET_WALK_FAILED);
        return 0;
    };
    let plain = |syscall| Call { fd: r.di as i32 as i64, buf: r.si, count: r.dx, syscall, vectored: 0 };
    let vectored = |syscall| Call { vectored: 1, ..plain(syscall) };
    match r.orig_ax {
        nr::READ => data::on_exit(cur, &plain(syscall::READ), ret),
        nr::WRITE => data::on_exit(cur, &plain(syscall::WRITE), ret),
        nr::SENDTO => data::on_exit(cur, &plain(syscall::SENDTO), ret),
        nr::RECVFROM => data::on_exit(cur, &plain(syscall::RECVFROM), ret),
        nr::READV => data::on_exit(cur, &vectored(syscall::READV), ret),
        nr::WRITEV => data::on_exit(cur, &vectored(syscall::WRITEV), ret),
        nr::SENDMSG | nr::RECVMSG => {
            let syscall = if r.orig_ax == nr::SENDMSG { syscall::SENDMSG } else { syscall::RECVMSG };
            if data::moved_nothing(syscall, ret) {
                return 0;
            }
            // The iovec array and its length sit in the user's `struct user_msghdr` (msg_iov
            // at byte 16, msg_iovlen at byte 24); the kernel only writes back other fields.
            // SAFETY: probe reads of user memory fail cleanly on a bad pointer.
            let iov = unsafe { bpf_probe_read_user((r.si + 16) as *const [u64; 2]) };
            match iov {
                Ok([iov, iovlen]) => data::on_exit(cur, &Call { buf: iov, count: iovlen, ..vectored(syscall) }, ret),
                Err(_) => count(stat::READ_USER_FAILED),
            }
        }
        // sendfile64(out_fd, in_fd, offset, count): only the length is ever known.
        nr::SENDFILE => data::on_exit(cur, &Call { buf: 0, count: r.r10, ..plain(syscall::SENDFILE) }, ret),
        nr::ACCEPT | nr::ACCEPT4 => conn::on_accept(cur, ret),
        nr::CONNECT => conn::on_connect(cur, r.di as i32 as i64, ret),
        _ => {}
    }
    0
}
