//! One direction of an HTTP/1.x connection: heads, bodies and resynchronisation, one
//! segment step at a time. Decisions that need the other direction (how a response is
//! framed, whether a message may start) are the connection's (`h1::Http1Parser`).

use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::http::headers::HeaderSelection;
use crate::http::parser::{HttpMessage, Kind, ParseErrorKind, SegKind, Segment};

use super::body::{Body, BodyFraming};
use super::head::{
    Framing, HeadError, Start, StartFacts, bad_start, check_start, find_blank_line, overlong_start, parse_head,
    parse_start,
};
use super::resync::{Scanner, Want};
use super::startline::Line;

/// Limits shared by every reader of a tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_buffer_bytes: usize,
    pub body_prefix_bytes: usize,
    pub headers: Arc<HeaderSelection>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 64 * 1024,
            max_buffer_bytes: 256 * 1024,
            body_prefix_bytes: 4096,
            headers: Arc::default(),
        }
    }
}

/// What a step produced. Small on purpose: a message stays in the reader until the
/// connection takes it ([`Reader::take_message`]), so no step moves one around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaderEvent {
    /// A head is complete; the connection must answer with `set_framing`.
    Head { start: StartFacts, framing: Framing, start_ns: u64 },
    /// The message is complete: take it.
    Complete,
    /// The message (if one had started: take it) is given up; the reader is
    /// resynchronising. `announced`: its head was reported as `Head` earlier.
    Failed { kind: ParseErrorKind, announced: bool },
    /// A start line was found again.
    Resynced(Kind),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Boundary,
    /// Accumulating a head; `line_ok` once the start line was validated.
    Head {
        buf: Vec<u8>,
        line_ok: bool,
    },
    /// Head reported, framing not set yet.
    AwaitFraming,
    Body(Body),
    Resync(Want),
    /// Upgraded or given up: consume everything.
    Stopped,
}

#[derive(Clone, Debug)]
pub struct Reader {
    /// `None` until the connection's role is known.
    kind: Option<Kind>,
    state: State,
    msg: Option<Box<HttpMessage>>,
    scanner: Scanner,
}

impl Reader {
    /// A reader at a message boundary.
    pub fn new(kind: Option<Kind>) -> Self {
        Reader { kind, state: State::Boundary, msg: None, scanner: Scanner::default() }
    }

    /// A reader that first looks for a start line (midstream join).
    pub fn resyncing(kind: Option<Kind>) -> Self {
        let want = kind.map_or(Want::Either, Want::Only);
        Reader { state: State::Resync(want), ..Reader::new(kind) }
    }

    pub fn kind(&self) -> Option<Kind> {
        self.kind
    }

    /// The role became known.
    pub fn set_kind(&mut self, kind: Kind) {
        self.kind = Some(kind);
        if let State::Resync(w) = &mut self.state {
            *w = Want::Only(kind);
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.state == State::Boundary
    }

    /// At a boundary holding nothing: the same as `Reader::new(self.kind())`.
    pub fn at_rest(&self) -> bool {
        self.state == State::Boundary && self.msg.is_none() && self.scanner.is_empty()
    }

    pub fn stop(&mut self) {
        self.state = State::Stopped;
        self.msg = None;
    }

    /// Lose the place (bytes dropped): look for the next start line.
    pub fn resync(&mut self) {
        self.msg = None;
        self.lose_place();
    }

    /// Look for the next start line, keeping the message (a failed one is still taken).
    fn lose_place(&mut self) {
        self.scanner.clear();
        self.state = State::Resync(self.kind.map_or(Want::Either, Want::Only));
    }

    /// Bytes held in a partial head (for buffer accounting).
    pub fn held_bytes(&self) -> usize {
        match &self.state {
            State::Head { buf, .. } => buf.len(),
            _ => 0,
        }
    }

    /// The message a `Complete` or `Failed` event announced.
    pub fn take_message(&mut self) -> Option<Box<HttpMessage>> {
        self.msg.take()
    }

    /// Answer to `Head`: how the body is framed. True if the message is already complete
    /// (no body): take it.
    pub fn set_framing(&mut self, framing: BodyFraming, upgraded: bool, lim: &Limits) -> bool {
        if let Some(m) = &mut self.msg {
            m.upgraded = upgraded;
        }
        // A Sentry envelope is read whole when the capture allows (`sentry`).
        // Methods are stored as `METHODS` spells them: only a POST can be one.
        let envelope = self.msg.as_ref().is_some_and(|m| {
            m.method.as_deref() == Some("POST")
                && crate::sentry::is_envelope_request("POST", m.target.as_deref().unwrap_or(""))
        });
        let prefix = if envelope {
            crate::sentry::ENVELOPE_PREFIX_BYTES.max(lim.body_prefix_bytes)
        } else {
            lim.body_prefix_bytes
        };
        let body = Body::new(framing, prefix, lim.max_head_bytes);
        if body.is_done() {
            return self.complete(body, false);
        }
        self.state = State::Body(body);
        false
    }

    /// Consume part of `seg` (never nothing unless the state changed).
    pub fn step(&mut self, seg: &mut Segment, lim: &Limits) -> Option<ReaderEvent> {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Boundary => self.at_boundary_step(seg, lim),
            State::Head { buf, line_ok } => self.head_step(seg, buf, line_ok, lim),
            State::Body(body) => self.body_step(seg, body),
            State::Resync(want) => self.resync_step(seg, want),
            State::AwaitFraming => {
                // The connection always answers a `Head` at once; be safe anyway.
                self.state = State::AwaitFraming;
                None
            }
            State::Stopped => {
                seg.consume_all();
                None
            }
        }
    }

    fn at_boundary_step(&mut self, seg: &mut Segment, lim: &Limits) -> Option<ReaderEvent> {
        self.state = State::Boundary;
        match &seg.kind {
            SegKind::Eof => {
                seg.consume_all();
                None
            }
            SegKind::Gap(n) if *n > 0 => {
                // The next head went uncaptured.
                self.msg = Some(self.new_message(seg));
                seg.consume_all();
                Some(self.fail(ParseErrorKind::LostBytesInHeaders, false))
            }
            SegKind::Gap(_) => None,
            SegKind::Bytes(_) => {
                self.msg = Some(self.new_message(seg));
                // The head starts in this segment: read it now, as the next step would.
                self.head_step(seg, Vec::new(), false, lim)
            }
        }
    }

    fn head_step(
        &mut self,
        seg: &mut Segment,
        mut buf: Vec<u8>,
        mut line_ok: bool,
        lim: &Limits,
    ) -> Option<ReaderEvent> {
        let kind = self.kind.unwrap_or_default();
        // Taken, not cloned (a clone and its drop are two atomic operations per head); what
        // follows the head is put back.
        let bytes = match &mut seg.kind {
            SegKind::Bytes(b) => std::mem::take(b),
            SegKind::Gap(_) => {
                seg.consume_all();
                self.keep_start(&buf, kind);
                return Some(self.fail(ParseErrorKind::LostBytesInHeaders, false));
            }
            SegKind::Eof => {
                // The stream ended inside a head (a slowloris client, a peer that gave up):
                // counted, and a request whose line was read is reported.
                seg.consume_all();
                if buf.is_empty() {
                    self.msg = None;
                    self.state = State::Boundary;
                    return None;
                }
                self.keep_start(&buf, kind);
                return Some(self.fail(ParseErrorKind::IncompleteHead, false));
            }
        };
        self.touch(seg);
        let old = buf.len();
        // A head that starts in this segment is read from the segment itself; bytes are
        // copied only when the head continues in a later one.
        let direct = old == 0;
        if !direct {
            buf.extend_from_slice(&bytes);
        }
        let data: &[u8] = if direct { &bytes } else { &buf };
        let end = find_blank_line(data, old.saturating_sub(2));
        // A whole head checks its start line as it is parsed: the line is checked alone
        // only while the head is incomplete, or when that parse failed on the line.
        let parsed = end
            .filter(|&e| e <= lim.max_head_bytes)
            .map(|e| parse_head(data.get(..e).unwrap_or_default(), kind, &lim.headers))
            .filter(|p| !matches!(p, Err(HeadError { start: None, .. })));
        if !line_ok && parsed.is_none() {
            match check_start(data, kind) {
                Line::Yes(()) => line_ok = true,
                Line::Partial => {}
                Line::No => {
                    seg.consume_all();
                    if let (Kind::Request, Some(start)) = (kind, overlong_start(data)) {
                        if let Some(m) = &mut self.msg {
                            apply_start(m, start);
                        }
                        return Some(self.fail(ParseErrorKind::RequestLineTooLong, false));
                    }
                    self.keep_start(data, kind);
                    return Some(self.fail(bad_start(kind), false));
                }
            }
        }
        let Some(end) = end else {
            seg.consume_all();
            if data.len() > lim.max_head_bytes {
                self.keep_start(data, kind);
                return Some(self.fail(ParseErrorKind::HeaderTooLarge, false));
            }
            let buf = if direct { bytes.to_vec() } else { buf };
            self.state = State::Head { buf, line_ok };
            return None;
        };
        let put_back = |seg: &mut Segment, mut rest: Bytes| {
            rest.advance(end.saturating_sub(old).min(rest.len()));
            seg.kind = SegKind::Bytes(rest);
        };
        if end > lim.max_head_bytes {
            self.keep_start(data, kind);
            put_back(seg, bytes);
            return Some(self.fail(ParseErrorKind::HeaderTooLarge, false));
        }
        let parsed = parsed.unwrap_or_else(|| parse_head(data.get(..end).unwrap_or_default(), kind, &lim.headers));
        put_back(seg, bytes);
        match parsed {
            Ok(head) => {
                let mut start_ns = seg.start_ns;
                let facts = head.start.facts();
                if let Some(m) = &mut self.msg {
                    apply_start(m, head.start);
                    m.headers = head.headers;
                    start_ns = m.start_ns;
                }
                self.state = State::AwaitFraming;
                Some(ReaderEvent::Head { start: facts, framing: head.framing, start_ns })
            }
            Err(e) => {
                let known = e.start.is_some();
                if let (Some(m), Some(start)) = (&mut self.msg, e.start) {
                    apply_start(m, start);
                }
                if !known {
                    self.msg = self.msg.take().filter(|_| kind == Kind::Response);
                }
                Some(self.fail(e.kind, false))
            }
        }
    }

    fn body_step(&mut self, seg: &mut Segment, mut body: Body) -> Option<ReaderEvent> {
        let result = match &seg.kind {
            SegKind::Bytes(b) => body.feed(b).map(|n| seg.advance(n)),
            SegKind::Gap(n) => body.feed_gap(*n).map(|used| {
                seg.advance(usize::try_from(used).unwrap_or(usize::MAX));
                if let Some(m) = &mut self.msg {
                    m.truncated = true;
                }
            }),
            SegKind::Eof => {
                seg.consume_all();
                let clean = body.eof();
                return self.complete(body, !clean).then_some(ReaderEvent::Complete);
            }
        };
        self.touch(seg);
        match result {
            Err(kind) => {
                if let Some(m) = &mut self.msg {
                    m.body_size = body.size;
                }
                Some(self.fail(kind, true))
            }
            Ok(()) if body.is_done() => self.complete(body, false).then_some(ReaderEvent::Complete),
            Ok(()) => {
                self.state = State::Body(body);
                None
            }
        }
    }

    fn resync_step(&mut self, seg: &mut Segment, want: Want) -> Option<ReaderEvent> {
        self.state = State::Resync(want);
        let found = match &seg.kind {
            SegKind::Bytes(b) => self.scanner.scan(b, want),
            SegKind::Gap(_) | SegKind::Eof => {
                self.scanner.clear();
                None
            }
        };
        match found {
            Some((kind, rest)) => {
                seg.kind = SegKind::Bytes(rest);
                self.state = State::Boundary;
                Some(ReaderEvent::Resynced(kind))
            }
            None => {
                seg.consume_all();
                None
            }
        }
    }

    fn new_message(&self, seg: &Segment) -> Box<HttpMessage> {
        Box::new(HttpMessage {
            kind: self.kind.unwrap_or_default(),
            pid: seg.pid,
            tid: seg.tid,
            task_ctx: seg.task_ctx,
            tcp_seq: seg.seq(),
            start_ns: seg.start_ns,
            end_ns: seg.end_ns,
            truncated: matches!(seg.kind, SegKind::Gap(_)),
            ..HttpMessage::default()
        })
    }

    fn touch(&mut self, seg: &Segment) {
        if let Some(m) = &mut self.msg {
            m.end_ns = m.end_ns.max(seg.end_ns);
        }
    }

    /// A head failed after its start line: keep what the start line says.
    fn keep_start(&mut self, buf: &[u8], kind: Kind) {
        match (parse_start(buf, kind), &mut self.msg) {
            (Line::Yes((start, _)), Some(m)) => apply_start(m, start),
            // A request is only worth reporting once its request line is known.
            _ if kind == Kind::Request => self.msg = None,
            _ => {}
        }
    }

    /// Finish the message in place; false if there is none.
    fn complete(&mut self, body: Body, truncated: bool) -> bool {
        self.state = State::Boundary;
        let Some(m) = &mut self.msg else { return false };
        m.body_size = body.size;
        m.truncated |= truncated || body.lost;
        m.body_prefix = body.prefix;
        if m.upgraded {
            self.state = State::Stopped;
        }
        true
    }

    fn fail(&mut self, kind: ParseErrorKind, announced: bool) -> ReaderEvent {
        if let Some(m) = &mut self.msg {
            m.parse_error = true;
            m.truncated = true;
        }
        self.lose_place();
        ReaderEvent::Failed { kind, announced }
    }
}

fn apply_start(m: &mut HttpMessage, start: Start) {
    match start {
        Start::Request { method, target, version } => {
            m.method = Some(method);
            m.target = Some(target);
            m.version = Some(version);
        }
        Start::Response { version, status } => {
            m.status = Some(status);
            m.version = Some(version);
        }
    }
}
