//! The markers of the script `--node-inject` puts in Node.js processes (`node_agent.js`):
//! before an outbound HTTP request's bytes are written while the inbound request it serves is
//! certain, the script writes 16 bytes to the agent's marker sink over loopback TCP: `TRCN`,
//! the inbound socket's fd, the outbound socket's fd and the length about to be written. The
//! data probes see that write, then (same thread, a few microseconds later) the outbound
//! write itself. This stage, ahead of the tracker, gives that one write the inbound
//! connection as its runtime context (`CONN_CTX`, as nginx's upstream probe does), so the
//! call's parent is the request in flight on that connection.
//!
//! A marker names a write only if that write is the next one on its fd, on the marker's
//! thread, within [`WINDOW_NS`], moves no more than the marked length, and no event of the
//! process was lost in between; anything else is counted and the write keeps no context (its
//! call gets no parent rather than a stale one). The sink connection never reaches the
//! tracker.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use crate::events::{Data, Direction, Event, OpenHow};

pub const MAGIC: &[u8; 4] = b"TRCN";
const MARKER_LEN: usize = 16;
/// The marker and its write are made in one JavaScript call: far less than this apart.
const WINDOW_NS: u64 = 50_000_000;
/// Bounds: the fds of processes with a sink, and markers waiting for their write.
const MAX_FDS: usize = 65_536;
const MAX_PENDING: usize = 4_096;

/// Scripts connected to the sink at most (one per injected process); later ones are closed.
const MAX_SCRIPTS: usize = 256;

/// Listen on 127.0.0.1 (a port the kernel picks) for the injected scripts and throw away what
/// they send: the markers are read from the probes' copy of each write (which orders them
/// with the outbound writes), the sink only keeps the scripts' writes from blocking.
pub fn start_sink() -> anyhow::Result<u16> {
    use std::io::Read as _;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| anyhow::anyhow!("--node-inject: cannot listen on 127.0.0.1 for markers: {e}"))?;
    let port = listener.local_addr()?.port();
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("traceo-node-sink".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            if open.load(Ordering::Relaxed) >= MAX_SCRIPTS {
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let open = open.clone();
            let drained = std::thread::Builder::new().name("traceo-node-marks".into()).spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                open.fetch_sub(1, Ordering::Relaxed);
            });
            if drained.is_err() {
                log::warn!("--node-inject: no thread to read a script's markers; its writes will wait");
            }
        }
    })?;
    Ok(port)
}

/// What becomes of an event.
pub enum Pass {
    Keep,
    /// A marker connection's own event: not traffic.
    Drop,
    /// The marked write, with its context set.
    Replace(Event),
}

#[derive(Clone, Copy)]
struct Pending {
    inbound_fd: i32,
    /// Bytes the marked write was to move.
    len: u64,
    tid: u32,
    at_ns: u64,
}

/// Outcomes, counted (`traceo_agent_node_markers_total{reason}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkerStats {
    /// A write was given its inbound connection.
    pub applied: u64,
    /// The next write on the fd came from another thread or too late (or never).
    pub late: u64,
    /// The inbound fd names no connection the agent has seen.
    pub unknown_inbound: u64,
    /// Bytes on a sink connection that are not whole markers.
    pub malformed: u64,
}

impl MarkerStats {
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("applied", self.applied),
            ("late", self.late),
            ("unknown_inbound", self.unknown_inbound),
            ("malformed", self.malformed),
        ]
    }
}

pub struct NodeMarks {
    sink: SocketAddr,
    /// Marker connections: (pid, conn_id).
    sinks: HashSet<(u32, u64)>,
    /// Processes with a marker connection.
    pids: HashSet<u32>,
    /// (pid, fd) -> conn_id, for those processes.
    fds: HashMap<(u32, i32), u64>,
    /// (pid, outbound fd) -> the marker waiting for its write.
    pending: HashMap<(u32, i32), Pending>,
    pub stats: MarkerStats,
}

impl NodeMarks {
    /// Markers arrive on connections to 127.0.0.1:`sink_port`.
    pub fn new(sink_port: u16) -> NodeMarks {
        NodeMarks {
            sink: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sink_port),
            sinks: HashSet::new(),
            pids: HashSet::new(),
            fds: HashMap::new(),
            pending: HashMap::new(),
            stats: MarkerStats::default(),
        }
    }

    pub fn pass(&mut self, event: &Event) -> Pass {
        match event {
            Event::ConnOpen(c) if c.how == Some(OpenHow::Connected) && c.peer == Some(self.sink) => {
                self.sinks.insert((c.meta.pid, c.conn_id));
                self.pids.insert(c.meta.pid);
                Pass::Drop
            }
            Event::ConnOpen(c) => {
                self.remember(c.meta.pid, c.fd, c.conn_id);
                Pass::Keep
            }
            Event::ConnClose(c) => {
                if self.sinks.remove(&(c.meta.pid, c.conn_id)) {
                    return Pass::Drop;
                }
                let key = (c.meta.pid, c.fd);
                if self.fds.get(&key) == Some(&c.conn_id) {
                    self.fds.remove(&key);
                }
                if self.pending.remove(&key).is_some() {
                    self.stats.late += 1;
                }
                Pass::Keep
            }
            Event::Data(d) if self.sinks.contains(&(d.meta.pid, d.conn_id)) => {
                if d.direction == Direction::Egress {
                    self.markers(d);
                }
                Pass::Drop
            }
            Event::Data(d) if self.pids.contains(&d.meta.pid) && !d.syscall.is_tls() => self.data(d),
            Event::Exit(p) => {
                let pid = p.meta.pid;
                if self.pids.remove(&pid) {
                    self.sinks.retain(|(p, _)| *p != pid);
                    self.fds.retain(|(p, _), _| *p != pid);
                    self.pending.retain(|(p, _), _| *p != pid);
                }
                Pass::Keep
            }
            _ => Pass::Keep,
        }
    }

    fn remember(&mut self, pid: u32, fd: i32, conn_id: u64) {
        if self.pids.contains(&pid) && (self.fds.len() < MAX_FDS || self.fds.contains_key(&(pid, fd))) {
            self.fds.insert((pid, fd), conn_id);
        }
    }

    fn markers(&mut self, d: &Data) {
        let bytes = &d.payload[..];
        if !bytes.len().is_multiple_of(MARKER_LEN) || d.truncated || d.read_failed {
            self.stats.malformed += 1;
            return;
        }
        for m in bytes.chunks_exact(MARKER_LEN) {
            if &m[..4] != MAGIC {
                self.stats.malformed += 1;
                continue;
            }
            let word = |at: usize| u32::from_le_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
            let (inbound_fd, outbound_fd, len) = (word(4) as i32, word(8) as i32, u64::from(word(12)));
            if self.pending.len() >= MAX_PENDING {
                self.stats.late += self.pending.len() as u64;
                self.pending.clear();
            }
            let marker = Pending { inbound_fd, len, tid: d.meta.tid, at_ns: d.exit_ns };
            if self.pending.insert((d.meta.pid, outbound_fd), marker).is_some() {
                self.stats.late += 1;
            }
        }
    }

    fn data(&mut self, d: &Data) -> Pass {
        self.remember(d.meta.pid, d.fd, d.conn_id);
        if d.after_loss {
            // The marked write may be among what was lost: no marker of the process is trusted.
            let pid = d.meta.pid;
            let before = self.pending.len();
            self.pending.retain(|(p, _), _| *p != pid);
            self.stats.late += (before - self.pending.len()) as u64;
            return Pass::Keep;
        }
        if d.direction != Direction::Egress {
            return Pass::Keep;
        }
        let Some(marker) = self.pending.remove(&(d.meta.pid, d.fd)) else { return Pass::Keep };
        let moved = d.total_len;
        if marker.tid != d.meta.tid
            || d.enter_ns < marker.at_ns
            || d.enter_ns - marker.at_ns > WINDOW_NS
            || moved == 0
            || moved > marker.len
        {
            self.stats.late += 1;
            return Pass::Keep;
        }
        let Some(&inbound) = self.fds.get(&(d.meta.pid, marker.inbound_fd)) else {
            self.stats.unknown_inbound += 1;
            return Pass::Keep;
        };
        self.stats.applied += 1;
        Pass::Replace(Event::Data(Data { task_ctx: traceo_ebpf_common::CONN_CTX | inbound, ..d.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Conn, Family, Meta, Syscall};

    const PID: u32 = 40;
    const SINK: u16 = 9999;

    fn meta(tid: u32, ts_ns: u64) -> Meta {
        Meta { pid: PID, tid, service: None, ts_ns }
    }

    fn conn(fd: i32, conn_id: u64, peer_port: u16, how: Option<OpenHow>) -> Conn {
        Conn {
            meta: meta(PID, 1),
            conn_id,
            fd,
            how,
            family: Family::Inet,
            sock_type: 1,
            local: None,
            peer: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), peer_port)),
            comm: "node".into(),
            ret: 0,
            after_loss: false,
            task_ctx: 0,
        }
    }

    fn data(fd: i32, conn_id: u64, direction: Direction, tid: u32, at: u64, payload: &[u8]) -> Event {
        Event::Data(Data::sample(meta(tid, at), (conn_id, fd), Syscall::Write, direction, (at, at + 1), payload))
    }

    /// A marker for a write of up to 64 bytes.
    fn marker(inbound: i32, outbound: i32) -> Vec<u8> {
        marker_of(inbound, outbound, 64)
    }

    fn marker_of(inbound: i32, outbound: i32, len: u32) -> Vec<u8> {
        let mut m = MAGIC.to_vec();
        for word in [inbound as u32, outbound as u32, len] {
            m.extend_from_slice(&word.to_le_bytes());
        }
        m
    }

    fn ctx(p: Pass) -> Option<u64> {
        match p {
            Pass::Replace(Event::Data(d)) => Some(d.task_ctx),
            _ => None,
        }
    }

    /// A process with a sink (fd 9, conn 900) and an inbound connection (fd 20, conn 200).
    fn setup() -> NodeMarks {
        let mut n = NodeMarks::new(SINK);
        assert!(matches!(n.pass(&Event::ConnOpen(conn(9, 900, SINK, Some(OpenHow::Connected)))), Pass::Drop));
        assert!(matches!(n.pass(&data(20, 200, Direction::Ingress, PID, 10, b"GET / HTTP/1.1\r\n\r\n")), Pass::Keep));
        n
    }

    #[test]
    fn the_marked_write_serves_the_inbound_connection() {
        let mut n = setup();
        assert!(matches!(n.pass(&data(9, 900, Direction::Egress, PID, 100, &marker(20, 30))), Pass::Drop));
        let out = n.pass(&data(30, 300, Direction::Egress, PID, 105, b"GET /leaf HTTP/1.1\r\n"));
        assert_eq!(ctx(out), Some(traceo_ebpf_common::CONN_CTX | 200));
        // One write per marker: the next one on the fd is not marked.
        assert!(ctx(n.pass(&data(30, 300, Direction::Egress, PID, 110, b"more"))).is_none());
        assert_eq!(n.stats.applied, 1);
    }

    #[test]
    fn a_marker_whose_write_comes_late_or_elsewhere_names_nothing() {
        let mut n = setup();
        n.pass(&data(9, 900, Direction::Egress, PID, 100, &marker(20, 30)));
        assert!(ctx(n.pass(&data(30, 300, Direction::Egress, PID + 1, 105, b"GET /"))).is_none(), "another thread");
        n.pass(&data(9, 900, Direction::Egress, PID, 200, &marker(20, 30)));
        assert!(ctx(n.pass(&data(30, 300, Direction::Egress, PID, 201 + WINDOW_NS + 1, b"GET /"))).is_none());
        // An inbound fd the agent never saw.
        n.pass(&data(9, 900, Direction::Egress, PID, 300, &marker(21, 30)));
        assert!(ctx(n.pass(&data(30, 300, Direction::Egress, PID, 301, b"GET /"))).is_none());
        // Garbage on the sink.
        n.pass(&data(9, 900, Direction::Egress, PID, 400, b"not a marker"));
        // A write longer than the one marked is another one (the marked write was lost).
        n.pass(&data(9, 900, Direction::Egress, PID, 500, &marker_of(20, 30, 3)));
        assert!(ctx(n.pass(&data(30, 300, Direction::Egress, PID, 501, b"GET /"))).is_none());
        // A loss in the process: its markers are dropped.
        n.pass(&data(9, 900, Direction::Egress, PID, 600, &marker(20, 30)));
        let Event::Data(mut lossy) = data(31, 310, Direction::Ingress, PID, 601, b"x") else { unreachable!() };
        lossy.after_loss = true;
        n.pass(&Event::Data(lossy));
        assert!(ctx(n.pass(&data(30, 300, Direction::Egress, PID, 602, b"GET /"))).is_none());
        assert_eq!(n.stats, MarkerStats { applied: 0, late: 4, unknown_inbound: 1, malformed: 1 });
    }

    #[test]
    fn without_a_sink_nothing_changes() {
        let mut n = NodeMarks::new(SINK);
        n.pass(&Event::ConnOpen(conn(9, 900, SINK + 1, Some(OpenHow::Connected))));
        n.pass(&data(9, 900, Direction::Egress, PID, 100, &marker(20, 30)));
        assert!(matches!(n.pass(&data(30, 300, Direction::Egress, PID, 105, b"GET /")), Pass::Keep));
        assert_eq!(n.stats, MarkerStats::default());
    }

    #[test]
    fn a_closed_inbound_fd_is_forgotten() {
        let mut n = setup();
        n.pass(&Event::ConnClose(conn(20, 200, 1, None)));
        n.pass(&data(9, 900, Direction::Egress, PID, 100, &marker(20, 30)));
        assert!(ctx(n.pass(&data(30, 300, Direction::Egress, PID, 101, b"GET /"))).is_none());
        assert_eq!(n.stats.unknown_inbound, 1);
    }
}
