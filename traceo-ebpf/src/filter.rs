//! The first thing every probe does: is the current process traced?

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use traceo_ebpf_common::{EventHeader, NO_SERVICE};

use traceo_ebpf_common::PID_FLAGS_BLOCK;

use crate::{globals::setting, maps::PID_FLAGS};

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
