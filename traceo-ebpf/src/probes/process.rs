//! Process lifecycle: follow children of traced processes, report execs (the agent matches
//! `comm:` and `exe:` selectors against new programs) and exits.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use traceo_ebpf_common::{ProcEvent, kind, stat};

use crate::{
    filter::{Current, bump_generation, pid_flag, traced},
    globals::setting,
    maps::{EVENTS, count, submit_flags},
};

#[inline(always)]
fn emit(header_of: &Current, event_kind: u32, parent_pid: u32) {
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        count(stat::RING_FULL_PROC);
        return;
    };
    entry.write(ProcEvent {
        header: header_of.header(event_kind),
        parent_pid,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    // The agent must see an exec at once: a new process matching a selector is traced only
    // once the agent flags it, and it may open connections within milliseconds.
    let flags =
        if event_kind == kind::PROC_EXEC { aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64 } else { submit_flags() };
    entry.submit(flags);
}

/// A traced process forked: trace the child under the same service. Thread creation fires
/// here too; the agent removes thread ids it is told about.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    // The child may have a dead task's kernel stack: no exit program may take it for that
    // task by its saved registers' address (`filter::exit_traced`).
    bump_generation();
    if setting!(trace_all) != 0 {
        return 0;
    }
    let Some(parent) = traced() else { return 0 };
    // SAFETY: the offset comes from this kernel's format file for this tracepoint.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(setting!(fork_child_pid_offset) as usize) }) else {
        return 0;
    };
    let child = child as u32;
    let Some(flag) = pid_flag(child) else { return 0 };
    // SAFETY: a byte inside the map value; services are at most MAX_SERVICES.
    unsafe { *flag = (parent.service + 1) as u8 };
    debug!(&ctx, "following child {} of traced {}", child, parent.pid);
    let child_cur = Current { pid: child, tid: child, service: parent.service };
    emit(&child_cur, kind::PROC_FORK, parent.pid);
    0
}

/// Every exec is reported (execs are rare) unless everything is traced anyway.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    // A thread that execs takes its process's pid as its thread id: answers remembered with
    // the old one must not be used.
    bump_generation();
    if setting!(trace_all) != 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if pid == setting!(agent_pid) {
        return 0;
    }
    let service = traced().map_or(traceo_ebpf_common::NO_SERVICE, |t| t.service);
    emit(&Current { pid, tid: pid_tgid as u32, service }, kind::PROC_EXEC, 0);
    0
}

/// A thread exited: forget its id (thread ids inherited from fork), report process exits.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let Some(cur) = traced() else { return 0 };
    if setting!(trace_all) != 0 {
        return 0;
    }
    if let Some(flag) = pid_flag(cur.tid) {
        // SAFETY: a byte inside the map value. Thread ids get flags from the fork probe too.
        unsafe { *flag = 0 };
    }
    if cur.tid == cur.pid {
        // The process's flag: its other threads are untraced now, whatever the CPUs remember.
        bump_generation();
        emit(&cur, kind::PROC_EXIT, 0);
    }
    0
}
