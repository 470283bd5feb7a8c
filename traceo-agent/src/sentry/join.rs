//! Which failed request a Sentry event belongs to. Exactness over reach: an event is tied to
//! a server exchange only when it is the one candidate in the event's process, where a
//! candidate is a server exchange of the same pid whose method and path are the event's
//! `request`, answered with a 5xx, started before the envelope was sent and ended at most
//! `window_ns` before it, whose traceback (when the agent read one: `--log-records`) names
//! the event's exception type, and not tied to another event yet. Several candidates, or one
//! already passed on: unmatched (counted), never a guess. So is a server request of the
//! process still in flight with the event's method and path, begun before the envelope was
//! sent: it failed too, perhaps, and the event may be its own (`request_seen`).
//!
//! Timing: the SDK sends the envelope from a background thread after the exception left the
//! app, so the event usually reaches this stage after its exchange. Every 5xx server
//! exchange is therefore held (at most `hold_ns` after its response ended, event time), and
//! an envelope is decided `settle_ns` after it was answered, once the exchanges that ended
//! before it (which earlier stages may still hold) have arrived. A held exchange leaves as
//! soon as an event is tied to it.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use super::envelope::{Parsed, SentryEvent};
use crate::http::{Exchange, RequestSeen, Role};

/// Server requests remembered in flight at most (past it, new ones are not).
const MAX_IN_FLIGHT: usize = 65_536;

#[derive(Clone, Debug)]
pub struct SentryConfig {
    /// An envelope is decided this long after its response (event time).
    pub settle_ns: u64,
    /// A 5xx server exchange waits at most this long after its response for its event.
    pub hold_ns: u64,
    /// An event describes a request that ended at most this long before the envelope.
    pub window_ns: u64,
    /// Exchanges held at most (the oldest leaves first past it).
    pub max_held: usize,
}

impl Default for SentryConfig {
    fn default() -> Self {
        SentryConfig { settle_ns: 1_500_000_000, hold_ns: 4_000_000_000, window_ns: 30_000_000_000, max_held: 4096 }
    }
}

impl SentryConfig {
    /// Earlier stages hold server exchanges `upstream_ns` more (the log join's grace).
    pub fn after_upstream(upstream_ns: u64) -> SentryConfig {
        let d = SentryConfig::default();
        SentryConfig { settle_ns: d.settle_ns + upstream_ns, hold_ns: d.hold_ns + upstream_ns, ..d }
    }
}

/// What the stage passes on.
pub enum SentryOut {
    Exchange(Box<Exchange>),
    /// A Sentry event was decided: tied to a span, or not.
    Event {
        service: String,
        matched: bool,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SentryStats {
    pub matched: u64,
    pub unmatched: u64,
    /// Envelopes whose body could not be read (counted in `unmatched` too).
    pub unreadable: u64,
}

struct Pending {
    pid: u32,
    service: String,
    /// The envelope request's first byte.
    sent_ns: u64,
    deadline_ns: u64,
    event: Option<SentryEvent>,
}

/// What identifies a candidate, for held and passed exchanges alike.
struct Shape {
    pid: u32,
    method: std::borrow::Cow<'static, str>,
    path: String,
    exception: Option<String>,
    start_ns: u64,
    end_ns: u64,
}

impl Shape {
    fn of(ex: &Exchange) -> Shape {
        Shape {
            pid: ex.pid,
            method: ex.method.clone(),
            path: crate::http::route::without_query(&ex.target).to_owned(),
            exception: ex.exception.as_ref().map(|e| e.kind.clone()),
            start_ns: ex.request_first_ns,
            end_ns: ex.response_last_ns.unwrap_or(ex.request_last_ns),
        }
    }

    fn fits(&self, p: &Pending, ev: &SentryEvent, window_ns: u64) -> bool {
        let (Some(method), Some(path)) = (&ev.request_method, &ev.request_path) else { return false };
        let same_exception = match (&self.exception, &ev.exception_type) {
            (None, _) => true,
            (Some(kind), Some(t)) => kind == t || kind.strip_suffix(t.as_str()).is_some_and(|m| m.ends_with('.')),
            (Some(_), None) => false,
        };
        self.pid == p.pid
            && self.method.eq_ignore_ascii_case(method)
            && percent_decoded(&self.path) == percent_decoded(path)
            && same_exception
            && self.start_ns <= p.sent_ns
            && self.end_ns.saturating_add(window_ns) >= p.sent_ns
    }
}

struct Held {
    ex: Box<Exchange>,
    shape: Shape,
    deadline_ns: u64,
}

pub struct SentryJoin {
    cfg: SentryConfig,
    held: VecDeque<Held>,
    /// 5xx server exchanges passed on without an event: still candidates (an event that fits
    /// one of them cannot be tied, and makes the others ambiguous).
    passed: VecDeque<Shape>,
    pending: VecDeque<Pending>,
    /// Server requests seen and not yet passed through this stage: (connection, position)
    /// -> (pid, `request_shape`, first byte). Keyed by the agent's own ids: a fast hash.
    in_flight: HashMap<(u64, u64), (u32, u64, u64), foldhash::fast::RandomState>,
    pub stats: SentryStats,
}

impl SentryJoin {
    pub fn new(cfg: SentryConfig) -> SentryJoin {
        SentryJoin {
            cfg,
            held: VecDeque::new(),
            passed: VecDeque::new(),
            pending: VecDeque::new(),
            in_flight: HashMap::default(),
            stats: SentryStats::default(),
        }
    }

    /// A server request began (the tracker's announcement, before its exchange completes).
    pub fn request_seen(&mut self, seen: &RequestSeen) {
        if seen.role == Role::Server && self.in_flight.len() < MAX_IN_FLIGHT {
            self.in_flight.insert((seen.conn_id, seen.seq), (seen.pid, seen.shape, seen.start_ns));
        }
    }

    pub fn observe(&mut self, ex: Box<Exchange>, out: &mut dyn FnMut(SentryOut)) {
        if ex.role == Role::Server {
            self.in_flight.remove(&(ex.conn_id, ex.request_seq));
        }
        if ex.db.is_none() && ex.role == Role::Server && ex.status.is_some_and(|s| s >= 500) {
            let shape = Shape::of(&ex);
            let deadline_ns = shape.end_ns.saturating_add(self.cfg.hold_ns);
            self.held.push_back(Held { ex, shape, deadline_ns });
            if self.held.len() > self.cfg.max_held {
                self.release_front(out);
            }
            return;
        }
        if let Some(p) = self.envelope(&ex) {
            self.pending.push_back(p);
        }
        out(SentryOut::Exchange(ex));
    }

    /// A client exchange that delivered a Sentry envelope (answered 2xx: a rejected event
    /// is stored nowhere) with an error event in it.
    fn envelope(&mut self, ex: &Exchange) -> Option<Pending> {
        let delivered = ex.role == Role::Client && ex.status.is_some_and(|s| (200..300).contains(&s));
        if ex.db.is_some() || !delivered || !super::is_envelope_request(&ex.method, &ex.target) {
            return None;
        }
        let event = match super::parse(&ex.request_body_prefix) {
            Parsed::Event(e) => Some(e),
            Parsed::NoEvent => return None,
            Parsed::Unreadable => {
                self.stats.unreadable += 1;
                None
            }
        };
        let end_ns = ex.response_last_ns.unwrap_or(ex.request_last_ns);
        Some(Pending {
            pid: ex.pid,
            service: ex.service.to_string(),
            sent_ns: ex.request_first_ns,
            deadline_ns: end_ns.saturating_add(self.cfg.settle_ns),
            event,
        })
    }

    /// Decide the envelopes due, then let go of the exchanges whose wait is over.
    pub fn tick(&mut self, now_ns: u64, out: &mut dyn FnMut(SentryOut)) {
        while self.pending.front().is_some_and(|p| p.deadline_ns <= now_ns) {
            let p = self.pending.pop_front().expect("checked");
            self.decide(p, out);
        }
        // Deadlines are not in arrival order: the held set is small (5xx only) and scanned.
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].deadline_ns <= now_ns {
                let h = self.held.remove(i).expect("in range");
                self.pass(h, out);
            } else {
                i += 1;
            }
        }
        let horizon = now_ns.saturating_sub(self.cfg.window_ns.saturating_add(self.cfg.settle_ns));
        while self.passed.front().is_some_and(|s| s.end_ns < horizon) {
            self.passed.pop_front();
        }
        // A request never answered (its exchange may never come): forgotten after the window.
        self.in_flight.retain(|_, &mut (_, _, start)| start >= horizon);
    }

    pub fn finish(&mut self, out: &mut dyn FnMut(SentryOut)) {
        while let Some(p) = self.pending.pop_front() {
            self.decide(p, out);
        }
        while !self.held.is_empty() {
            self.release_front(out);
        }
    }

    fn decide(&mut self, p: Pending, out: &mut dyn FnMut(SentryOut)) {
        let matched = p.event.as_ref().is_some_and(|ev| self.tie(&p, ev, out));
        if matched {
            self.stats.matched += 1;
        } else {
            self.stats.unmatched += 1;
        }
        out(SentryOut::Event { service: p.service, matched });
    }

    /// The one candidate, if it is still held: give it the event id and pass it on.
    fn tie(&mut self, p: &Pending, ev: &SentryEvent, out: &mut dyn FnMut(SentryOut)) -> bool {
        let w = self.cfg.window_ns;
        let held: Vec<usize> = (0..self.held.len()).filter(|&i| self.held[i].shape.fits(p, ev, w)).collect();
        let passed = self.passed.iter().filter(|s| s.fits(p, ev, w)).count();
        let [i] = held[..] else { return false };
        let (Some(method), Some(path)) = (&ev.request_method, &ev.request_path) else { return false };
        let shape = super::request_shape(method, path);
        let open = self.in_flight.values().any(|&(pid, s, start)| pid == p.pid && s == shape && start <= p.sent_ns);
        if passed > 0 || open {
            return false;
        }
        let mut h = self.held.remove(i).expect("in range");
        h.ex.sentry_event_id = Some(ev.event_id.clone());
        out(SentryOut::Exchange(h.ex));
        true
    }

    fn release_front(&mut self, out: &mut dyn FnMut(SentryOut)) {
        if let Some(h) = self.held.pop_front() {
            self.pass(h, out);
        }
    }

    fn pass(&mut self, h: Held, out: &mut dyn FnMut(SentryOut)) {
        self.passed.push_back(h.shape);
        if self.passed.len() > self.cfg.max_held {
            self.passed.pop_front();
        }
        out(SentryOut::Exchange(h.ex));
    }

    /// Exchanges held now (for tests and the agent's gauges).
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// `%XX` escapes decoded (the SDK reports the decoded path; the wire carries it raw).
pub(super) fn percent_decoded(p: &str) -> Cow<'_, [u8]> {
    let b = p.as_bytes();
    if !b.contains(&b'%') {
        return Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
