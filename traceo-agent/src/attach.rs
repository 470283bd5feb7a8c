//! Per-process probe planning on a worker thread, so the thread that drains the ring never
//! waits on a file.
//!
//! When a process becomes traced (exec, fork, listen, a rescan), its probes depend on slow
//! work: reading /proc/PID/maps and /proc/PID/exe, parsing ELF files for symbols (a
//! libcrypto or a big executable takes tens to hundreds of milliseconds), and, for a CPython
//! not seen before, running it on the layout script (a child process, up to 5 s). That work
//! is done here; the ring's thread gets back a plan ([`AttachPlan`]) and applies it: a map
//! write and the uprobe attach syscalls, by file offsets this worker already resolved into
//! the shared cache ([`crate::loader::symbols::SymbolOffsets`]), so they parse nothing.
//!
//! Why the split is there and not "attach on the worker": aya's `Ebpf` owns the programs and
//! maps, and attaching needs `&mut` to the program inside it; sharing it with a worker would
//! mean a lock the ring's thread takes too (for `PID_FLAGS`, `RUNTIME_PROCS`, detaches), so a
//! slow attach could still hold the ring. The attach syscalls themselves are quick; the slow
//! parts are all file reads and a child process, which need nothing of `Ebpf`. So the worker
//! owns only plain data (ELF facts, measured layouts, the offset cache's handle), and the
//! `Ebpf` object stays with the one thread that has always owned it.
//!
//! Requests go through a bounded queue. A request for a process already waiting in it is
//! merged; one that finds the queue full is dropped, counted in
//! `traceo_agent_worker_requests_dropped_total{task="attach"}`, logged once per process, and
//! made again at the process's next exec or rescan. Until a process's plan is applied it is
//! traced without runtime signal or TLS plaintext from its own libraries (the system's libssl
//! is probed at once, on the ring's thread, by cached offsets): its calls get parents only
//! from certain evidence, never a guessed one.
//!
//! The worker is never joined: at Ctrl-C or SIGTERM the agent ends whatever it is doing (a
//! measurement's interpreter, killed after its own 5 s limit, outlives the agent at most that
//! long).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, mpsc},
};

use prometheus_client::metrics::counter::Counter;

use crate::{
    loader::symbols::SymbolOffsets,
    runtime::{self, Plan, python},
    tls::{
        libraries::{ElfTls, FileId},
        probes::{Visibility, classify},
    },
};

/// Processes waiting for the worker at most (each one request, merged while it waits).
pub const QUEUE: usize = 256;

/// What the ring's thread asks for a process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// Classify its TLS libraries (and resolve their OpenSSL offsets).
    pub tls: bool,
    /// Plan its runtime (and resolve the runtime probe's offset).
    pub runtime: bool,
}

impl Wants {
    fn merge(&mut self, other: Wants) {
        self.tls |= other.tls;
        self.runtime |= other.runtime;
    }
}

/// What comes back: for each part asked, the plan (`tls: Some(None)`: the process is gone).
pub struct AttachPlan {
    pub pid: u32,
    /// The program the plan was made for (`/proc/PID/exe`, read first): a plan that comes
    /// back after the process ran another program is stale (the exec asked for a new one).
    pub exe: Option<FileId>,
    pub tls: Option<Option<Visibility>>,
    pub runtime: Option<Plan>,
}

/// The worker's state: plain data only (see the module's comment).
pub struct Planner {
    elf: HashMap<FileId, ElfTls>,
    measured: HashMap<FileId, Result<python::Measured, String>>,
    symbols: SymbolOffsets,
    options: runtime::Options,
}

impl Planner {
    pub fn new(symbols: SymbolOffsets, options: runtime::Options) -> Planner {
        Planner { elf: HashMap::new(), measured: HashMap::new(), symbols, options }
    }

    /// The slow part for one process.
    pub fn plan(&mut self, pid: u32, wants: Wants) -> AttachPlan {
        AttachPlan {
            pid,
            exe: exe_of(pid),
            tls: wants.tls.then(|| classify(pid, &mut self.elf, &self.symbols)),
            runtime: wants
                .runtime
                .then(|| runtime::plan_with_offsets(pid, &mut self.measured, &self.symbols, self.options)),
        }
    }
}

/// The file `pid` runs (a stat of /proc/PID/exe: quick, and no file is read).
pub fn exe_of(pid: u32) -> Option<FileId> {
    FileId::of(std::path::Path::new(&format!("/proc/{pid}/exe")))
}

impl AttachPlan {
    /// Whether `pid` still runs the program this plan was made for.
    pub fn current(&self) -> bool {
        self.exe.is_some() && exe_of(self.pid) == self.exe
    }
}

/// The ring thread's handle on the worker.
pub struct AttachWorker {
    requests: mpsc::SyncSender<u32>,
    /// Requests queued and not yet taken by the worker, by process (merged there).
    queued: Arc<Mutex<HashMap<u32, Wants>>>,
    pub plans: tokio::sync::mpsc::Receiver<AttachPlan>,
    dropped: Counter,
    /// Processes already logged for a dropped request.
    reported: HashSet<u32>,
}

impl AttachWorker {
    /// Start the worker with `planner` (used before, on this thread, for the processes
    /// traced at start).
    pub fn start(mut planner: Planner, dropped: Counter) -> anyhow::Result<AttachWorker> {
        let (requests, asked) = mpsc::sync_channel::<u32>(QUEUE);
        // At most QUEUE requests are queued and one in hand: the plans never exceed that.
        let (tx, plans) = tokio::sync::mpsc::channel(QUEUE + 1);
        let queued: Arc<Mutex<HashMap<u32, Wants>>> = Arc::default();
        let taken = queued.clone();
        std::thread::Builder::new().name("traceo-attach".into()).spawn(move || {
            while let Ok(pid) = asked.recv() {
                let wants = taken.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid).unwrap_or_default();
                if wants == Wants::default() {
                    continue;
                }
                if tx.blocking_send(planner.plan(pid, wants)).is_err() {
                    break;
                }
            }
        })?;
        Ok(AttachWorker { requests, queued, plans, dropped, reported: HashSet::new() })
    }

    /// Ask for `pid`'s plan; merged with a request still queued. Returns false when the
    /// queue is full (dropped, counted, logged once for the process).
    pub fn request(&mut self, pid: u32, wants: Wants) -> bool {
        if wants == Wants::default() {
            return true;
        }
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = queued.get_mut(&pid) {
            w.merge(wants);
            return true;
        }
        queued.insert(pid, wants);
        drop(queued);
        if self.requests.try_send(pid).is_ok() {
            return true;
        }
        self.queued.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
        self.dropped.inc();
        if self.reported.insert(pid) {
            log::warn!(
                "attach worker busy ({QUEUE} processes waiting): pid {pid}'s TLS and runtime probes wait for its \
                 next exec or rescan (traceo_agent_worker_requests_dropped_total{{task=\"attach\"}})"
            );
        }
        false
    }

    /// `pid` exited: a later drop of a process reusing it is logged again.
    pub fn forget(&mut self, pid: u32) {
        self.reported.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_merged_while_queued_and_a_full_queue_drops_and_counts() {
        // A worker that never takes anything: its queue fills.
        let (requests, _asked) = mpsc::sync_channel::<u32>(2);
        let (_tx, plans) = tokio::sync::mpsc::channel(3);
        let dropped = Counter::default();
        let mut w = AttachWorker {
            requests,
            queued: Arc::default(),
            plans,
            dropped: dropped.clone(),
            reported: HashSet::new(),
        };
        let tls = Wants { tls: true, runtime: false };
        let rt = Wants { tls: false, runtime: true };
        assert!(w.request(1, tls));
        assert!(w.request(1, rt), "merged");
        assert_eq!(w.queued.lock().unwrap()[&1], Wants { tls: true, runtime: true });
        assert!(w.request(2, tls));
        assert!(!w.request(3, tls), "the queue holds two");
        assert_eq!(dropped.get(), 1);
        assert!(!w.queued.lock().unwrap().contains_key(&3), "a dropped request is not left as queued");
        assert!(w.request(2, rt), "merging needs no room");
    }

    #[test]
    fn the_worker_plans_this_process() {
        let mut w = AttachWorker::start(Planner::new(SymbolOffsets::default(), Default::default()), Counter::default())
            .unwrap();
        let me = std::process::id();
        assert!(w.request(me, Wants { tls: true, runtime: true }));
        let plan = w.plans.blocking_recv().expect("a plan");
        assert_eq!(plan.pid, me);
        assert!(matches!(plan.tls, Some(Some(_))), "this process is alive");
        assert!(matches!(plan.runtime, Some(Plan::Other)), "a Rust test binary has no runtime");
    }
}
