//! What `cargo xtask bench` measures the real programs against (`traceo-agent bench-floor`):
//! - the floor: an empty program on every hook the agent uses, the cost any tracepoint-based
//!   design pays before doing anything;
//! - the bound: the least a design that captures bytes at the syscall must do for each traced
//!   socket call (which process, which socket, copy the bytes, hand them to userspace), and
//!   nothing else: no connection announce, entry time, runtime context, loss flags or counters.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use traceo_ebpf_common::{DATA_EVENT_HEADER_LEN, MAX_CAPTURE, kind};

use super::{
    data::read_user_into,
    syscall_exit::{REGS_AT, Regs, nr},
};
use crate::{
    filter::exit_traced,
    globals::setting,
    maps::{DATA_SCRATCH, EVENTS},
    socket::socket_of_fd,
};

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    0
}

/// The empty program on the `sys_exit` raw tracepoint.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_sys_exit(_ctx: RawTracePointContext) -> u32 {
    0
}

/// The bound: for a traced process's successful read, write, sendto or recvfrom on a socket,
/// copy up to `capture_bytes` into one ring buffer record. Only the process (as `sys_exit`
/// asks), the syscall number and `ret` are tested before the socket walk.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn bound_sys_exit(ctx: RawTracePointContext) -> u32 {
    let regs: u64 = ctx.arg(0);
    let Some(cur) = exit_traced(regs) else { return 0 };
    let ret: i64 = ctx.arg(1);
    // SAFETY: probe reads of kernel memory fail cleanly on a bad pointer.
    let Ok(r) = (unsafe { bpf_probe_read_kernel((regs + REGS_AT) as *const Regs) }) else { return 0 };
    if ret <= 0 || !matches!(r.orig_ax, nr::READ | nr::WRITE | nr::SENDTO | nr::RECVFROM) {
        return 0;
    }
    let Ok(sock) = socket_of_fd(r.di as i32 as i64) else { return 0 };
    // SAFETY: helper call without arguments.
    let cpu = unsafe { generated::bpf_get_smp_processor_id() };
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(cpu) else { return 0 };
    // SAFETY: the slot belongs to this CPU for the duration of the program.
    let ev = unsafe { &mut (*scratch).event };
    let mut len = setting!(capture_bytes).min(MAX_CAPTURE as u32);
    if (ret as u64) < len as u64 {
        len = ret as u32;
    }
    if !read_user_into(ev.data.as_mut_ptr(), 0, len, r.si) {
        return 0;
    }
    ev.header = cur.header(kind::DATA);
    ev.conn_id = sock.ino;
    ev.ret = ret;
    ev.captured = len;
    let size = DATA_EVENT_HEADER_LEN as u32 + (len & (2 * MAX_CAPTURE as u32 - 1));
    // SAFETY: `size` is within the scratch value (header + payload + slack).
    unsafe {
        generated::bpf_ringbuf_output(
            core::ptr::addr_of!(EVENTS).cast_mut().cast(),
            (ev as *mut traceo_ebpf_common::DataEvent).cast(),
            size as u64,
            aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64,
        )
    };
    0
}
