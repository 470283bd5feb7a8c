//! Both ends of one TCP connection on this host: the client's (local, peer) is the server's
//! (peer, local). Knows which connections the agent traces (from open events) and matches
//! client requests with the server requests at the other end, in order.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use crate::events::{Conn, Event, Family};

/// (client address, server address), IPv4-mapped IPv6 addresses folded to IPv4 so a
/// dual-stack server's view matches an IPv4 client's. Packed (IP as 16 bytes, port): a
/// `SocketAddr` pair is 64 bytes, and two maps hold a key per traced connection (10,000
/// idle connections kept 2.5 MB of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairKey([u8; 36]);

/// The address as 18 bytes: the IP as IPv6 (IPv4 mapped, which is the same address the
/// `SocketAddr` pair compared equal to after folding) and the port. Flow info and scope are
/// dropped, as folding did.
fn pack(a: SocketAddr, out: &mut [u8]) {
    // An IPv6 address is kept as is: canonicalising a mapped one and mapping it back is
    // the identity.
    let ip = match a {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
        SocketAddr::V6(v6) => *v6.ip(),
    };
    out[..16].copy_from_slice(&ip.octets());
    out[16..18].copy_from_slice(&a.port().to_be_bytes());
}

fn key(client: SocketAddr, server: SocketAddr) -> PairKey {
    let mut k = [0u8; 36];
    pack(client, &mut k[..18]);
    pack(server, &mut k[18..]);
    PairKey(k)
}

/// The connection as the client sees it.
pub fn client_key(local: Option<SocketAddr>, peer: Option<SocketAddr>) -> Option<PairKey> {
    Some(key(local?, peer?))
}

/// The connection as the server sees it.
pub fn server_key(local: Option<SocketAddr>, peer: Option<SocketAddr>) -> Option<PairKey> {
    Some(key(peer?, local?))
}

/// HTTP/1.x requests on one connection do not overlap, so a few entries per side suffice.
const MAX_PER_CONNECTION: usize = 8;
const SOCK_STREAM: u16 = 1;

/// The maps are probed on every request (and every close): a fast hash, seeded per map. The
/// keys are kernel-reported addresses, and a peer choosing its port cannot aim collisions
/// at an unknown seed.
type FastHash = foldhash::fast::RandomState;

/// An unmatched request at one end: when it started, and who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry<K> {
    start_ns: u64,
    key: K,
}

pub struct ConnPairs<K> {
    /// Traced TCP connections by their own (local, peer), with the owning pid.
    open: HashMap<PairKey, (u64, u32), FastHash>,
    open_by_id: HashMap<u64, PairKey, FastHash>,
    max_open: usize,
    clients: HashMap<PairKey, VecDeque<Entry<K>>, FastHash>,
    servers: HashMap<PairKey, VecDeque<Entry<K>>, FastHash>,
    /// Connections forgotten because `max_open` was reached.
    pub evicted: u64,
}

impl<K: Copy + PartialEq> ConnPairs<K> {
    pub fn new(max_open: usize) -> Self {
        ConnPairs {
            open: HashMap::default(),
            open_by_id: HashMap::default(),
            max_open: max_open.max(1),
            clients: HashMap::default(),
            servers: HashMap::default(),
            evicted: 0,
        }
    }

    /// Follow which connections exist (opens, closes, process exits).
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::ConnOpen(c) => self.opened(c),
            Event::ConnClose(c) => self.closed(c.conn_id),
            Event::Exit(p) => {
                let pid = p.meta.pid;
                let gone: Vec<u64> = self.open.values().filter(|(_, owner)| *owner == pid).map(|(id, _)| *id).collect();
                gone.into_iter().for_each(|id| self.closed(id));
            }
            Event::Data(_)
            | Event::Exec(_)
            | Event::Fork(_)
            | Event::Task(_)
            | Event::Listen(_)
            | Event::LogWrite(_) => {}
        }
    }

    fn opened(&mut self, c: &Conn) {
        let inet = matches!(c.family, Family::Inet | Family::Inet6);
        let Some(own) = client_key(c.local, c.peer).filter(|_| inet && c.sock_type == SOCK_STREAM) else {
            return;
        };
        self.closed(c.conn_id);
        if self.open.len() >= self.max_open {
            // Rare (tens of thousands of live connections): forget an arbitrary one. The only
            // cost is that a server request on it is not matched with its client's.
            if let Some(id) = self.open_by_id.keys().next().copied() {
                self.closed(id);
                self.evicted += 1;
            }
        }
        if let Some((old, _)) = self.open.insert(own, (c.conn_id, c.meta.pid)) {
            self.open_by_id.remove(&old);
        }
        self.open_by_id.insert(c.conn_id, own);
    }

    fn closed(&mut self, conn_id: u64) {
        if let Some(own) = self.open_by_id.remove(&conn_id) {
            self.open.remove(&own);
        }
    }

    /// Is the client end of this connection a traced connection?
    pub fn client_traced(&self, key: &PairKey) -> bool {
        self.open.contains_key(key)
    }

    /// A client request started: the server request waiting for it, if any (the earliest one
    /// that started after it: the server cannot read bytes before the client sends them).
    /// Otherwise the client request waits for its server's.
    pub fn client_started(&mut self, key: PairKey, start_ns: u64, who: K) -> Option<K> {
        if let Some(waiting) = self.servers.get_mut(&key) {
            if let Some(i) = waiting.iter().position(|e| e.start_ns >= start_ns) {
                let found = waiting.remove(i).map(|e| e.key);
                if waiting.is_empty() {
                    self.servers.remove(&key);
                }
                return found;
            }
        }
        push_bounded(self.clients.entry(key).or_default(), Entry { start_ns, key: who });
        None
    }

    /// A server request started: its client's request, if seen (the latest that started
    /// before it; older ones were never answered on this side). `None` and traced: wait.
    pub fn server_started(&mut self, key: PairKey, start_ns: u64) -> Option<K> {
        let waiting = self.clients.get_mut(&key)?;
        let i = waiting.iter().rposition(|e| e.start_ns <= start_ns)?;
        // Requests before it on the connection will never be matched.
        waiting.drain(..i);
        let found = waiting.pop_front().map(|e| e.key);
        if waiting.is_empty() {
            self.clients.remove(&key);
        }
        found
    }

    /// Let a server request wait for its client's.
    pub fn server_waits(&mut self, key: PairKey, start_ns: u64, who: K) {
        push_bounded(self.servers.entry(key).or_default(), Entry { start_ns, key: who });
    }

    /// Stop waiting for `who` (matched elsewhere, expired, completed).
    pub fn forget(&mut self, key: &PairKey, who: K) {
        for side in [&mut self.clients, &mut self.servers] {
            if let Some(q) = side.get_mut(key) {
                q.retain(|e| e.key != who);
                if q.is_empty() {
                    side.remove(key);
                }
            }
        }
    }

    /// Entries held (for bounds checks).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.clients.values().chain(self.servers.values()).map(VecDeque::len).sum::<usize>() + self.open.len()
    }
}

fn push_bounded<K>(q: &mut VecDeque<Entry<K>>, e: Entry<K>) {
    if q.len() >= MAX_PER_CONNECTION {
        q.pop_front();
    }
    q.push_back(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Meta, OpenHow, Proc};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn open(conn_id: u64, pid: u32, local: &str, peer: &str) -> Event {
        Event::ConnOpen(Conn {
            meta: Meta { pid, tid: pid, service: None, ts_ns: 1 },
            conn_id,
            fd: 3,
            how: Some(OpenHow::Connected),
            family: Family::Inet,
            sock_type: SOCK_STREAM,
            local: Some(a(local)),
            peer: Some(a(peer)),
            comm: "x".into(),
            ret: 0,
            task_ctx: 0,
            after_loss: false,
        })
    }

    #[test]
    fn keys_agree_from_both_ends_and_across_address_families() {
        let client = client_key(Some(a("127.0.0.1:40000")), Some(a("127.0.0.1:8000")));
        let server = server_key(Some(a("[::ffff:127.0.0.1]:8000")), Some(a("[::ffff:127.0.0.1]:40000")));
        assert_eq!(client, server);
        assert_eq!(client_key(None, Some(a("127.0.0.1:1"))), None);
        // Distinct connections stay distinct: addresses, ports, families, directions.
        let k = |l: &str, p: &str| client_key(Some(a(l)), Some(a(p))).unwrap();
        let base = k("127.0.0.1:40000", "127.0.0.1:8000");
        for other in [
            k("127.0.0.2:40000", "127.0.0.1:8000"),
            k("127.0.0.1:40001", "127.0.0.1:8000"),
            k("127.0.0.1:40000", "127.0.0.1:8001"),
            k("127.0.0.1:8000", "127.0.0.1:40000"),
            k("[::1]:40000", "127.0.0.1:8000"),
            k("[::7f00:1]:40000", "127.0.0.1:8000"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn requests_match_in_either_order() {
        let key = client_key(Some(a("127.0.0.1:40000")), Some(a("127.0.0.1:8000"))).unwrap();
        let mut p: ConnPairs<u32> = ConnPairs::new(16);
        // Client first.
        assert_eq!(p.client_started(key, 100, 1), None);
        assert_eq!(p.server_started(key, 110), Some(1));
        // Server first (its read returned before the client's send did).
        assert_eq!(p.server_started(key, 210), None);
        p.server_waits(key, 210, 20);
        assert_eq!(p.client_started(key, 200, 2), Some(20));
        assert_eq!(p.len(), 0);
        // A stale client request (never seen by the server) is skipped.
        p.client_started(key, 300, 3);
        p.client_started(key, 400, 4);
        assert_eq!(p.server_started(key, 410), Some(4));
        assert_eq!(p.len(), 0, "the stale entry went too");
        // A server request cannot match a client request that started after it.
        p.client_started(key, 600, 6);
        assert_eq!(p.server_started(key, 500), None);
        p.forget(&key, 6);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn traced_connections_follow_opens_closes_and_exits_within_a_cap() {
        let mut p: ConnPairs<u32> = ConnPairs::new(2);
        p.observe(&open(1, 10, "127.0.0.1:40000", "127.0.0.1:8000"));
        let key = client_key(Some(a("127.0.0.1:40000")), Some(a("127.0.0.1:8000"))).unwrap();
        assert!(p.client_traced(&key));
        let exit =
            Proc { meta: Meta { pid: 10, tid: 10, service: None, ts_ns: 2 }, parent_pid: None, comm: "x".into() };
        p.observe(&Event::Exit(exit));
        assert!(!p.client_traced(&key));
        for i in 0..5 {
            p.observe(&open(100 + i, 11, &format!("127.0.0.1:{}", 41000 + i), "127.0.0.1:8000"));
        }
        assert_eq!((p.len(), p.evicted), (2, 3));
    }
}
