//! The runtime context of the current thread, read at a probe that already runs (no uprobe
//! per syscall: a uprobe trap costs ~16 us here): from the interpreter's own state for
//! CPython, from what a rare runtime probe left for the thread for nginx.
//!
//! CPython keeps each thread's `PyThreadState` in a pthread-specific slot (the GIL-state
//! key), which stays set while the GIL is released around a blocking syscall; the state's
//! `context` is the `contextvars.Context` being run, and every asyncio task runs its steps
//! in a context of its own. So the context's address names the task at the syscall.

use aya_ebpf::helpers::bpf_probe_read_user;
use traceo_ebpf_common::{BASE_CTX, runtime_kind, stat};

use crate::{
    filter::Current,
    globals::offset,
    kmem::{current_task, load},
    maps::{RUNTIME_PROCS, THREAD_CTX, count},
};

/// The current thread's runtime context, or 0 (no runtime read for this process, a thread
/// without one, or a read that did not validate).
#[inline(always)]
pub fn current_context(cur: &Current) -> u64 {
    // SAFETY: copied out at once.
    let Some(rt) = (unsafe { RUNTIME_PROCS.get(&cur.pid) }).copied() else {
        return 0;
    };
    if rt.kind == runtime_kind::NGINX {
        // SAFETY: copied out at once.
        return unsafe { THREAD_CTX.get(&cur.tid) }.copied().unwrap_or(0);
    }
    let layout = rt.python;
    let Some(fs) = thread_pointer() else {
        count(stat::RUNTIME_READ_FAILED);
        return 0;
    };
    let ctx = context_at(fs, layout.tstate_slot as u64, layout.thread_id as u64, layout.context as u64);
    if layout.context_entered == 0 || ctx == 0 {
        return ctx;
    }
    // SAFETY: as above.
    match unsafe { bpf_probe_read_user((ctx + layout.context_entered as u64) as *const u32) } {
        Ok(0) => ctx | BASE_CTX,
        Ok(_) => ctx,
        Err(_) => {
            count(stat::RUNTIME_READ_FAILED);
            0
        }
    }
}

/// `task_struct.thread.fsbase` of the current task.
#[inline(always)]
pub fn thread_pointer() -> Option<u64> {
    // SAFETY: a member of the typed task (`thread` is embedded in it).
    let fs: u64 = unsafe { load(current_task(), offset!(task_fsbase)) };
    (fs != 0).then_some(fs)
}

#[inline(always)]
fn context_at(fs: u64, slot: u64, thread_id: u64, context: u64) -> u64 {
    // SAFETY: probe reads of user memory fail cleanly on a bad pointer.
    let Ok(tstate) = (unsafe { bpf_probe_read_user((fs + slot) as *const u64) }) else {
        count(stat::RUNTIME_READ_FAILED);
        return 0;
    };
    if tstate == 0 {
        // A thread that never ran Python code.
        return 0;
    }
    // The state must name this thread: a wrong layout or a stale slot reads as no context.
    match unsafe { bpf_probe_read_user((tstate + thread_id) as *const u64) } {
        Ok(owner) if owner == fs => {}
        _ => {
            count(stat::RUNTIME_READ_FAILED);
            return 0;
        }
    }
    unsafe { bpf_probe_read_user((tstate + context) as *const u64) }.unwrap_or(0)
}
