//! The PostgreSQL frontend/backend protocol (v3), seen from the client: startup (user and
//! database; password messages are skipped unread), simple query, extended query
//! (Parse/Bind/Execute/Sync with named and unnamed statements and portals, pipelined),
//! CommandComplete row counts, ErrorResponse SQLSTATE, COPY (counted), SSLRequest.
//!
//! Bounded: statements and portals remembered (512 each), operations in flight (1024),
//! bytes buffered per message (64 KiB; the rest of a longer message is skipped by count).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::events::Direction;
use crate::http::Segment;

use super::stream::{SegMeta, Stream};
use super::{DbOp, DbSystem, OpEvent, sql};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u32 = 196_608;
/// Bytes of one message read at most; the rest is skipped.
const MAX_MESSAGE: usize = 64 * 1024;
const MAX_STATEMENTS: usize = 512;
const MAX_PENDING: usize = 1024;

/// Does a client's first message look like PostgreSQL's (startup, SSL or GSS request)?
pub fn detect(first: &[u8]) -> bool {
    let (Some(len), Some(code)) = (be32(first, 0), be32(first, 4)) else { return false };
    match code {
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => len == 8 || len == 16,
        PROTOCOL_3 => (9..=10_000).contains(&len),
        _ => false,
    }
}

/// Frontend message types a client sends in the middle of a session.
const FRONTEND_TAGS: &[u8] = b"QPBEDSHCXFd";

/// Does a client's first captured bytes look like a PostgreSQL session joined midway (a
/// connection opened before the agent looked): one whole frontend message of a plausible
/// shape, followed by nothing or by another message's type.
pub fn detect_midstream(first: &[u8]) -> bool {
    let (Some(&tag), Some(len)) = (first.first(), be32(first, 1)) else { return false };
    if !FRONTEND_TAGS.contains(&tag) || !(4..=1 << 24).contains(&len) {
        return false;
    }
    let end = len as usize + 1;
    let Some(body) = first.get(5..end) else { return false };
    let shape = match tag {
        b'S' | b'H' | b'X' => body.is_empty(),
        b'Q' => body.last() == Some(&0) && std::str::from_utf8(&body[..body.len() - 1]).is_ok(),
        b'P' | b'B' | b'E' | b'D' | b'C' => body.contains(&0),
        _ => true,
    };
    shape && first.get(end).is_none_or(|next| FRONTEND_TAGS.contains(next))
}

impl PgParser {
    /// A parser for a session whose startup went unseen.
    pub fn midstream() -> PgParser {
        PgParser { phase: Phase::Normal, ..PgParser::default() }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the startup message (or an SSL/GSS request).
    Startup,
    /// An SSL or GSS request was sent: the server answers one unframed byte.
    EncryptionAnswer,
    Normal,
    /// Encrypted, cancelled, or lost: nothing more is read.
    Done,
}

/// A statement as it may leave the agent.
#[derive(Debug)]
struct Stmt {
    text: String,
    operation: Option<String>,
    collection: Option<String>,
}

impl Stmt {
    fn new(raw: &str) -> Arc<Stmt> {
        let (operation, collection) = sql::operation_and_collection(raw);
        Arc::new(Stmt { text: sql::sanitize(raw), operation, collection })
    }
}

#[derive(Debug)]
struct Op {
    stmt: Option<Arc<Stmt>>,
    start: SegMeta,
    sent_ns: u64,
    rows: Option<u64>,
    /// DataRows received (a SELECT run with a row limit ends in PortalSuspended, no count).
    data_rows: u64,
    code: Option<String>,
    first_reply_ns: Option<u64>,
    reply: Option<SegMeta>,
    /// A simple query: it ends at ReadyForQuery (a string may hold several statements).
    simple: bool,
}

#[derive(Debug)]
enum Pending {
    Op(Op),
    /// A Sync: ReadyForQuery answers it. The batch's last Parse names a statement that failed
    /// to prepare when an error comes before any Execute.
    Sync {
        last_parse: Option<Arc<Stmt>>,
        start: SegMeta,
        sent_ns: u64,
    },
}

/// Bounded map that forgets its oldest entry when full.
struct Bounded<V> {
    map: HashMap<String, V>,
    order: VecDeque<String>,
}

impl<V> Default for Bounded<V> {
    fn default() -> Self {
        Bounded { map: HashMap::new(), order: VecDeque::new() }
    }
}

impl<V> Bounded<V> {
    fn insert(&mut self, k: String, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
            while self.map.len() > MAX_STATEMENTS {
                let Some(old) = self.order.pop_front() else { break };
                self.map.remove(&old);
            }
        }
    }
    fn remove(&mut self, k: &str) {
        if self.map.remove(k).is_some() {
            self.order.retain(|o| o != k);
        }
    }
    fn get(&self, k: &str) -> Option<&V> {
        self.map.get(k)
    }
}

pub struct PgParser {
    fe: Stream,
    be: Stream,
    phase: Phase,
    pub user: Option<String>,
    pub database: Option<String>,
    statements: Bounded<Arc<Stmt>>,
    portals: Bounded<Option<Arc<Stmt>>>,
    pending: VecDeque<Pending>,
    /// The first frontend message of the operation being sent.
    batch_start: Option<SegMeta>,
    last_parse: Option<Arc<Stmt>>,
    /// COPY data messages seen (counted, never stored).
    pub copy_messages: u64,
    /// Operations dropped (queue full).
    pub dropped: u64,
}

impl Default for PgParser {
    fn default() -> Self {
        PgParser {
            fe: Stream::default(),
            be: Stream::default(),
            phase: Phase::Startup,
            user: None,
            database: None,
            statements: Bounded::default(),
            portals: Bounded::default(),
            pending: VecDeque::new(),
            batch_start: None,
            last_parse: None,
            copy_messages: 0,
            dropped: 0,
        }
    }
}

/// A NUL-terminated string at the front of `b`, and what follows it.
fn cstr(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((std::str::from_utf8(&b[..end]).ok()?, &b[end + 1..]))
}

impl PgParser {
    /// The frontend is the traced process's egress (it is the client).
    pub fn parse(&mut self, dir: Direction, seg: Segment, out: &mut Vec<OpEvent>) {
        if self.phase == Phase::Done {
            return;
        }
        match dir {
            Direction::Egress => {
                self.fe.push(&seg);
                self.frontend(out);
            }
            Direction::Ingress => {
                self.be.push(&seg);
                self.backend(out);
            }
        }
        if self.fe.broken || self.be.broken {
            self.phase = Phase::Done;
        }
    }

    /// The connection ended: what is still pending got no answer.
    pub fn finish(&mut self, out: &mut Vec<OpEvent>) {
        while let Some(p) = self.pending.pop_front() {
            if let Pending::Op(op) = p {
                out.push(OpEvent::Done(Box::new(self.done(op, false))));
            }
        }
        self.phase = Phase::Done;
    }

    fn frontend(&mut self, out: &mut Vec<OpEvent>) {
        loop {
            match self.phase {
                Phase::Startup => {
                    let Some(len) = be32(&self.fe.buf, 0) else { return };
                    let Some(code) = be32(&self.fe.buf, 4) else { return };
                    let len = len as usize;
                    if len < 8 {
                        self.phase = Phase::Done;
                        return;
                    }
                    let have = self.fe.buf.len().min(len).min(MAX_MESSAGE);
                    if have < len.min(MAX_MESSAGE) {
                        return;
                    }
                    match code {
                        SSL_REQUEST | GSSENC_REQUEST => self.phase = Phase::EncryptionAnswer,
                        PROTOCOL_3 => {
                            self.startup_params(8, have);
                            self.phase = Phase::Normal;
                        }
                        _ => {
                            self.phase = Phase::Done;
                            return;
                        }
                    }
                    self.fe.consume(have, (len - have) as u64);
                }
                Phase::Normal => {
                    if !self.frontend_message(out) {
                        return;
                    }
                }
                Phase::EncryptionAnswer | Phase::Done => return,
            }
        }
    }

    fn startup_params(&mut self, from: usize, to: usize) {
        let mut rest = self.fe.buf.get(from..to).unwrap_or_default();
        for _ in 0..64 {
            let Some((k, r)) = cstr(rest) else { break };
            if k.is_empty() {
                break;
            }
            let Some((v, r)) = cstr(r) else { break };
            match k {
                "user" => self.user = Some(v.to_owned()),
                "database" => self.database = Some(v.to_owned()),
                _ => {}
            }
            rest = r;
        }
        if self.database.is_none() {
            self.database = self.user.clone();
        }
    }

    /// One framed frontend message, if complete; false when more bytes are needed.
    fn frontend_message(&mut self, out: &mut Vec<OpEvent>) -> bool {
        let Some(&tag) = self.fe.buf.first() else { return false };
        let Some(len) = be32(&self.fe.buf, 1) else { return false };
        if len < 4 {
            self.phase = Phase::Done;
            return false;
        }
        let total = len as usize + 1;
        if tag == b'p' {
            // Password, SASL or GSS response: never read.
            let have = self.fe.buf.len().min(total);
            self.fe.consume(have, (total - have) as u64);
            return true;
        }
        let want = total.min(MAX_MESSAGE);
        if self.fe.buf.len() < want {
            return false;
        }
        let meta = self.fe.head;
        let body = self.fe.buf[5..want].to_vec();
        self.fe.consume(want, (total - want) as u64);
        let start = *self.batch_start.get_or_insert(meta);
        match tag {
            b'Q' => {
                let stmt =
                    cstr(&body).map(|(q, _)| Stmt::new(q)).or_else(|| Some(Stmt::new(&String::from_utf8_lossy(&body))));
                self.push_op(Op::new(stmt, start, meta.end_ns, true), out);
                self.batch_start = None;
            }
            b'P' => {
                if let Some((name, rest)) = cstr(&body) {
                    let text = cstr(rest)
                        .map(|(q, _)| q.to_owned())
                        .unwrap_or_else(|| String::from_utf8_lossy(rest).into_owned());
                    let stmt = Stmt::new(&text);
                    self.last_parse = Some(stmt.clone());
                    self.statements.insert(name.to_owned(), stmt);
                }
            }
            b'B' => {
                if let Some((portal, rest)) = cstr(&body) {
                    let stmt = cstr(rest).and_then(|(s, _)| self.statements.get(s).cloned());
                    self.portals.insert(portal.to_owned(), stmt);
                }
            }
            b'E' => {
                let stmt = cstr(&body).and_then(|(p, _)| self.portals.get(p).cloned().flatten());
                self.push_op(Op::new(stmt, start, meta.end_ns, false), out);
                self.batch_start = None;
            }
            b'S' => {
                let last_parse = self.last_parse.take();
                self.push_pending(Pending::Sync { last_parse, start, sent_ns: meta.end_ns });
                self.batch_start = None;
            }
            b'C' => {
                // Close: S(tatement) or P(ortal) name.
                if let Some((&kind, rest)) = body.split_first() {
                    if let Some((name, _)) = cstr(rest) {
                        if kind == b'S' {
                            self.statements.remove(name);
                        } else {
                            self.portals.remove(name);
                        }
                    }
                }
            }
            b'd' | b'c' | b'f' => self.copy_messages += 1,
            b'X' => self.batch_start = None,
            _ => {}
        }
        true
    }

    fn push_op(&mut self, op: Op, out: &mut Vec<OpEvent>) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        out.push(OpEvent::Start(op.start));
        self.pending.push_back(Pending::Op(op));
    }

    fn push_pending(&mut self, p: Pending) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        self.pending.push_back(p);
    }

    fn backend(&mut self, out: &mut Vec<OpEvent>) {
        loop {
            if self.phase == Phase::EncryptionAnswer {
                let Some(&b) = self.be.buf.first() else { return };
                self.be.consume(1, 0);
                if b == b'N' {
                    self.phase = Phase::Startup;
                    self.frontend(out);
                } else {
                    // Encrypted from here: the TLS probes give the plaintext as a new stream.
                    self.phase = Phase::Done;
                    return;
                }
                continue;
            }
            let Some(&tag) = self.be.buf.first() else { return };
            let Some(len) = be32(&self.be.buf, 1) else { return };
            if len < 4 {
                self.phase = Phase::Done;
                return;
            }
            let total = len as usize + 1;
            // Data rows are only counted: their values are never read.
            let want = if tag == b'D' || tag == b'd' { 5 } else { total.min(MAX_MESSAGE) };
            if self.be.buf.len() < want {
                return;
            }
            let meta = self.be.head;
            let body = self.be.buf[5..want].to_vec();
            let have = self.be.buf.len().min(total);
            self.be.consume(have, (total - have) as u64);
            self.backend_message(tag, &body, meta, out);
        }
    }

    fn backend_message(&mut self, tag: u8, body: &[u8], meta: SegMeta, out: &mut Vec<OpEvent>) {
        if let Some(Pending::Op(op)) = self.pending.front_mut() {
            op.first_reply_ns.get_or_insert(meta.start_ns);
            op.reply = Some(meta);
        }
        match tag {
            b'C' => {
                let rows = cstr(body).and_then(|(t, _)| t.rsplit(' ').next()?.parse::<u64>().ok());
                if let Some(Pending::Op(op)) = self.pending.front_mut() {
                    op.rows = match (op.rows, rows) {
                        (Some(a), Some(b)) if op.simple => Some(a + b),
                        (a, b) => b.or(a),
                    };
                    if !op.simple {
                        self.complete_front(true, out);
                    }
                }
            }
            b'I' | b's' => {
                if matches!(self.pending.front(), Some(Pending::Op(op)) if !op.simple) {
                    self.complete_front(true, out);
                }
            }
            b'E' => {
                let code = error_code(body);
                match self.pending.front_mut() {
                    Some(Pending::Op(op)) => {
                        op.code = code;
                        if !op.simple {
                            self.complete_front(true, out);
                        }
                    }
                    Some(Pending::Sync { last_parse, start, sent_ns }) => {
                        // Failed before any Execute (a Parse that did not prepare).
                        let mut op = Op::new(last_parse.take(), *start, *sent_ns, false);
                        op.code = code;
                        op.first_reply_ns = Some(meta.start_ns);
                        op.reply = Some(meta);
                        out.push(OpEvent::Start(op.start));
                        out.push(OpEvent::Done(Box::new(self.done(op, true))));
                    }
                    None => {}
                }
            }
            b'Z' => {
                while let Some(p) = self.pending.pop_front() {
                    match p {
                        Pending::Op(op) if op.simple => {
                            out.push(OpEvent::Done(Box::new(self.done(op, true))));
                            break;
                        }
                        // Skipped by the server after an earlier error in its batch.
                        Pending::Op(op) => out.push(OpEvent::Done(Box::new(self.done(op, false)))),
                        Pending::Sync { .. } => break,
                    }
                }
            }
            b'D' => {
                if let Some(Pending::Op(op)) = self.pending.front_mut() {
                    op.data_rows += 1;
                }
            }
            b'd' | b'G' | b'H' | b'W' => self.copy_messages += 1,
            _ => {}
        }
    }

    fn complete_front(&mut self, answered: bool, out: &mut Vec<OpEvent>) {
        if let Some(Pending::Op(op)) = self.pending.pop_front() {
            out.push(OpEvent::Done(Box::new(self.done(op, answered))));
        }
    }

    fn done(&self, op: Op, answered: bool) -> DbOp {
        let stmt = op.stmt.as_deref();
        let reply = op.reply.filter(|_| answered);
        DbOp {
            system: DbSystem::Postgresql,
            operation: stmt.and_then(|s| s.operation.clone()),
            collection: stmt.and_then(|s| s.collection.clone()),
            namespace: self.database.clone(),
            query_text: stmt.map(|s| s.text.clone()),
            status_code: op.code,
            rows: op.rows.or((op.data_rows > 0).then_some(op.data_rows)).filter(|_| answered),
            start: op.start,
            sent_ns: op.sent_ns,
            reply,
            first_reply_ns: op.first_reply_ns.filter(|_| answered),
        }
    }
}

impl Op {
    fn new(stmt: Option<Arc<Stmt>>, start: SegMeta, sent_ns: u64, simple: bool) -> Op {
        Op { stmt, start, sent_ns, rows: None, data_rows: 0, code: None, first_reply_ns: None, reply: None, simple }
    }
}

/// The SQLSTATE (`C` field) of an ErrorResponse; the message is not kept (it can quote values).
fn error_code(body: &[u8]) -> Option<String> {
    let mut rest = body;
    for _ in 0..32 {
        let (&field, r) = rest.split_first()?;
        if field == 0 {
            return None;
        }
        let (value, r) = cstr(r)?;
        if field == b'C' && value.len() == 5 && value.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return Some(value.to_owned());
        }
        rest = r;
    }
    None
}
