//! Redis RESP2 and RESP3, seen from the client: each command (a top-level array of bulk
//! strings, or an inline line) is paired with the next top-level reply, pipelines in order.
//! Only the command name is kept (and the argument count); keys and values are never read
//! beyond the first 64 bytes of the first two arguments, and only the name leaves the parser.
//! Pub/sub (SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE), MONITOR and RESP3 pushes are counted, not
//! paired. Streaming: bulk payloads are skipped by count, so uncaptured bytes inside them
//! keep the framing.

use std::collections::VecDeque;

use crate::events::Direction;
use crate::http::{SegKind, Segment};

use super::stream::{SegMeta, Stream};
use super::{DbOp, DbSystem, OpEvent};

/// Longest line (type byte to CRLF) before the stream is given up.
const MAX_LINE: usize = 64 * 1024;
const MAX_DEPTH: usize = 32;
const MAX_PENDING: usize = 1024;
/// Bytes kept of a captured argument (the command name, an error's prefix).
const CAPTURE: usize = 64;

/// Does a client's first bytes look like a RESP command (`*N\r\n$`)?
pub fn detect(first: &[u8]) -> bool {
    let Some(rest) = first.strip_prefix(b"*") else { return false };
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let after = &rest[digits..];
    (1..=6).contains(&digits) && after.starts_with(b"\r\n") && after.get(2).is_none_or(|&c| c == b'$')
}

/// A complete top-level value.
#[derive(Debug, Default)]
struct Value {
    kind: u8,
    /// First bulk strings of a top-level array (command name, first argument).
    captures: Vec<Vec<u8>>,
    items: u64,
    start: SegMeta,
    end: SegMeta,
}

/// One direction's RESP tokenizer.
#[derive(Default)]
struct Side {
    s: Stream,
    /// Children still expected by each open aggregate.
    stack: Vec<u64>,
    /// Payload bytes (CRLF included) of the blob being read.
    blob_left: u64,
    /// A blob is being read (or skipped): its end completes an element.
    blob_open: bool,
    capturing: bool,
    cur: Value,
    started: bool,
    client: bool,
}

impl Side {
    fn push(&mut self, seg: &Segment) {
        if let SegKind::Gap(n) = seg.kind {
            if self.s.buf.is_empty() && self.blob_left >= n {
                self.blob_left -= n;
                self.s.last = SegMeta::of(seg);
                return;
            }
        }
        self.s.push(seg);
    }

    /// The next complete top-level value, if the buffer holds its end.
    fn next(&mut self) -> Option<Value> {
        loop {
            if self.s.broken {
                return None;
            }
            if !self.started {
                if self.s.buf.is_empty() {
                    return None;
                }
                self.cur = Value { start: self.s.head, ..Value::default() };
                self.started = true;
            }
            if self.blob_left > 0 {
                let n = usize::try_from(self.blob_left).unwrap_or(usize::MAX).min(self.s.buf.len());
                if n == 0 {
                    return None;
                }
                if self.capturing {
                    let payload = n.min(usize::try_from(self.blob_left.saturating_sub(2)).unwrap_or(usize::MAX));
                    if let Some(c) = self.cur.captures.last_mut() {
                        let room = CAPTURE.saturating_sub(c.len()).min(payload);
                        c.extend_from_slice(&self.s.buf[..room]);
                    }
                }
                self.s.consume(n, 0);
                self.blob_left -= n as u64;
                if self.blob_left > 0 {
                    return None;
                }
            }
            if self.blob_open {
                // The blob ended (read, or skipped as uncaptured bytes).
                self.blob_open = false;
                self.capturing = false;
                if let Some(v) = self.element_done() {
                    return Some(v);
                }
                continue;
            }
            let Some(eol) = self.s.buf.windows(2).position(|w| w == b"\r\n") else {
                if self.s.buf.len() > MAX_LINE {
                    self.s.broken = true;
                }
                return None;
            };
            let line = self.s.buf[..eol].to_vec();
            self.s.consume(eol + 2, 0);
            let Some((&t, rest)) = line.split_first() else {
                if self.stack.is_empty() {
                    // An empty inline line.
                    self.started = false;
                    continue;
                }
                self.s.broken = true;
                return None;
            };
            let top = self.stack.is_empty();
            if top {
                self.cur.kind = t;
            }
            let num = || std::str::from_utf8(rest).ok().and_then(|s| s.trim().parse::<i64>().ok());
            match t {
                b'+' | b':' | b'_' | b',' | b'#' | b'(' => {}
                b'-' => {
                    if top {
                        self.cur.captures.push(rest.iter().take(CAPTURE).copied().collect());
                    }
                }
                b'$' | b'=' | b'!' => match num() {
                    Some(n) if n >= 0 => {
                        self.blob_left = n as u64 + 2;
                        self.blob_open = true;
                        let in_array = self.stack.len() == 1 && self.cur.kind == b'*';
                        self.capturing = (in_array && self.cur.captures.len() < 2) || (top && t == b'!');
                        if self.capturing {
                            self.cur.captures.push(Vec::new());
                        }
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        self.s.broken = true;
                        return None;
                    }
                },
                b'*' | b'~' | b'>' | b'%' | b'|' => match num() {
                    Some(n) if n > 0 => {
                        let n = if matches!(t, b'%' | b'|') { 2 * n as u64 } else { n as u64 };
                        if top {
                            self.cur.items = n;
                        }
                        if self.stack.len() >= MAX_DEPTH {
                            self.s.broken = true;
                            return None;
                        }
                        self.stack.push(n);
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        self.s.broken = true;
                        return None;
                    }
                },
                _ if top && self.client => {
                    // An inline command: words separated by spaces.
                    self.cur.kind = b'*';
                    self.cur.captures = line
                        .split(|c| *c == b' ')
                        .filter(|w| !w.is_empty())
                        .take(2)
                        .map(|w| w.iter().take(CAPTURE).copied().collect())
                        .collect();
                    self.cur.items = line.split(|c| *c == b' ').filter(|w| !w.is_empty()).count() as u64;
                }
                _ => {
                    self.s.broken = true;
                    return None;
                }
            }
            if let Some(v) = self.element_done() {
                return Some(v);
            }
        }
    }

    /// An element ended: close the aggregates it completes; the top-level value if it did.
    fn element_done(&mut self) -> Option<Value> {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return None;
            }
            self.stack.pop();
        }
        self.started = false;
        let mut v = std::mem::take(&mut self.cur);
        v.end = self.s.last;
        Some(v)
    }
}

#[derive(Debug)]
struct Cmd {
    name: String,
    /// The first argument, kept only when keys are asked for.
    key: Option<String>,
    args: u64,
    start: SegMeta,
    sent_ns: u64,
}

pub struct RedisParser {
    fe: Side,
    be: Side,
    pending: VecDeque<Cmd>,
    /// Subscribed or monitoring: replies are not paired from the moment nothing is pending.
    unpaired_mode: bool,
    /// Pub/sub and MONITOR messages and RESP3 pushes seen (counted, not paired).
    pub unpaired_messages: u64,
    pub dropped: u64,
    pub broken: bool,
    /// Keep each command's first argument (its key) in the query text.
    pub keep_keys: bool,
}

impl Default for RedisParser {
    fn default() -> Self {
        RedisParser {
            fe: Side { client: true, ..Side::default() },
            be: Side::default(),
            pending: VecDeque::new(),
            unpaired_mode: false,
            unpaired_messages: 0,
            dropped: 0,
            broken: false,
            keep_keys: false,
        }
    }
}

impl RedisParser {
    /// `keep_keys`: keep each command's first argument in the query text.
    pub fn new(keep_keys: bool) -> RedisParser {
        RedisParser { keep_keys, ..RedisParser::default() }
    }

    pub fn parse(&mut self, dir: Direction, seg: Segment, out: &mut Vec<OpEvent>) {
        if self.broken {
            return;
        }
        match dir {
            Direction::Egress => {
                self.fe.push(&seg);
                while let Some(v) = self.fe.next() {
                    self.command(v, out);
                }
            }
            Direction::Ingress => {
                self.be.push(&seg);
                while let Some(v) = self.be.next() {
                    self.reply(v, out);
                }
            }
        }
        if self.fe.s.broken || self.be.s.broken {
            self.broken = true;
        }
    }

    pub fn finish(&mut self, out: &mut Vec<OpEvent>) {
        while let Some(c) = self.pending.pop_front() {
            out.push(OpEvent::Done(Box::new(done(c, None, None))));
        }
        self.broken = true;
    }

    fn command(&mut self, v: Value, out: &mut Vec<OpEvent>) {
        let name = v.captures.first().map(|c| String::from_utf8_lossy(c).to_ascii_uppercase()).unwrap_or_default();
        if matches!(name.as_str(), "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR") {
            self.unpaired_mode = true;
        }
        if self.unpaired_mode
            || name.is_empty()
            || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
        {
            self.unpaired_messages += 1;
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        out.push(OpEvent::Start(v.start));
        let key = v.captures.get(1).filter(|_| self.keep_keys).map(|k| String::from_utf8_lossy(k).into_owned());
        self.pending.push_back(Cmd {
            name,
            key,
            args: v.items.saturating_sub(1),
            start: v.start,
            sent_ns: v.end.end_ns,
        });
    }

    fn reply(&mut self, v: Value, out: &mut Vec<OpEvent>) {
        // RESP3 attributes precede their reply; pushes are out of band.
        if v.kind == b'|' {
            return;
        }
        if v.kind == b'>' {
            self.unpaired_messages += 1;
            return;
        }
        let Some(cmd) = self.pending.pop_front() else {
            self.unpaired_messages += 1;
            return;
        };
        let error = matches!(v.kind, b'-' | b'!').then(|| {
            let text = v.captures.first().map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default();
            let prefix: String = text.split(' ').next().unwrap_or("").chars().take(32).collect();
            if !prefix.is_empty() && prefix.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
                prefix
            } else {
                "ERR".to_owned()
            }
        });
        out.push(OpEvent::Done(Box::new(done(cmd, Some(&v), error))));
    }
}

fn done(cmd: Cmd, reply: Option<&Value>, error: Option<String>) -> DbOp {
    let mut text = cmd.name.clone();
    let mut placeholders = cmd.args;
    if let Some(key) = &cmd.key {
        text.push(' ');
        text.push_str(key);
        placeholders = placeholders.saturating_sub(1);
    }
    for _ in 0..placeholders.min(8) {
        text.push_str(" ?");
    }
    if placeholders > 8 {
        text.push_str(" ...");
    }
    DbOp {
        system: DbSystem::Redis,
        operation: Some(cmd.name),
        collection: None,
        namespace: None,
        query_text: Some(text),
        status_code: error,
        rows: None,
        start: cmd.start,
        sent_ns: cmd.sent_ns,
        reply: reply.map(|r| r.end),
        first_reply_ns: reply.map(|r| r.start.start_ns),
    }
}
