//! Database client operations (PostgreSQL, Redis) from the bytes of connections the HTTP
//! detector turned down: `detect` names the protocol from the client's first bytes, the
//! protocol's parser (`postgres`, `redis`) turns both directions into operations, and
//! `DbConn` hands each one to the correlation stage like an outbound HTTP call (announced
//! when sent, reported when answered), so an operation gets the request its thread or task
//! serves as parent. Operations then leave as a JSON line (`"kind":"operation"`), a CLIENT
//! span with the OTel database attributes (`span`) and a duration histogram (`metrics`).
//!
//! No value leaves the agent: SQL literals become `?` (`sql`), Redis arguments are dropped,
//! error messages are not kept (only SQLSTATE / the Redis error prefix), password messages
//! are skipped unread.

pub mod metrics;
pub mod postgres;
pub mod redis;
pub mod span;
pub mod sql;
mod stream;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use serde_json::{Value, json};

use crate::events::Direction;
use crate::http::{
    ConnInfo, Exchange, HttpMessage, Kind, RequestSeen, Role, RouteNormalizer, Segment, Tracked, WallClock,
};

pub use metrics::DbMetrics;
pub use stream::SegMeta;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DbSystem {
    Postgresql,
    Redis,
}

impl DbSystem {
    /// `db.system.name` per the OTel conventions.
    pub fn as_str(self) -> &'static str {
        match self {
            DbSystem::Postgresql => "postgresql",
            DbSystem::Redis => "redis",
        }
    }
}

/// One database operation (a statement executed, a command answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbOp {
    pub system: DbSystem,
    /// `SELECT`, `INSERT`, `GET`, ...
    pub operation: Option<String>,
    /// The table a statement names first.
    pub collection: Option<String>,
    /// The database (PostgreSQL startup's `database`).
    pub namespace: Option<String>,
    /// Sanitised: literals replaced by `?`, Redis arguments by `?`.
    pub query_text: Option<String>,
    /// SQLSTATE of an ErrorResponse, or a Redis error's prefix (`ERR`, `WRONGTYPE`).
    pub status_code: Option<String>,
    /// Rows the CommandComplete tag counts.
    pub rows: Option<u64>,
    /// The first message of the operation (a Bind, a Query, a command).
    pub start: SegMeta,
    /// When its last request byte was sent.
    pub sent_ns: u64,
    /// The segment carrying the reply's end; `None` without an answer.
    pub reply: Option<SegMeta>,
    pub first_reply_ns: Option<u64>,
}

impl DbOp {
    /// `SELECT audit_logs`, `INSERT`, `GET`; the system's name when nothing better is known.
    pub fn span_name(&self) -> String {
        match (&self.operation, &self.collection) {
            (Some(op), Some(c)) => format!("{op} {c}"),
            (Some(op), None) => op.clone(),
            _ => self.system.as_str().to_owned(),
        }
    }

    /// Low-cardinality reason it failed: its status code, or no answer.
    pub fn error_type(&self) -> Option<String> {
        match (&self.status_code, &self.reply) {
            (Some(code), _) => Some(code.clone()),
            (None, None) => Some("no_response".to_owned()),
            (None, Some(_)) => None,
        }
    }
}

/// What a protocol parser reports, in order: an operation was sent (`Start`), and
/// operations completed (`Done`), first sent first done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpEvent {
    Start(SegMeta),
    Done(Box<DbOp>),
}

/// How operations are described.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbOptions {
    /// Keep Redis keys (a command's first argument, at most 64 bytes) in `db.query.text`;
    /// values are never kept.
    pub redis_keys: bool,
}

/// The protocol a connection turned out to carry, from the traced process's first bytes.
pub fn detect(held: &[(Direction, Segment)], opts: &DbOptions) -> Option<DbConn> {
    let (dir, first) = held.iter().find_map(|(d, s)| match &s.kind {
        crate::http::SegKind::Bytes(b) if !b.is_empty() => Some((*d, b)),
        _ => None,
    })?;
    // The traced process must be the client: it speaks first.
    if dir != Direction::Egress {
        return None;
    }
    let parser = if postgres::detect(first) {
        Parser::Postgres(Box::default())
    } else if postgres::detect_midstream(first) {
        Parser::Postgres(Box::new(postgres::PgParser::midstream()))
    } else if redis::detect(first) {
        Parser::Redis(Box::new(redis::RedisParser::new(opts.redis_keys)))
    } else {
        return None;
    };
    Some(DbConn { parser, next_seq: 0, seqs: VecDeque::new(), scratch: Vec::new() })
}

enum Parser {
    Postgres(Box<postgres::PgParser>),
    Redis(Box<redis::RedisParser>),
}

/// One database connection: its parser, and the operations announced and not yet reported.
pub struct DbConn {
    parser: Parser,
    next_seq: u64,
    seqs: VecDeque<u64>,
    scratch: Vec<OpEvent>,
}

impl DbConn {
    pub fn system(&self) -> DbSystem {
        match self.parser {
            Parser::Postgres(_) => DbSystem::Postgresql,
            Parser::Redis(_) => DbSystem::Redis,
        }
    }

    pub fn feed(
        &mut self,
        dir: Direction,
        seg: Segment,
        info: &ConnInfo,
        routes: &RouteNormalizer,
        out: &mut dyn FnMut(Tracked),
    ) {
        let mut events = std::mem::take(&mut self.scratch);
        match &mut self.parser {
            Parser::Postgres(p) => p.parse(dir, seg, &mut events),
            Parser::Redis(p) => p.parse(dir, seg, &mut events),
        }
        self.report(&mut events, info, routes, out);
        self.scratch = events;
    }

    pub fn finish(&mut self, info: &ConnInfo, routes: &RouteNormalizer, out: &mut dyn FnMut(Tracked)) {
        let mut events = std::mem::take(&mut self.scratch);
        match &mut self.parser {
            Parser::Postgres(p) => p.finish(&mut events),
            Parser::Redis(p) => p.finish(&mut events),
        }
        self.report(&mut events, info, routes, out);
    }

    fn report(
        &mut self,
        events: &mut Vec<OpEvent>,
        info: &ConnInfo,
        routes: &RouteNormalizer,
        out: &mut dyn FnMut(Tracked),
    ) {
        for ev in events.drain(..) {
            match ev {
                OpEvent::Start(m) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.seqs.push_back(seq);
                    out(Tracked::Request(RequestSeen {
                        conn_id: info.conn_id,
                        seq,
                        role: Role::Client,
                        pid: m.pid,
                        tid: m.tid,
                        local: info.local,
                        peer: info.peer,
                        start_ns: m.start_ns,
                        carried: Default::default(),
                        task_ctx: info.request_ctx(m.task_ctx, seq),
                        shape: 0,
                    }));
                }
                OpEvent::Done(op) => {
                    let Some(seq) = self.seqs.pop_front() else { continue };
                    out(Tracked::Exchange(Box::new(exchange(op, seq, info, routes))));
                }
            }
        }
    }
}

/// The operation as the record the correlation stage and the outputs take.
fn exchange(op: Box<DbOp>, seq: u64, info: &ConnInfo, routes: &RouteNormalizer) -> Exchange {
    let req = HttpMessage {
        kind: Kind::Request,
        method: Some(op.operation.clone().unwrap_or_else(|| op.system.as_str().to_owned()).into()),
        target: Some(String::new()),
        pid: op.start.pid,
        tid: op.start.tid,
        start_ns: op.start.start_ns,
        end_ns: op.sent_ns.max(op.start.start_ns),
        task_ctx: op.start.task_ctx,
        ..HttpMessage::default()
    };
    let resp = op.reply.map(|r| HttpMessage {
        kind: Kind::Response,
        pid: r.pid,
        tid: r.tid,
        start_ns: op.first_reply_ns.unwrap_or(r.start_ns),
        end_ns: r.end_ns,
        task_ctx: r.task_ctx,
        ..HttpMessage::default()
    });
    let mut ex = Exchange::build(info, Role::Client, seq, Box::new(req), resp.map(Box::new), routes);
    ex.route = "".into();
    ex.db = Some(op);
    ex
}

/// The JSON line of an operation (`"kind":"operation"`): where, when, what (sanitised), how
/// it ended, and its place in the trace.
pub fn json_line(ex: &Exchange, op: &DbOp, clock: &WallClock) -> String {
    let addr = |a: Option<std::net::SocketAddr>| a.map_or(Value::Null, |a| Value::from(a.to_string()));
    let ms = |ns: Option<u64>| ns.map_or(Value::Null, |ns| Value::from((ns / 1_000) as f64 / 1_000.0));
    let v = json!({
        "ts": clock.rfc3339(ex.request_first_ns),
        "kind": "operation",
        "service": &*ex.service,
        "direction": "client",
        "pid": ex.pid,
        "tid": ex.tid,
        "db_system": op.system.as_str(),
        "db_namespace": op.namespace,
        "operation": op.operation,
        "collection": op.collection,
        "query_text": op.query_text,
        "status_code": op.status_code,
        "rows": op.rows,
        "duration_ms": ms(ex.duration_ns()),
        "local": addr(ex.local),
        "peer": addr(ex.peer),
        "trace_id": ex.trace_id().map(|t| t.to_string()),
        "span_id": ex.span_id().map(|t| t.to_string()),
        "parent_span_id": ex.parent_span_id().map(|t| t.to_string()),
        "link": ex.link().map(|l| l.as_str()),
        "conn_id": ex.conn_id,
        "flags": ex.flags.names(),
        // Read as TLS plaintext from the OpenSSL probes (libpq with sslmode=require).
        "tls": ex.tls,
    });
    // serde_json keeps insertion order only with `preserve_order`; the keys are fixed either way.
    v.to_string()
}
