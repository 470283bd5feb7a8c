//! HTTP/1.0 and 1.1 over one connection: decides the role (which direction carries
//! requests), frames responses from the requests they answer (HEAD, CONNECT, 1xx, 101),
//! holds responses that arrive before their request, and stops at protocol switches.

mod body;
mod head;
mod queue;
mod reader;
mod resync;
mod startline;

use std::collections::VecDeque;

use crate::events::Direction;

use super::parser::{CHECK_BYTES, Check, HttpMessage, Kind, Output, ProtocolParser, Rest, SegKind, Segment};
use body::BodyFraming;
use head::{Framing, StartFacts};
use queue::SegQueue;
use reader::{Reader, ReaderEvent};
use startline::{Class, classify};

pub use reader::Limits;

/// Requests waiting for a response at most; past it the request side waits.
pub const MAX_PIPELINE: usize = 64;
/// A midstream connection that shows no start line in this many bytes is not HTTP/1.
const MAX_SCAN_WITHOUT_ROLE: u64 = 1 << 20;
/// Segments a waiting direction may hold.
const MAX_HELD_SEGMENTS: usize = 4096;

const DIRS: [Direction; 2] = [Direction::Egress, Direction::Ingress];

fn idx(d: Direction) -> usize {
    match d {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

fn other(d: Direction) -> Direction {
    match d {
        Direction::Egress => Direction::Ingress,
        Direction::Ingress => Direction::Egress,
    }
}

/// A request whose final response has not started.
#[derive(Clone, Copy, Debug)]
struct Awaiting {
    head: bool,
    connect: bool,
    upgrade: bool,
    start_ns: u64,
}

/// Whether a reader at a message boundary may start the next message.
enum Gate {
    Go,
    Hold,
    /// A stale segment was dropped; look again.
    Dropped,
}

#[derive(Clone, Debug)]
pub struct Http1Parser {
    lim: Limits,
    midstream: bool,
    requests: Option<Direction>,
    readers: [Reader; 2],
    queues: [SegQueue; 2],
    awaiting: VecDeque<Awaiting>,
    /// A CONNECT or Upgrade request waits for its response before more requests parse.
    upgrade_pending: bool,
    tunnel: bool,
    gave_up: bool,
    scanned_without_role: u64,
}

impl Http1Parser {
    /// `midstream`: the connection's first bytes may be mid-message.
    pub fn new(lim: Limits, midstream: bool) -> Self {
        let reader = || {
            if midstream { Reader::resyncing(None) } else { Reader::new(None) }
        };
        Http1Parser {
            lim,
            midstream,
            requests: None,
            readers: [reader(), reader()],
            queues: [SegQueue::default(), SegQueue::default()],
            awaiting: VecDeque::new(),
            upgrade_pending: false,
            tunnel: false,
            gave_up: false,
            scanned_without_role: 0,
        }
    }

    /// The parser that `rest` described: roles known, both readers at a message boundary,
    /// nothing queued or awaited.
    pub fn woken(lim: Limits, rest: Rest) -> Self {
        let mut p = Http1Parser::new(lim, rest.midstream);
        p.readers = [Reader::new(None), Reader::new(None)];
        p.set_role(rest.requests);
        p
    }

    fn stopped(&self) -> bool {
        self.tunnel || self.gave_up
    }

    fn pump(&mut self, out: &mut Vec<Output>) {
        loop {
            let mut progress = false;
            for d in DIRS {
                progress |= self.pump_dir(d, out);
            }
            if !progress || self.stopped() {
                break;
            }
        }
        if self.stopped() {
            self.queues.iter_mut().for_each(SegQueue::clear);
        }
    }

    /// Step `d`'s reader until it waits; true if anything happened.
    fn pump_dir(&mut self, d: Direction, out: &mut Vec<Output>) -> bool {
        let i = idx(d);
        let mut progress = false;
        loop {
            if self.stopped() {
                return progress;
            }
            if self.requests.is_none() && !self.midstream && !self.decide_role(d, out) {
                return progress;
            }
            self.queues[i].drop_spent();
            if self.queues[i].is_empty() {
                return progress;
            }
            if let Some(front) = self.queues[i].front() {
                match self.gate(d, front, out) {
                    Gate::Go => {}
                    Gate::Hold => return progress,
                    Gate::Dropped => {
                        self.queues[i].pop_front();
                        progress = true;
                        continue;
                    }
                }
            }
            let (reader, lim) = (&mut self.readers[i], &self.lim);
            let before = self.queues[i].bytes();
            let ev = self.queues[i].with_front(|seg| reader.step(seg, lim)).flatten();
            progress = true;
            if self.requests.is_none() {
                let scanned = before.saturating_sub(self.queues[i].bytes()) as u64;
                self.scanned_without_role = self.scanned_without_role.saturating_add(scanned);
                if self.scanned_without_role > MAX_SCAN_WITHOUT_ROLE {
                    self.gave_up = true;
                    out.push(Output::NotThisProtocol);
                }
            }
            if let Some(ev) = ev {
                self.on_event(d, ev, out);
            }
        }
    }

    /// `pump_dir` for a segment not queued, with the roles known and nothing queued: what
    /// `pump` does with it as the only segment held (checked in tests), less the
    /// queueing. Stops when `seg` is spent or must wait.
    fn read_now(&mut self, d: Direction, seg: &mut Segment, out: &mut Vec<Output>) {
        let i = idx(d);
        while !self.stopped() && !seg.is_spent() {
            match self.gate(d, seg, out) {
                Gate::Go => {}
                Gate::Hold => return,
                Gate::Dropped => {
                    seg.consume_all();
                    return;
                }
            }
            if let Some(ev) = self.readers[i].step(seg, &self.lim) {
                self.on_event(d, ev, out);
            }
        }
    }

    /// `parse` through the queue: any state.
    fn parse_queued(&mut self, dir: Direction, seg: Segment, out: &mut Vec<Output>) {
        self.queues[idx(dir)].push(seg);
        self.pump(out);
        if !self.stopped() {
            self.check_overflow(dir, out);
        }
    }

    /// Fresh connection: the first bytes of `d` tell which side asks. False: wait.
    fn decide_role(&mut self, d: Direction, out: &mut Vec<Output>) -> bool {
        let (head, gap_first) = self.queues[idx(d)].leading_bytes(CHECK_BYTES);
        if gap_first {
            // The opening bytes went uncaptured: treat as a midstream join.
            self.midstream = true;
            self.readers = [Reader::resyncing(None), Reader::resyncing(None)];
            return true;
        }
        match classify(&head) {
            Class::Request => self.set_role(d),
            Class::Response => self.set_role(other(d)),
            Class::NeedMore => return false,
            Class::Neither => {
                self.gave_up = true;
                out.push(Output::NotThisProtocol);
                return false;
            }
        }
        true
    }

    fn set_role(&mut self, requests: Direction) {
        self.requests = Some(requests);
        self.readers[idx(requests)].set_kind(Kind::Request);
        self.readers[idx(other(requests))].set_kind(Kind::Response);
    }

    /// May `d`'s reader go on with `front`, its next segment? A reader inside a message
    /// always may; `Dropped`: the caller drops `front`.
    fn gate(&self, d: Direction, front: &Segment, out: &mut Vec<Output>) -> Gate {
        if !self.readers[idx(d)].at_boundary() || front.kind == SegKind::Eof {
            return Gate::Go;
        }
        match self.readers[idx(d)].kind() {
            None => Gate::Go,
            Some(Kind::Request) if self.upgrade_pending || self.awaiting.len() >= MAX_PIPELINE => Gate::Hold,
            Some(Kind::Request) => Gate::Go,
            Some(Kind::Response) => {
                let Some(next) = self.awaiting.front() else {
                    // A response before its request (events reordered across CPUs): hold it.
                    return Gate::Hold;
                };
                if front.end_ns >= next.start_ns {
                    return Gate::Go;
                }
                // Sent before the request it would answer began: it answers an unseen one.
                let looks_like_response = match &front.kind {
                    SegKind::Bytes(b) => b.starts_with(b"HTTP/"),
                    _ => false,
                };
                if looks_like_response {
                    out.push(Output::UnpairedResponse);
                }
                Gate::Dropped
            }
        }
    }

    fn on_event(&mut self, d: Direction, ev: ReaderEvent, out: &mut Vec<Output>) {
        match ev {
            ReaderEvent::Resynced(kind) => {
                out.push(Output::Resynced);
                if self.requests.is_none() {
                    self.set_role(if kind == Kind::Request { d } else { other(d) });
                }
            }
            ReaderEvent::Head { start, framing, start_ns } => {
                let (body, upgraded) = self.frame(start, framing, start_ns);
                if self.readers[idx(d)].set_framing(body, upgraded, &self.lim) {
                    self.complete(d, out);
                }
            }
            ReaderEvent::Complete => self.complete(d, out),
            ReaderEvent::Failed { kind, announced } => {
                out.push(Output::Error(kind));
                let Some(msg) = self.readers[idx(d)].take_message() else { return };
                if !announced {
                    match msg.kind {
                        Kind::Request => self.awaiting.push_back(awaiting_for(&msg)),
                        Kind::Response => {
                            self.awaiting.pop_front();
                        }
                    }
                }
                out.push(Output::Message(msg));
            }
        }
    }

    /// How a message's body is framed, and whether it switches protocols. Updates the
    /// requests-awaiting-response queue.
    fn frame(&mut self, start: StartFacts, f: Framing, start_ns: u64) -> (BodyFraming, bool) {
        match start {
            StartFacts::Request { head, connect } => {
                let a = Awaiting { head, connect, upgrade: f.upgrade, start_ns };
                self.upgrade_pending |= a.connect || a.upgrade;
                self.awaiting.push_back(a);
                let body = match (f.chunked, f.content_length) {
                    (true, _) => BodyFraming::Chunked,
                    (false, Some(n)) => BodyFraming::Length(n),
                    (false, None) => BodyFraming::None,
                };
                (body, false)
            }
            StartFacts::Response { status } => {
                let req = self.awaiting.front().copied();
                let (head, connect) = req.map_or((false, false), |a| (a.head, a.connect));
                let interim = (100..200).contains(&status) && status != 101;
                if !interim {
                    self.awaiting.pop_front();
                    if req.is_some_and(|a| a.connect || a.upgrade) {
                        self.upgrade_pending = false;
                    }
                }
                let switched = status == 101 || (connect && (200..300).contains(&status));
                let body = if switched || interim || head || status == 204 || status == 304 {
                    BodyFraming::None
                } else if f.chunked {
                    BodyFraming::Chunked
                } else if f.transfer_encoding {
                    BodyFraming::UntilClose
                } else {
                    f.content_length.map_or(BodyFraming::UntilClose, BodyFraming::Length)
                };
                (body, switched)
            }
        }
    }

    /// `d`'s reader completed its message.
    fn complete(&mut self, d: Direction, out: &mut Vec<Output>) {
        let Some(msg) = self.readers[idx(d)].take_message() else { return };
        let interim =
            msg.kind == Kind::Response && msg.status.is_some_and(|s| (100..200).contains(&s)) && !msg.upgraded;
        if msg.upgraded {
            self.tunnel = true;
            self.readers.iter_mut().for_each(Reader::stop);
        }
        if !interim {
            out.push(Output::Message(msg));
        }
    }

    /// A direction held too much while waiting: drop it and look for the next start line.
    fn check_overflow(&mut self, d: Direction, out: &mut Vec<Output>) {
        let i = idx(d);
        let held = self.queues[i].bytes().saturating_add(self.readers[i].held_bytes());
        if held > self.lim.max_buffer_bytes || self.queues[i].len() > MAX_HELD_SEGMENTS {
            self.queues[i].clear();
            self.readers[i].resync();
            out.push(Output::Error(super::parser::ParseErrorKind::BufferFull));
        }
    }
}

/// For a request whose head failed after its request line.
fn awaiting_for(msg: &HttpMessage) -> Awaiting {
    let method = msg.method.as_deref().unwrap_or_default();
    Awaiting { head: method == "HEAD", connect: method == "CONNECT", upgrade: false, start_ns: msg.start_ns }
}

impl ProtocolParser for Http1Parser {
    fn protocol(&self) -> &'static str {
        "http/1"
    }

    fn release_idle(&mut self) {
        self.queues.iter_mut().for_each(SegQueue::release_if_empty);
        if self.awaiting.is_empty() && self.awaiting.capacity() > 0 {
            self.awaiting = VecDeque::new();
        }
    }

    fn rest(&self) -> Option<Rest> {
        // Which side asks is known (then how many bytes were scanned without knowing no
        // longer matters), both readers wait for a start line holding nothing, nothing is
        // queued, no response is awaited, no protocol switch pending: `woken` rebuilds this.
        let requests = self.requests?;
        let kinds = [(requests, Kind::Request), (other(requests), Kind::Response)];
        let readers_rest = kinds.iter().all(|&(d, k)| {
            let r = &self.readers[idx(d)];
            r.kind() == Some(k) && r.at_rest()
        });
        let idle = readers_rest
            && self.queues.iter().all(|q| q.is_empty() && q.bytes() == 0)
            && self.awaiting.is_empty()
            && !self.upgrade_pending
            && !self.stopped();
        idle.then_some(Rest { requests, midstream: self.midstream })
    }

    fn check(&self, _dir: Direction, head: &[u8]) -> Check {
        if self.midstream {
            // Mid-message bytes can be anything; only reject what is surely something else.
            let tls = matches!(head, [0x14..=0x17, 0x03, ..]);
            return match head {
                [] => Check::NeedMore,
                _ if tls || head.starts_with(b"PRI * HTTP/2") => Check::NoMatch,
                _ => Check::Match,
            };
        }
        match classify(head) {
            Class::Request | Class::Response => Check::Match,
            Class::NeedMore if head.len() < CHECK_BYTES => Check::NeedMore,
            Class::NeedMore | Class::Neither => Check::NoMatch,
        }
    }

    fn parse(&mut self, dir: Direction, mut seg: Segment, out: &mut Vec<Output>) {
        if self.stopped() {
            return;
        }
        if self.requests.is_some() && self.queues.iter().all(SegQueue::is_empty) {
            // Nothing queued on either side (nearly every segment): `pump` would step only
            // `dir` on this segment; read it in place and queue just what has to wait.
            // Tests check that against the queued path on a copy, for every segment.
            #[cfg(test)]
            let queued = {
                let (mut p, mut o) = (self.clone(), out.clone());
                p.parse_queued(dir, seg.clone(), &mut o);
                (p, o)
            };
            self.read_now(dir, &mut seg, out);
            if !seg.is_spent() && !self.stopped() {
                self.queues[idx(dir)].push(seg);
            }
            if !self.stopped() {
                self.check_overflow(dir, out);
            }
            #[cfg(test)]
            {
                assert_eq!(queued.1, *out, "read in place: other outputs than queued");
                assert_eq!(format!("{:?}", queued.0), format!("{self:?}"), "read in place: other state than queued");
            }
        } else {
            self.parse_queued(dir, seg, out);
        }
    }

    fn finish(&mut self, out: &mut Vec<Output>) {
        if !self.stopped() {
            for d in DIRS {
                let eof =
                    Segment { kind: SegKind::Eof, pid: 0, tid: 0, start_ns: 0, end_ns: 0, task_ctx: 0, seq_end: None };
                self.queues[idx(d)].push(eof);
            }
            self.pump(out);
            if let Some(req) = self.requests {
                let held = self.queues[idx(other(req))].front();
                let unanswered = held.is_some_and(|s| match &s.kind {
                    SegKind::Bytes(b) => b.starts_with(b"HTTP/"),
                    _ => false,
                });
                if unanswered {
                    out.push(Output::UnpairedResponse);
                }
            }
        }
        self.reset();
    }

    fn reset(&mut self) {
        *self = Http1Parser::new(self.lim.clone(), self.midstream);
    }

    fn request_direction(&self) -> Option<Direction> {
        self.requests
    }
}
