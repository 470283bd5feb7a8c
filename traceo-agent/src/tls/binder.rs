//! Ties TLS plaintext to its connection and keeps ciphertext away from the HTTP parser.
//!
//! The OpenSSL probes report plaintext with the `SSL *` it went through, not a socket. The
//! socket is found from the same thread's socket I/O, which arrives in order in the same
//! event stream (one ring buffer; a thread's events are reserved in program order):
//! 1. a socket read or write the thread made *inside* the SSL call (its syscall started
//!    after the SSL call did): OpenSSL with a socket BIO (curl, nginx, blocking Python);
//! 2. the connection this SSL object was bound to before;
//! 3. for a read, the thread's last socket read before the call: memory BIOs (asyncio and
//!    so uvicorn) receive ciphertext first and decrypt it after;
//! 4. for a write, the thread's next socket write: memory BIOs encrypt first and send after.
//!    Such writes wait (bounded) for that socket write.
//!
//! A connection is TLS once its ciphertext opens with a handshake record or once plaintext
//! binds to it; from then on its socket bytes are dropped here (counted), and the HTTP
//! layer sees only the plaintext under the connection's id. A TLS connection that ends
//! without any plaintext belongs to a TLS stack the probes cannot see into: counted, and
//! logged once per process; unless its handshake never got a TLS answer (a TLS client on a
//! plaintext port, answered in plaintext or not at all): that is counted as such, and
//! blames no TLS library.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::events::{Data, Direction, Event};

/// Plaintext writes held per thread while waiting for their socket write.
const MAX_PENDING_PER_THREAD: usize = 64;
/// How long a held write waits for its socket write before it is dropped.
const PENDING_TIMEOUT_NS: u64 = 2_000_000_000;
/// Threads without socket I/O for this long are forgotten.
const THREAD_IDLE_NS: u64 = 60_000_000_000;

/// Counters of the TLS stage, for the agent's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Plaintext chunks passed on, bound to their connection.
    pub plaintext_events: u64,
    /// Plaintext chunks dropped: no connection could be found for them.
    pub unbound_events: u64,
    /// Ciphertext bytes kept from the HTTP parser.
    pub ciphertext_bytes: u64,
    /// Connections found to carry TLS.
    pub tls_connections: u64,
    /// TLS connections that ended without any plaintext seen (a TLS stack not probed).
    pub opaque_connections: u64,
    /// TLS handshakes that never got a TLS answer: a TLS client on a plaintext port (the
    /// server answered in plaintext, e.g. `400 Bad Request`, or closed). Not opaque.
    pub on_plaintext_connections: u64,
}

#[derive(Clone, Copy)]
struct SocketIo {
    conn_id: u64,
    enter_ns: u64,
}

#[derive(Default)]
struct ThreadIo {
    pid: u32,
    last_ns: u64,
    last: Option<SocketIo>,
    last_ingress: Option<SocketIo>,
    /// Plaintext writes waiting for the socket write that carries them.
    pending: VecDeque<Data>,
}

struct TlsConn {
    pid: u32,
    /// The SSL object bound to it, if any.
    ssl: Option<u64>,
    /// The direction of the handshake record that opened it (none when plaintext made it TLS).
    hello: Option<Direction>,
    /// What came back the other way first: a TLS record or not (`None`: nothing yet).
    answer: Option<bool>,
}

/// The maps below are keyed by the kernel's and the processes' own integers (thread ids,
/// connection ids, `SSL *`), looked up on every data event: a fast hash.
type FastHash = foldhash::fast::RandomState;

#[derive(Default)]
pub struct TlsBinder {
    threads: HashMap<u32, ThreadIo, FastHash>,
    /// (pid, SSL *) -> connection id.
    bound: HashMap<(u32, u64), u64, FastHash>,
    /// Connections known to carry TLS.
    conns: HashMap<u64, TlsConn, FastHash>,
    /// Processes already reported for opaque TLS.
    reported: HashSet<u32>,
    /// Processes already reported for a TLS handshake on a plaintext connection.
    reported_plain: HashSet<u32>,
    pub stats: TlsStats,
}

/// A TLS handshake record opening a connection: content type 22, version 3.x, a length a
/// record can have, then (when the read went that far: OpenSSL reads the 5-byte record
/// header alone) a ClientHello (1) or ServerHello (2). No HTTP/1 message starts so.
pub fn is_tls_handshake(bytes: &[u8]) -> bool {
    match bytes {
        [0x16, 3, minor, hi, lo, rest @ ..] => {
            *minor <= 4 && u16::from_be_bytes([*hi, *lo]) <= 16384 + 2048 && matches!(rest.first(), None | Some(1 | 2))
        }
        _ => false,
    }
}

/// Any TLS record's header: content type 20-23 (change cipher spec, alert, handshake,
/// application data), version 3.x.
pub fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [20..=23, 3, minor, ..] if *minor <= 4) || matches!(bytes, [20..=23] | [20..=23, 3])
}

impl TlsBinder {
    /// Consume one event in order and pass on what the HTTP layer should see.
    pub fn process(&mut self, ev: &mut Event, out: &mut impl FnMut(&mut Event)) {
        match ev {
            Event::Data(d) if d.syscall.is_tls() => self.plaintext(d, out),
            Event::Data(d) => {
                self.socket_io(d, out);
                // One lookup for the plaintext connections nearly every event is on.
                match self.conns.get_mut(&d.conn_id) {
                    Some(c) => {
                        if c.answer.is_none() && c.hello.is_some_and(|h| h != d.direction) && !d.payload.is_empty() {
                            c.answer = Some(is_tls_record(&d.payload));
                        }
                    }
                    None if is_tls_handshake(&d.payload) => {
                        self.mark_tls(d.conn_id, d.meta.pid);
                        if let Some(c) = self.conns.get_mut(&d.conn_id) {
                            c.hello = Some(d.direction);
                        }
                    }
                    None => return out(ev),
                }
                self.stats.ciphertext_bytes = self.stats.ciphertext_bytes.saturating_add(d.total_len);
            }
            Event::ConnClose(c) => {
                if let Some(conn) = self.conns.remove(&c.conn_id) {
                    self.ended(c.conn_id, conn);
                }
                out(ev);
            }
            Event::Exit(p) => {
                let pid = p.meta.pid;
                self.threads.retain(|_, t| t.pid != pid);
                self.bound.retain(|(p, _), _| *p != pid);
                let gone: Vec<u64> = self.conns.iter().filter(|(_, c)| c.pid == pid).map(|(id, _)| *id).collect();
                for id in gone {
                    if let Some(conn) = self.conns.remove(&id) {
                        self.ended(id, conn);
                    }
                }
                self.reported.remove(&pid);
                self.reported_plain.remove(&pid);
                out(ev);
            }
            _ => out(ev),
        }
    }

    /// Drop held writes that never met their socket write, and forget idle threads.
    pub fn expire(&mut self, now_ns: u64) {
        for t in self.threads.values_mut() {
            while t.pending.front().is_some_and(|d| d.meta.ts_ns.saturating_add(PENDING_TIMEOUT_NS) < now_ns) {
                t.pending.pop_front();
                self.stats.unbound_events += 1;
            }
        }
        self.threads.retain(|_, t| !t.pending.is_empty() || t.last_ns.saturating_add(THREAD_IDLE_NS) >= now_ns);
    }

    /// Flush everything held (end of input): held writes have no socket write left to meet.
    pub fn finish(&mut self) {
        for t in self.threads.values() {
            self.stats.unbound_events += t.pending.len() as u64;
        }
        self.threads.clear();
    }

    /// A socket read or write: remember it for the thread; a write may carry held plaintext.
    fn socket_io(&mut self, d: &Data, out: &mut impl FnMut(&mut Event)) {
        let t = self.threads.entry(d.meta.tid).or_default();
        let io = SocketIo { conn_id: d.conn_id, enter_ns: d.enter_ns };
        t.pid = d.meta.pid;
        t.last_ns = d.meta.ts_ns;
        t.last = Some(io);
        if d.direction == Direction::Ingress {
            t.last_ingress = Some(io);
            return;
        }
        if let Some(first) = t.pending.front() {
            let key = (first.meta.pid, first.conn_id);
            self.bind(key, d.conn_id);
            self.release(d.meta.tid, key, d.conn_id, out);
        }
    }

    fn plaintext(&mut self, d: &Data, out: &mut impl FnMut(&mut Event)) {
        let key = (d.meta.pid, d.conn_id);
        let t = self.threads.entry(d.meta.tid).or_default();
        t.pid = d.meta.pid;
        let in_call = t.last.filter(|io| io.enter_ns >= d.enter_ns).map(|io| io.conn_id);
        let before = t.last_ingress.filter(|_| d.direction == Direction::Ingress).map(|io| io.conn_id);
        let conn = in_call.or_else(|| self.bound.get(&key).copied()).or(before);
        let Some(conn) = conn else {
            // A write through a memory BIO: its socket write comes next.
            let t = self.threads.entry(d.meta.tid).or_default();
            if t.pending.len() >= MAX_PENDING_PER_THREAD {
                t.pending.pop_front();
                self.stats.unbound_events += 1;
            }
            t.pending.push_back(d.clone());
            return;
        };
        self.bind(key, conn);
        self.release(d.meta.tid, key, conn, out);
        self.forward(d, conn, out);
    }

    fn bind(&mut self, key: (u32, u64), conn: u64) {
        self.bound.insert(key, conn);
        self.mark_tls(conn, key.0);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ssl = Some(key.1);
        }
    }

    /// Pass on this thread's held writes of `key`, now that their connection is known.
    fn release(&mut self, tid: u32, key: (u32, u64), conn: u64, out: &mut impl FnMut(&mut Event)) {
        let Some(t) = self.threads.get_mut(&tid) else { return };
        if t.pending.is_empty() {
            return;
        }
        let (ready, rest): (VecDeque<Data>, VecDeque<Data>) =
            std::mem::take(&mut t.pending).into_iter().partition(|d| (d.meta.pid, d.conn_id) == key);
        t.pending = rest;
        for d in &ready {
            self.forward(d, conn, out);
        }
    }

    fn forward(&mut self, d: &Data, conn: u64, out: &mut impl FnMut(&mut Event)) {
        self.stats.plaintext_events += 1;
        out(&mut Event::Data(Data { conn_id: conn, ..d.clone() }));
    }

    fn mark_tls(&mut self, conn: u64, pid: u32) {
        self.conns.entry(conn).or_insert_with(|| {
            self.stats.tls_connections += 1;
            TlsConn { pid, ssl: None, hello: None, answer: None }
        });
    }

    fn ended(&mut self, conn_id: u64, conn: TlsConn) {
        match conn.ssl {
            Some(ssl) => {
                if self.bound.get(&(conn.pid, ssl)) == Some(&conn_id) {
                    self.bound.remove(&(conn.pid, ssl));
                }
            }
            // A handshake never answered in TLS: the far end does not speak TLS here.
            None if conn.hello.is_some() && conn.answer != Some(true) => {
                self.stats.on_plaintext_connections += 1;
                if self.reported_plain.insert(conn.pid) {
                    let comm = crate::procfs::comm(conn.pid).unwrap_or_default();
                    log::info!(
                        "pid {} ({comm}): a TLS handshake on connection {conn_id} got no TLS answer (TLS sent to a \
                         plaintext HTTP port, or the reverse); not HTTPS, counted in \
                         traceo_tls_on_plaintext_connections_total; later ones are only counted",
                        conn.pid
                    );
                }
            }
            None => {
                self.stats.opaque_connections += 1;
                if self.reported.insert(conn.pid) {
                    let comm = crate::procfs::comm(conn.pid).unwrap_or_default();
                    log::warn!(
                        "pid {} ({comm}) carried TLS on a connection with no plaintext seen: its TLS library is not \
                         one traceo probes (OpenSSL's libssl); its HTTPS is not traced",
                        conn.pid
                    );
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "binder_tests.rs"]
mod tests;
