//! The pipeline stage that consumes events in order and emits exchanges: owns the bounded
//! set of connections and decides when each one starts, ends and is flushed.

use std::sync::Arc;

use crate::events::{Conn as ConnEvent, Data, Event, Meta, OpenHow};

use super::conn::{Conn, Ctx};
use super::exchange::{ConnInfo, Tracked};
use super::h1::{Http1Parser, Limits};
use super::headers::HeaderSelection;
use super::lru::Lru;
use super::route::RouteNormalizer;
use super::stats::TrackerStats;

/// `SOCK_STREAM`.
const SOCK_STREAM: u16 = 1;
/// A connection quiet this long gives back its queues' room (`Conn::release_idle`).
const RELEASE_AFTER_NS: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Service names by `Meta::service` index (the `--service` selections).
    pub service_names: Vec<String>,
    /// Connections tracked at most; the least recently used is flushed past it.
    pub max_connections: usize,
    /// Bytes one direction of a connection may hold while waiting for the other.
    pub max_buffer_bytes: usize,
    /// A connection without events for this long is flushed.
    pub idle_timeout_ns: u64,
    /// Header names kept besides the defaults (secrets are refused).
    pub extra_headers: Vec<String>,
    /// Route templates such as `/api/v1/jobs/{job_id}`.
    pub routes: Vec<String>,
    /// Body bytes kept per message for later stages.
    pub body_prefix_bytes: usize,
    /// How database operations are described (`--db-keys`).
    pub db: crate::db::DbOptions,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            service_names: Vec::new(),
            max_connections: 10_000,
            max_buffer_bytes: 256 * 1024,
            idle_timeout_ns: 120_000_000_000,
            extra_headers: Vec::new(),
            routes: Vec::new(),
            body_prefix_bytes: 4096,
            db: crate::db::DbOptions::default(),
        }
    }
}

pub struct ConnTracker {
    service_names: Vec<Arc<str>>,
    /// The name of connections of no configured service and no known command.
    unknown: Arc<str>,
    idle_timeout_ns: u64,
    limits: Limits,
    routes: RouteNormalizer,
    conns: Lru<Conn>,
    stats: TrackerStats,
    db: crate::db::DbOptions,
    /// Parser outputs, shared by the connections (see `Ctx::scratch`).
    scratch: Vec<super::parser::Output>,
}

impl ConnTracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        let limits = Limits {
            max_head_bytes: Limits::default().max_head_bytes.min(cfg.max_buffer_bytes),
            max_buffer_bytes: cfg.max_buffer_bytes,
            body_prefix_bytes: cfg.body_prefix_bytes,
            headers: Arc::new(HeaderSelection::new(&cfg.extra_headers)),
        };
        ConnTracker {
            service_names: cfg.service_names.iter().map(|n| Arc::from(n.as_str())).collect(),
            unknown: Arc::from("unknown"),
            idle_timeout_ns: cfg.idle_timeout_ns,
            limits,
            routes: RouteNormalizer::new(&cfg.routes),
            conns: Lru::new(cfg.max_connections),
            stats: TrackerStats::default(),
            db: cfg.db,
            scratch: Vec::new(),
        }
    }

    /// Server requests in flight (read, not answered yet) per service.
    pub fn in_flight_by_service(&self) -> std::collections::HashMap<&str, u64> {
        let mut out = std::collections::HashMap::new();
        for conn in self.conns.values() {
            let n = conn.in_flight_server_requests() as u64;
            *out.entry(&*conn.info.service).or_insert(0) += n;
        }
        out
    }

    pub fn stats(&self) -> &TrackerStats {
        &self.stats
    }

    /// Consume one event, in order, reporting requests as they complete and exchanges. A
    /// data event's payload is taken (shared bytes handed on, not counted again).
    pub fn handle(&mut self, ev: &mut Event, out: &mut impl FnMut(Tracked)) {
        match ev {
            Event::ConnOpen(c) => self.open(c, out),
            Event::ConnClose(c) => {
                if let Some(mut conn) = self.conns.remove(c.conn_id) {
                    if c.after_loss {
                        // Bytes were lost before the close: what it flushes is flagged.
                        self.stats.loss_resyncs += 1;
                        conn.info.lossy = true;
                    }
                    self.end(conn, out);
                }
            }
            Event::Data(d) => {
                // A known connection with nothing to set up first (nearly every event): one
                // lookup, not two.
                let Self { conns, stats, routes, db, scratch, limits, .. } = self;
                match conns.get_mut(d.conn_id) {
                    Some(conn) if !d.syscall.is_tls() && !d.after_loss => {
                        Self::feed(conn, d, &mut Ctx { stats, routes, out, db, scratch, limits })
                    }
                    _ => self.data(d, out),
                }
            }
            Event::Exit(p) => {
                let pid = p.meta.pid;
                for (_, conn) in self.conns.drain_where(|c| c.pid == pid) {
                    self.end(conn, out);
                }
            }
            Event::Exec(_) | Event::Fork(_) | Event::Task(_) | Event::Listen(_) | Event::LogWrite(_) => {}
        }
        self.stats.active_connections = self.conns.len() as u64;
    }

    /// Data on a connection first seen now, or that needs setting up first (TLS, a loss).
    fn data(&mut self, d: &mut Data, out: &mut impl FnMut(Tracked)) {
        if self.conns.get_mut(d.conn_id).is_none() {
            // Never saw it open: it was open before we looked.
            let info = self.info(d.conn_id, &d.meta, None, true);
            let conn = Conn::new(info, d.meta.pid, d.meta.ts_ns, self.parser(true));
            self.insert(d.conn_id, conn, out);
        }
        if d.syscall.is_tls() {
            self.plaintext_from_now_on(d.conn_id);
        }
        if d.after_loss {
            self.resync_after_loss(d.conn_id, out);
        }
        let Self { conns, stats, routes, db, scratch, limits, .. } = self;
        if let Some(conn) = conns.get_mut(d.conn_id) {
            Self::feed(conn, d, &mut Ctx { stats, routes, out, db, scratch, limits });
        }
    }

    fn feed(conn: &mut Conn, d: &mut Data, ctx: &mut Ctx<'_>) {
        conn.last_ns = conn.last_ns.max(d.meta.ts_ns);
        conn.on_data(d, ctx);
    }

    /// Flush connections idle since before `now_ns - idle_timeout`.
    pub fn expire(&mut self, now_ns: u64, out: &mut impl FnMut(Tracked)) {
        let cutoff = now_ns.saturating_sub(self.idle_timeout_ns);
        for (_, conn) in self.conns.drain_where(|c| c.last_ns < cutoff) {
            self.end(conn, out);
        }
        self.stats.active_connections = self.conns.len() as u64;
        let quiet = now_ns.saturating_sub(RELEASE_AFTER_NS);
        self.conns.values_mut().filter(|c| c.last_ns < quiet).for_each(Conn::release_idle);
    }

    /// Every connection gives back what it can as if idle (tests: resting must not change
    /// what is reconstructed).
    #[cfg(test)]
    pub fn release_all_idle(&mut self) {
        self.conns.values_mut().for_each(Conn::release_idle);
    }

    /// Flush everything (end of a replay, shutdown).
    pub fn finish(&mut self, out: &mut impl FnMut(Tracked)) {
        while let Some((_, conn)) = self.conns.pop_oldest() {
            self.end(conn, out);
        }
        self.stats.active_connections = 0;
    }

    fn open(&mut self, c: &ConnEvent, out: &mut impl FnMut(Tracked)) {
        let midstream = c.how == Some(OpenHow::Existing);
        let info = self.info(c.conn_id, &c.meta, Some(c), midstream);
        if let Some(conn) = self.conns.get_mut(c.conn_id) {
            if !conn.opened {
                // Its first data overtook the open event (another CPU): keep the stream.
                conn.info = ConnInfo { tls: conn.info.tls, ..info };
                conn.opened = true;
                return;
            }
        }
        let mut conn = if c.sock_type == SOCK_STREAM {
            Conn::new(info, c.meta.pid, c.meta.ts_ns, self.parser(midstream))
        } else {
            self.stats.non_http_connections += 1;
            Conn::ignored(info, c.meta.pid, c.meta.ts_ns)
        };
        conn.opened = true;
        self.insert(c.conn_id, conn, out);
    }

    /// TLS plaintext arrives for this connection: it is HTTPS, and whatever was parsed of it
    /// before (ciphertext, when the handshake went unseen) is discarded.
    fn plaintext_from_now_on(&mut self, conn_id: u64) {
        let Some(midstream) = self.conns.get_mut(conn_id).filter(|c| !c.info.tls).map(|c| c.info.midstream) else {
            return;
        };
        let parser = self.parser(midstream);
        if let Some(conn) = self.conns.get_mut(conn_id) {
            conn.info.tls = true;
            conn.restart(parser);
        }
    }

    /// Some of this connection's bytes were lost in the kernel: what it holds may pair a
    /// request with another's response. Flush what is pending (flagged `after_loss`, no
    /// response) and start over at the next start line; its next exchange is flagged too.
    fn resync_after_loss(&mut self, conn_id: u64, out: &mut impl FnMut(Tracked)) {
        let midstream_parser = self.parser(true);
        let Self { conns, stats, routes, db, scratch, limits, .. } = self;
        let Some(conn) = conns.get_mut(conn_id) else { return };
        stats.loss_resyncs += 1;
        conn.resync_after_loss(midstream_parser, &mut Ctx { stats, routes, out, db, scratch, limits });
    }

    fn insert(&mut self, conn_id: u64, conn: Conn, out: &mut impl FnMut(Tracked)) {
        let (replaced, evicted) = self.conns.insert(conn_id, conn);
        if let Some(old) = replaced {
            self.end(old, out);
        }
        if let Some((_, old)) = evicted {
            self.stats.evicted_connections += 1;
            self.end(old, out);
        }
    }

    fn end(&mut self, mut conn: Conn, out: &mut impl FnMut(Tracked)) {
        let mut ctx = Ctx {
            stats: &mut self.stats,
            routes: &self.routes,
            out,
            db: &self.db,
            scratch: &mut self.scratch,
            limits: &self.limits,
        };
        conn.finish(&mut ctx);
    }

    fn parser(&self, midstream: bool) -> Box<Http1Parser> {
        Box::new(Http1Parser::new(self.limits.clone(), midstream))
    }

    fn info(&self, conn_id: u64, meta: &Meta, open: Option<&ConnEvent>, midstream: bool) -> ConnInfo {
        let configured = meta.service.and_then(|i| usize::try_from(i).ok()).and_then(|i| self.service_names.get(i));
        let service = match (configured, open) {
            (Some(name), _) => name.clone(),
            (None, Some(c)) if !c.comm.is_empty() => Arc::from(c.comm.as_str()),
            _ => self.unknown.clone(),
        };
        let (local, peer) = (open.and_then(|c| c.local), open.and_then(|c| c.peer));
        let opened_ctx = open.map_or(0, |c| c.task_ctx);
        ConnInfo { conn_id, service, local, peer, midstream, tls: false, lossy: false, opened_ctx }
    }
}
