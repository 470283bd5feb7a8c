//! Keeps the kernel's traced-process map in step with the `--service` selectors: an initial
//! /proc scan (matches and their descendants), execs of new matching programs, new
//! listeners on selected ports, and thread ids the fork probe added by mistake.

use std::collections::{HashMap, HashSet};

use crate::{
    events::Event,
    loader::KernelPids,
    procfs,
    selector::{ProcessFacts, Selector, ServiceSpec},
};

/// Where traced pids go: the kernel map, or a plain set in tests.
pub trait PidMap {
    fn insert(&mut self, pid: u32, service: u32);
    fn remove(&mut self, pid: u32);
}

impl PidMap for KernelPids {
    fn insert(&mut self, pid: u32, service: u32) {
        if let Err(e) = KernelPids::insert(self, pid, service) {
            log::warn!("cannot trace pid {pid}: {e:#}");
        }
    }
    fn remove(&mut self, pid: u32) {
        KernelPids::remove(self, pid);
    }
}

/// Without a kernel: which processes would be traced (`check`).
impl PidMap for HashMap<u32, u32> {
    fn insert(&mut self, pid: u32, service: u32) {
        HashMap::insert(self, pid, service);
    }
    fn remove(&mut self, pid: u32) {
        HashMap::remove(self, &pid);
    }
}

/// What a /proc scan reads, taken anywhere (a worker thread: [`PortRescanner`]) and applied
/// by the tracker on its own thread.
#[derive(Default)]
pub struct ProcSnapshot {
    listening: HashMap<u64, u16>,
    procs: Vec<ProcInfo>,
}

struct ProcInfo {
    pid: u32,
    comm: String,
    exe: Option<String>,
    ports: Vec<u16>,
    parent: Option<u32>,
    start: Option<u64>,
}

impl ProcSnapshot {
    /// Read every process's facts (and listening ports when `ports`).
    pub fn take(ports: bool) -> ProcSnapshot {
        let listening = procfs::listening_sockets();
        let procs = procfs::pids()
            .into_iter()
            .map(|pid| ProcInfo {
                pid,
                comm: procfs::comm(pid).unwrap_or_default(),
                exe: procfs::exe(pid),
                ports: if ports { procfs::listening_ports(pid, &listening) } else { vec![] },
                parent: procfs::parent(pid),
                start: procfs::start_time(pid),
            })
            .collect();
        ProcSnapshot { listening, procs }
    }
}

/// The slow `port:` rescan (every process's fds) on a thread of its own, so the thread that
/// drains the ring never waits on /proc. Asked through a one-slot queue: a request while a
/// scan runs is dropped and counted; a changed set of listening sockets comes back as a
/// snapshot for [`ProcessTracker::apply`].
pub struct PortRescanner {
    requests: std::sync::mpsc::SyncSender<()>,
    pub snapshots: tokio::sync::mpsc::Receiver<ProcSnapshot>,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl PortRescanner {
    pub fn start(
        mut last: HashSet<u64>,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> anyhow::Result<PortRescanner> {
        let (requests, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let (tx, snapshots) = tokio::sync::mpsc::channel(1);
        std::thread::Builder::new().name("traceo-procscan".into()).spawn(move || {
            while asked.recv().is_ok() {
                let now: HashSet<u64> = procfs::listening_sockets().keys().copied().collect();
                if now == last {
                    continue;
                }
                let snapshot = ProcSnapshot::take(true);
                last = snapshot.listening.keys().copied().collect();
                if tx.blocking_send(snapshot).is_err() {
                    break;
                }
            }
        })?;
        Ok(PortRescanner { requests, snapshots, dropped })
    }

    /// Ask for a rescan; dropped (counted) while one is still running.
    pub fn request(&self) {
        if self.requests.try_send(()).is_err() {
            self.dropped.inc();
        }
    }
}

pub struct ProcessTracker<M: PidMap> {
    services: Vec<ServiceSpec>,
    map: M,
    /// pid -> service index, as last written to the map.
    traced: HashMap<u32, u32>,
    agent_pid: u32,
    /// Listening socket inodes seen at the last port scan.
    listeners: HashSet<u64>,
    /// `pid:N` selectors, by service index: the start time of the process they first matched.
    /// A later process reusing N (another start time) is not that service.
    pinned: HashMap<usize, u64>,
}

/// Whether a `pid:N` selector (service `index`) still names the process N that started at
/// `start`: the first one it matched pins it.
fn pid_selector_holds(pinned: &mut HashMap<usize, u64>, index: usize, start: Option<u64>) -> bool {
    let Some(start) = start else { return false };
    *pinned.entry(index).or_insert(start) == start
}

impl<M: PidMap> ProcessTracker<M> {
    pub fn new(services: Vec<ServiceSpec>, map: M) -> Self {
        ProcessTracker {
            services,
            map,
            traced: HashMap::new(),
            agent_pid: std::process::id(),
            listeners: HashSet::new(),
            pinned: HashMap::new(),
        }
    }

    pub fn traced(&self) -> &HashMap<u32, u32> {
        &self.traced
    }

    fn trace(&mut self, pid: u32, service: u32) {
        if pid == self.agent_pid || self.traced.get(&pid) == Some(&service) {
            return;
        }
        log::info!("tracing pid {pid} as service {}", self.services[service as usize].name);
        self.map.insert(pid, service);
        self.traced.insert(pid, service);
    }

    /// Untrace the traced processes that no longer exist (their exit event was lost, or a
    /// rescan taken before they exited brought them back).
    pub fn prune_dead(&mut self) {
        let dead: Vec<u32> = self.traced.keys().copied().filter(|&p| !crate::procfs::exists(p)).collect();
        for pid in dead {
            log::debug!("pid {pid} is gone: untraced");
            self.untrace(pid);
        }
    }

    fn untrace(&mut self, pid: u32) {
        if self.traced.remove(&pid).is_some() {
            self.map.remove(pid);
        }
    }

    /// Whether a `port:` selector is given (scans then read listening sockets).
    pub fn needs_ports(&self) -> bool {
        self.services.iter().any(|s| matches!(s.selector, Selector::Port(_)))
    }

    /// Listening socket inodes seen at the last scan.
    pub fn listeners(&self) -> HashSet<u64> {
        self.listeners.clone()
    }

    /// First service whose selector matches the process (port facts only when needed).
    fn match_process(&mut self, pid: u32, comm: &str, listening: &HashMap<u64, u16>) -> Option<u32> {
        let exe = procfs::exe(pid);
        let ports = if self.needs_ports() { procfs::listening_ports(pid, listening) } else { vec![] };
        let facts = ProcessFacts { pid, comm, exe: exe.as_deref(), listening_ports: &ports };
        self.match_facts(&facts, &|| procfs::start_time(pid))
    }

    /// First service whose selector matches these facts; `start` gives the process's start
    /// time (read only for `pid:` selectors).
    fn match_facts(&mut self, facts: &ProcessFacts<'_>, start: &dyn Fn() -> Option<u64>) -> Option<u32> {
        let Self { services, pinned, .. } = self;
        services
            .iter()
            .enumerate()
            .find(|(i, s)| {
                s.selector.matches(facts)
                    && (!matches!(s.selector, Selector::Pid(_)) || pid_selector_holds(pinned, *i, start()))
            })
            .map(|(i, _)| i as u32)
    }

    /// Trace every running process that matches, and the descendants of each.
    pub fn scan(&mut self) {
        let snapshot = ProcSnapshot::take(self.needs_ports());
        self.apply(snapshot);
    }

    /// Trace what a /proc snapshot shows matching (and the descendants of each).
    pub fn apply(&mut self, snapshot: ProcSnapshot) {
        self.listeners = snapshot.listening.keys().copied().collect();
        let mut matched: HashMap<u32, u32> = HashMap::new();
        for p in &snapshot.procs {
            if p.pid == self.agent_pid {
                continue;
            }
            let facts = ProcessFacts { pid: p.pid, comm: &p.comm, exe: p.exe.as_deref(), listening_ports: &p.ports };
            if let Some(service) = self.match_facts(&facts, &|| p.start) {
                matched.insert(p.pid, service);
            }
        }
        let parents: HashMap<u32, u32> = snapshot.procs.iter().filter_map(|p| Some((p.pid, p.parent?))).collect();
        let pids: Vec<u32> = snapshot.procs.iter().map(|p| p.pid).collect();
        for &pid in &pids {
            let mut cur = pid;
            for _ in 0..64 {
                if let Some(&service) = matched.get(&cur) {
                    // The snapshot was taken a moment ago: a process that exited since (its
                    // exit event already seen) must not come back.
                    if self.traced.contains_key(&pid) || crate::procfs::exists(pid) {
                        self.trace(pid, service);
                    }
                    break;
                }
                match parents.get(&cur) {
                    Some(&parent) if parent > 1 => cur = parent,
                    _ => break,
                }
            }
        }
    }

    /// Rescan (here, on this thread) for `port:` selectors when the set of listening sockets
    /// changed; the live loop uses [`PortRescanner`] instead (listen events
    /// catch new servers at once; this catches sockets handed from process to process).
    pub fn rescan_ports(&mut self) {
        if !self.services.iter().any(|s| matches!(s.selector, Selector::Port(_))) {
            return;
        }
        let now: HashSet<u64> = procfs::listening_sockets().keys().copied().collect();
        if now != self.listeners {
            self.scan();
        }
    }

    /// Update the traced set from a process event. Returns whether the event is about a
    /// traced process, and so worth passing on (execs arrive for every process, forks for
    /// threads too).
    pub fn on_event(&mut self, event: &Event) -> bool {
        match event {
            Event::Exec(p) => {
                if !self.traced.contains_key(&p.meta.pid) {
                    let no_listeners = HashMap::new();
                    if let Some(service) = self.match_process(p.meta.pid, &p.comm, &no_listeners) {
                        self.trace(p.meta.pid, service);
                    }
                }
                self.traced.contains_key(&p.meta.pid)
            }
            Event::Fork(p) => {
                // The fork tracepoint also fires for new threads; only processes stay.
                let id = p.meta.pid;
                match procfs::tgid(id) {
                    Some(tgid) if tgid != id => {
                        self.map.remove(id);
                        false
                    }
                    _ => {
                        if let Some(service) = p.meta.service {
                            // The probe already traces the child; writing it again heals a
                            // flag lost to a concurrent block update (see KernelPids).
                            self.map.insert(id, service);
                            self.traced.insert(id, service);
                        }
                        true
                    }
                }
            }
            Event::Exit(p) => {
                self.untrace(p.meta.pid);
                true
            }
            // A server started listening: a `port:` selector takes it now, not at the next
            // scan (its first connections would go untraced).
            Event::Listen(c) => {
                let pid = c.meta.pid;
                let port = c.local.map(|a| a.port());
                if !self.traced.contains_key(&pid) {
                    let service =
                        self.services.iter().position(|s| port.is_some_and(|p| s.selector == Selector::Port(p)));
                    if let Some(service) = service {
                        self.trace(pid, service as u32);
                    }
                }
                self.traced.contains_key(&pid)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Meta, Proc};

    #[derive(Default)]
    struct Set(HashMap<u32, u32>);
    impl PidMap for Set {
        fn insert(&mut self, pid: u32, service: u32) {
            self.0.insert(pid, service);
        }
        fn remove(&mut self, pid: u32) {
            self.0.remove(&pid);
        }
    }

    fn spec(s: &str) -> ServiceSpec {
        s.parse().unwrap()
    }

    #[test]
    fn scan_finds_a_child_process_by_pid_and_skips_the_agent() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let me = std::process::id();
        let mut t = ProcessTracker::new(
            vec![spec(&format!("self=pid:{me}")), spec(&format!("kid=pid:{}", child.id()))],
            Set::default(),
        );
        t.scan();
        child.kill().ok();
        child.wait().ok();
        // The agent never traces itself; its child matched service 1.
        assert!(!t.map.0.contains_key(&me));
        assert_eq!(t.map.0.get(&child.id()), Some(&1));
    }

    #[test]
    fn a_pid_selector_keeps_to_the_process_it_first_matched() {
        let mut pinned = HashMap::new();
        assert!(pid_selector_holds(&mut pinned, 0, Some(100)), "the first match pins it");
        assert!(pid_selector_holds(&mut pinned, 0, Some(100)), "the same process (an exec keeps it)");
        assert!(!pid_selector_holds(&mut pinned, 0, Some(250)), "another process reusing the pid");
        assert!(!pid_selector_holds(&mut pinned, 1, None), "a process that is gone");
        // Live: this test's own start time is stable.
        let me = std::process::id();
        assert!(procfs::start_time(me).is_some_and(|t| t > 0));
        assert_eq!(procfs::start_time(me), procfs::start_time(me));
    }

    #[test]
    fn exec_of_a_matching_program_is_traced_and_exit_untraced() {
        let mut t = ProcessTracker::new(vec![spec("web=comm:uvicorn")], Set::default());
        let meta = Meta { pid: 4242, tid: 4242, service: None, ts_ns: 0 };
        t.on_event(&Event::Exec(Proc { meta: meta.clone(), parent_pid: None, comm: "bash".into() }));
        assert!(t.map.0.is_empty());
        t.on_event(&Event::Exec(Proc { meta: meta.clone(), parent_pid: None, comm: "uvicorn".into() }));
        assert_eq!(t.map.0.get(&4242), Some(&0));
        t.on_event(&Event::Exit(Proc { meta, parent_pid: None, comm: "uvicorn".into() }));
        assert!(t.map.0.is_empty());
    }
}
