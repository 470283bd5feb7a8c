//! OpenSSL plaintext: uprobes on OpenSSL's `ssl_read_internal` and `ssl_write_internal`
//! (behind `SSL_read`, `SSL_write` and their `_ex` forms, with the `_ex` forms' arguments and
//! return; the agent finds them) or, where they are not found, on the four public functions.
//!
//! The entry probe parks the call's arguments per thread; the single
//! return probe, attached to every probed function, copies what the call moved and emits a
//! `DataEvent` with syscall `SSL_READ`/`SSL_WRITE` and the `SSL *` as its `conn_id`. Which
//! socket that SSL object talks over is the agent's business: it sees the thread's socket
//! I/O in the same ordered stream.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_ktime_get_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use traceo_ebpf_common::{direction, stat, syscall};

use super::data::emit;
use crate::{
    filter::{maybe_traced, traced},
    maps::{SyscallArgs, TLS_ARGS, count},
};

/// Park (ssl, buf, out-size pointer) for the return probe. `SyscallArgs::count` holds the
/// `size_t *` the `_ex` forms write their byte count to (0 for the plain forms).
#[inline(always)]
fn enter(ctx: &ProbeContext, call: u16, ex: bool) -> u32 {
    let Some(cur) = traced() else { return 0 };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let size_out: u64 = if ex { ctx.arg(3).unwrap_or(0) } else { 0 };
    let args = SyscallArgs {
        conn_id: ssl,
        buf,
        count: size_out,
        // SAFETY: helper call without arguments.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: -1,
        service: cur.service,
        syscall: call,
        vectored: 0,
        has_seq: 0,
        tcp_seq: 0,
        task_ctx: crate::runtime::current_context(&cur),
    };
    if TLS_ARGS.insert(&cur.tid, &args, 0).is_err() {
        count(stat::ARGS_MAP_FULL);
    }
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, syscall::SSL_WRITE, false)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, syscall::SSL_WRITE, true)
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, syscall::SSL_READ, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, syscall::SSL_READ, true)
}

/// Return of any of the four: `SSL_read`/`SSL_write` return the byte count (<= 0 on
/// failure); the `_ex` forms return 1 and store the count through their out pointer.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if !maybe_traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: copied out at once.
    let Some(args) = (unsafe { TLS_ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = TLS_ARGS.remove(&tid);
    let ret: i64 = ctx.ret::<i32>() as i64;
    let moved = if args.count == 0 {
        ret
    } else if ret == 1 {
        // SAFETY: probe reads of user memory fail cleanly on a bad pointer.
        match unsafe { bpf_probe_read_user(args.count as *const u64) } {
            Ok(n) => n as i64,
            Err(_) => {
                count(stat::READ_USER_FAILED);
                return 0;
            }
        }
    } else {
        0
    };
    if moved <= 0 {
        return 0;
    }
    let dir = if args.syscall == syscall::SSL_READ { direction::INGRESS } else { direction::EGRESS };
    let args = SyscallArgs { count: 0, ..args };
    let cur = crate::filter::Current { pid: (pid_tgid >> 32) as u32, tid, service: args.service };
    if emit(&cur, &args, moved, dir) {
        count(stat::TLS_EVENTS);
    }
    0
}
