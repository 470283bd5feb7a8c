//! The first thing every probe does: is the current process traced?

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use traceo_ebpf_common::{EventHeader, NO_SERVICE};

use crate::{globals::setting, maps::TRACED_PIDS};

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

/// `Some` when the current process is traced: one map lookup for everyone else.
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
    // SAFETY: the value is copied out at once.
    let service = unsafe { TRACED_PIDS.get(&pid) }?.service;
    Some(Current { pid, tid, service })
}
