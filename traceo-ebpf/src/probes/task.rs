//! asyncio task lineage: a uprobe and a uretprobe on the C `Task.__init__` of a traced
//! CPython process (tasks are created far less often than sockets are used: one trap per
//! task, none per syscall). The entry parks the task object and the creating thread's
//! context; the return reads the context the task will run in and reports both.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
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
    let _ = TASK_INIT.insert(&cur.tid, &[task, parent], 0);
    0
}

#[uretprobe]
pub fn py_task_init_return(_ctx: RetProbeContext) -> u32 {
    let Some(cur) = traced() else { return 0 };
    // SAFETY: copied out at once.
    let Some([task, parent]) = (unsafe { TASK_INIT.get(&cur.tid) }).copied() else {
        return 0;
    };
    let _ = TASK_INIT.remove(&cur.tid);
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
    entry.write(TaskEvent { header: cur.header(kind::TASK_CREATED), parent_ctx: parent, child_ctx: child, task });
    entry.submit(submit_flags());
    0
}
