//! The first thing every probe does: is the current process traced?

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use traceo_ebpf_common::{EventHeader, NO_SERVICE};

use traceo_ebpf_common::PID_FLAGS_BLOCK;

use crate::{
    globals::setting,
    maps::{EXIT_MEMO, FLAGS_GENERATION, PID_FLAGS, exit_memo},
};

/// The current thread, when its process is traced.
#[derive(Clone, Copy)]
pub struct Current {
    pub pid: u32,
    pub tid: u32,
    pub service: u32,
}

impl Current {
    #[inline(always)]
    pub fn header(&self, kind: u32) -> EventHeader {
        EventHeader {
            kind,
            pid: self.pid,
            tid: self.tid,
            service: self.service,
            ts_ns: unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() },
        }
    }
}

/// The flag byte of `pid` (see `PID_FLAGS`).
#[inline(always)]
pub fn pid_flag(pid: u32) -> Option<*mut u8> {
    let block = PID_FLAGS.get_ptr_mut(pid / PID_FLAGS_BLOCK as u32)?;
    // SAFETY: the index is masked into the block.
    Some(unsafe { (*block).as_mut_ptr().add((pid as usize) & (PID_FLAGS_BLOCK - 1)) })
}

/// The service of a flagged `pid` (its flag byte - 1).
#[inline(always)]
fn flagged_service(pid: u32) -> Option<u32> {
    // SAFETY: a byte inside the map value.
    let flag = unsafe { *pid_flag(pid)? };
    (flag != 0).then(|| flag as u32 - 1)
}

/// Whether `pid` is traced: trace-all mode, or its flag is set. Cheap enough for the exit
/// probes to call before looking anything up.
#[inline(always)]
pub fn maybe_traced(pid: u32) -> bool {
    setting!(trace_all) != 0 || flagged_service(pid).is_some()
}

/// `Some` when the current process is traced: one inlined array lookup either way.
#[inline(always)]
pub fn traced() -> Option<Current> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if pid == setting!(agent_pid) {
        return None;
    }
    if setting!(trace_all) != 0 {
        return Some(Current { pid, tid, service: NO_SERVICE });
    }
    let service = flagged_service(pid)?;
    Some(Current { pid, tid, service })
}

/// The flags generation (see `FLAGS_GENERATION`).
#[inline(always)]
pub fn generation() -> u64 {
    match FLAGS_GENERATION.get_ptr(0) {
        // SAFETY: a map value; an 8-byte aligned load is atomic.
        Some(g) => unsafe { core::ptr::read_volatile(g) },
        None => 0,
    }
}

/// An `EXIT_MEMO` answer may have gone wrong: none computed before is used again.
#[inline(always)]
pub fn bump_generation() {
    if let Some(g) = FLAGS_GENERATION.get_ptr_mut(0) {
        // SAFETY: a map value, aligned; an atomic add (BPF_XADD, a locked add on x86-64: the
        // flag store before it is visible first).
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(g, 1) };
    }
}

/// `traced()` at syscall exit, where the raw tracepoint hands over `regs`, the address of
/// the task's saved user registers: the top of its kernel stack, so one address per live
/// task. This CPU remembers its last answer with that address and the flags generation;
/// the same task's next syscall here reuses it (two loads and a compare) instead of asking
/// the task (a helper call: ~20 ns a run on this class of CPU, each kernel return going
/// through the SRSO return thunk). Another task, or a newer generation (see
/// `FLAGS_GENERATION`: a new task that got a dead one's stack was forked since), asks the
/// task and remembers. The program runs with preemption off, so the memo is not shared
/// with another task mid-way.
#[inline(always)]
pub fn exit_traced(regs: u64) -> Option<Current> {
    let Some(memo) = EXIT_MEMO.get_ptr_mut(0) else { return traced() };
    let generation = generation();
    // SAFETY: this CPU's map value; aligned 8-byte loads and stores.
    unsafe {
        let answer = core::ptr::read_volatile(&(*memo).answer);
        let state = (answer >> 16) & 0xff;
        if (*memo).regs == regs && state != exit_memo::EMPTY && answer >> 32 == generation & 0xffff_ffff {
            if state != exit_memo::TRACED {
                return None;
            }
            let ids = (*memo).ids;
            let service = match answer & 0xffff {
                0xffff => NO_SERVICE,
                s => s as u32,
            };
            return Some(Current { pid: (ids >> 32) as u32, tid: ids as u32, service });
        }
        // The generation was read before the flags `traced` reads: a flag written since
        // bumped it past what is stored here.
        let cur = traced();
        let (state, service, ids) = match cur {
            Some(c) => (exit_memo::TRACED, c.service.min(0xffff) as u64, ((c.pid as u64) << 32) | c.tid as u64),
            None => (exit_memo::UNTRACED, 0, 0),
        };
        (*memo).regs = regs;
        (*memo).ids = ids;
        (*memo).answer = (generation << 32) | (state << 16) | service;
        cur
    }
}
