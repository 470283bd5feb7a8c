//! Turning byte scripts into the events the kernel side would send.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::events::{Conn, Data, Direction, Event, Family, Meta, OpenHow, Proc, Syscall};
use crate::http::{ConnTracker, Exchange, TrackerConfig, TrackerStats};

pub const PID: u32 = 4242;
pub const TID: u32 = 4243;
/// Time between consecutive syscalls of a script.
pub const STEP_NS: u64 = 10_000;
/// How long each syscall takes.
pub const SYSCALL_NS: u64 = 1_000;

/// One connection's events, with a clock that advances per syscall.
pub struct Script {
    pub conn_id: u64,
    pub events: Vec<Event>,
    pub now_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub service: Option<u32>,
    /// The TCP sequence number of the next byte sent and received, when the events carry
    /// them (`with_tcp_seq`).
    pub tcp_seq: Option<[u32; 2]>,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

impl Script {
    /// No open event: the connection predates the agent.
    pub fn unseen(conn_id: u64) -> Self {
        Script {
            conn_id,
            events: Vec::new(),
            now_ns: 1_000_000_000 + conn_id * 1_000_000,
            pid: PID,
            tid: TID,
            service: None,
            tcp_seq: None,
        }
    }

    /// From here on, events carry TCP sequence numbers, starting at `sent` and `received`.
    pub fn with_tcp_seq(&mut self, sent: u32, received: u32) -> &mut Self {
        self.tcp_seq = Some([sent, received]);
        self
    }

    /// The process accepted the connection (it will be the server).
    pub fn accepted(conn_id: u64) -> Self {
        Self::opened(conn_id, OpenHow::Accepted)
    }

    /// The process connected (it will be the client).
    pub fn connected(conn_id: u64) -> Self {
        Self::opened(conn_id, OpenHow::Connected)
    }

    pub fn opened(conn_id: u64, how: OpenHow) -> Self {
        Self::opened_by(conn_id, how, PID)
    }

    pub fn opened_by(conn_id: u64, how: OpenHow, pid: u32) -> Self {
        let mut s = Self::unseen(conn_id);
        s.pid = pid;
        let ev = s.conn_event(Some(how));
        s.events.push(Event::ConnOpen(ev));
        s
    }

    fn meta(&self, ts_ns: u64) -> Meta {
        Meta { pid: self.pid, tid: self.tid, service: self.service, ts_ns }
    }

    fn conn_event(&self, how: Option<OpenHow>) -> Conn {
        Conn {
            meta: self.meta(self.now_ns),
            conn_id: self.conn_id,
            fd: 7,
            how,
            family: Family::Inet,
            sock_type: 1,
            local: how.map(|_| addr("10.0.0.1:8080")),
            peer: how.map(|_| addr("10.0.0.2:51000")),
            comm: "engine".to_string(),
            ret: 0,
            task_ctx: 0,
            after_loss: false,
        }
    }

    /// One syscall moving `total_len` bytes of which `payload` were captured.
    pub fn data(&mut self, dir: Direction, payload: &[u8], total_len: u64, syscall: Syscall) -> &mut Self {
        let enter_ns = self.now_ns;
        let exit_ns = enter_ns + SYSCALL_NS;
        self.now_ns += STEP_NS;
        let at = usize::from(dir == Direction::Ingress);
        let tcp_seq = self.tcp_seq.map(|s| s[at]);
        if let Some(s) = &mut self.tcp_seq {
            s[at] = s[at].wrapping_add(total_len as u32);
        }
        let d = Data {
            meta: self.meta(exit_ns),
            conn_id: self.conn_id,
            fd: 7,
            syscall,
            direction: dir,
            enter_ns,
            exit_ns,
            ret: total_len as i64,
            total_len,
            truncated: (payload.len() as u64) < total_len && syscall != Syscall::Sendfile,
            read_failed: false,
            no_payload: syscall == Syscall::Sendfile,
            after_loss: false,
            payload: Bytes::copy_from_slice(payload),
            task_ctx: 0,
            tcp_seq,
        };
        self.events.push(Event::Data(d));
        self
    }

    /// The process received `bytes` in one read.
    /// Bytes sent (`egress`) or received whose event carries the kernel's `after_loss` flag.
    pub fn recv_or_send_after_loss(&mut self, egress: bool, bytes: &[u8]) -> &mut Self {
        let dir = if egress { Direction::Egress } else { Direction::Ingress };
        let syscall = if egress { Syscall::Sendto } else { Syscall::Recvfrom };
        self.data(dir, bytes, bytes.len() as u64, syscall);
        if let Some(Event::Data(d)) = self.events.last_mut() {
            d.after_loss = true;
        }
        self
    }

    pub fn recv(&mut self, bytes: &[u8]) -> &mut Self {
        self.data(Direction::Ingress, bytes, bytes.len() as u64, Syscall::Read)
    }

    /// The process sent `bytes` in one write.
    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        self.data(Direction::Egress, bytes, bytes.len() as u64, Syscall::Write)
    }

    /// `bytes` moved in pieces of at most `size` bytes.
    pub fn pieces(&mut self, dir: Direction, bytes: &[u8], size: usize) -> &mut Self {
        for chunk in bytes.chunks(size.max(1)) {
            self.data(dir, chunk, chunk.len() as u64, Syscall::Read);
        }
        self
    }

    /// A send of which only the first `captured` bytes were copied.
    pub fn send_truncated(&mut self, bytes: &[u8], captured: usize) -> &mut Self {
        let cut = captured.min(bytes.len());
        self.data(Direction::Egress, &bytes[..cut], bytes.len() as u64, Syscall::Write)
    }

    /// `len` bytes sent with sendfile (never captured).
    pub fn sendfile(&mut self, len: u64) -> &mut Self {
        self.data(Direction::Egress, &[], len, Syscall::Sendfile)
    }

    /// The peer's end of stream.
    pub fn peer_eof(&mut self) -> &mut Self {
        self.data(Direction::Ingress, &[], 0, Syscall::Read)
    }

    pub fn close(&mut self) -> &mut Self {
        let ev = self.conn_event(None);
        self.events.push(Event::ConnClose(ev));
        self
    }

    /// The owning process exits.
    pub fn exit(&mut self) -> &mut Self {
        let meta = self.meta(self.now_ns);
        self.events.push(Event::Exit(Proc { meta, parent_pid: None, comm: "engine".to_string() }));
        self
    }

    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// Replay `events` through a tracker, then flush it. Replayed again with every connection
/// released as if idle after each event (parsers let go between messages, queues given
/// back): what comes out must be the same.
pub fn run_with(cfg: TrackerConfig, events: &[Event]) -> (Vec<Exchange>, TrackerStats) {
    let replay = |cfg, rest: bool| {
        let mut tracker = ConnTracker::new(cfg);
        let mut out = Vec::new();
        for ev in events {
            tracker.handle(&mut ev.clone(), &mut |x| out.extend(x.into_exchange().map(|x| *x)));
            if rest {
                tracker.release_all_idle();
            }
        }
        tracker.finish(&mut |x| out.extend(x.into_exchange().map(|x| *x)));
        (out, tracker.stats().clone())
    };
    let kept = replay(cfg.clone(), false);
    assert_eq!(replay(cfg, true), kept, "resting idle connections changed the result");
    kept
}

pub fn run(events: &[Event]) -> (Vec<Exchange>, TrackerStats) {
    run_with(TrackerConfig::default(), events)
}

/// `(method, target, status, request body, response body)` of an exchange.
pub type Summary = (String, String, Option<u16>, u64, Option<u64>);

pub fn summary(xs: &[Exchange]) -> Vec<Summary> {
    xs.iter()
        .map(|x| (x.method.to_string(), x.target.clone(), x.status, x.request_body_bytes, x.response_body_bytes))
        .collect()
}

pub fn one(xs: &[Exchange]) -> &Exchange {
    match xs {
        [x] => x,
        _ => panic!("expected one exchange, got {}: {:#?}", xs.len(), summary(xs)),
    }
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n").into_bytes()
}

pub fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn ok(body: &str) -> Vec<u8> {
    status(200, body)
}

pub fn status(code: u16, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}
