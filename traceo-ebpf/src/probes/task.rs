//! asyncio task lineage: a uprobe and a uretprobe on the C `Task.__init__` of a traced
//! CPython process (tasks are created far less often than sockets are used: one trap per
//! task, none per syscall). The entry parks the task object, the creating thread's context
//! and the time; the return reads the context the task will run in and reports them all.
//!
//! An eager task (3.12+: `eager_start`, `asyncio.eager_task_factory`) runs its first step
//! inside `__init__`, so its own syscalls (and task creations) come between entry and
//! return: the event carries the entry time too, and the entry is parked under the stack
//! pointer the call returns with, so nested calls on one thread are told apart.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use traceo_ebpf_common::{TaskEvent, kind, stat};

use crate::{
    filter::traced,
    maps::{EVENTS, RUNTIME_PROCS, TASK_INIT, count, submit_flags},
    runtime::current_context,
};

#[uprobe]
pub fn py_task_init(ctx: ProbeContext) -> u32 {
    let Some(cur) = traced() else { return 0 };
    let task: u64 = ctx.arg(0).unwrap_or(0);
    let parent = current_context(&cur);
    // SAFETY: the context's registers (a direct load the verifier allows). At the first
    // instruction the stack pointer points at the return address, popped by `ret`.
    let returns_with = unsafe { (*ctx.regs).rsp } + 8;
    // SAFETY: plain helper.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = TASK_INIT.insert(&[cur.tid as u64, returns_with], &[task, parent, now], 0);
    0
}

#[uretprobe]
pub fn py_task_init_return(ctx: RetProbeContext) -> u32 {
    let Some(cur) = traced() else { return 0 };
    // SAFETY: as above: the stack pointer just after `ret`.
    let key = [cur.tid as u64, unsafe { (*ctx.regs).rsp }];
    // SAFETY: copied out at once.
    let Some([task, parent, entry_ns]) = (unsafe { TASK_INIT.get(&key) }).copied() else {
        count(stat::TASK_INIT_UNPAIRED);
        return 0;
    };
    let _ = TASK_INIT.remove(&key);
    // SAFETY: copied out at once.
    let Some(layout) = (unsafe { RUNTIME_PROCS.get(&cur.pid) }).map(|r| r.python) else {
        return 0;
    };
    // SAFETY: probe reads of user memory fail cleanly on a bad pointer.
    let child = unsafe { bpf_probe_read_user((task + layout.task_context as u64) as *const u64) }.unwrap_or(0);
    if child == 0 {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<TaskEvent>(0) else {
        count(stat::RING_FULL_TASK);
        return 0;
    };
    entry.write(TaskEvent {
        header: cur.header(kind::TASK_CREATED),
        parent_ctx: parent,
        child_ctx: child,
        task,
        entry_ns,
    });
    entry.submit(submit_flags());
    0
}

/// `contextvars.copy_context()` returned (a uretprobe on the `_contextvars` module's
/// function, attached with `--thread-pools`): `asyncio.to_thread` and anyio's
/// `to_thread.run_sync` (Starlette's `run_in_threadpool`, FastAPI's sync handlers) copy the
/// calling task's context and run the work in the copy on a pool thread. The copy does not
/// switch contexts, so the thread's current context at the return is the one copied.
#[uretprobe]
pub fn py_context_copy_return(ctx: RetProbeContext) -> u32 {
    let Some(cur) = traced() else { return 0 };
    let copy: u64 = ctx.ret();
    if copy == 0 {
        return 0;
    }
    let parent = current_context(&cur);
    let Some(mut entry) = EVENTS.reserve::<TaskEvent>(0) else {
        count(stat::RING_FULL_TASK);
        return 0;
    };
    let header = cur.header(kind::TASK_CREATED);
    let entry_ns = header.ts_ns;
    entry.write(TaskEvent { header, parent_ctx: parent, child_ctx: copy, task: 0, entry_ns });
    entry.submit(submit_flags());
    0
}
