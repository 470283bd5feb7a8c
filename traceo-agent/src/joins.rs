//! Business-key joins: tie the exchanges of one job together across services and time.
//!
//! A key (default `job_id`) is *issued* when a server's JSON response body or a response
//! header carries it (the engine answering an upload with `{"job_id": ...}`). Later
//! exchanges whose request carries the value (JSON body field, path segment, query parameter
//! or header) are *joined* to that origin: they get `job_id` and a span link to the issuing
//! span. The *callback* is the first joined request that the issuing service itself sends
//! (the engine's webhook); polls sent to it do not count. State is bounded and expires.
//!
//! Which trace a joined exchange belongs to: the job's trace holds what the job *caused*, a
//! request that only *refers* to it keeps its own trace and parent.
//! - Caused: work the issuing service started on its own (a span with no parent there, such
//!   as the webhook sent from a background task) becomes the issuing span's child (`job`);
//!   everything later in that span's former trace follows it (the webhook's far end, what
//!   the receiver did while handling it).
//! - Referring: anything else (a `job_status` poll and its calls): only the link.
//!
//! The far end of a callback can be reported before the callback itself (it answers first),
//! so a joined exchange whose parent has not been seen yet waits for it, at most `HOLD_NS`.
//! Likewise the webhook can reach this stage before its upload (the upload waits upstream
//! for its own parent's trace), so an exchange naming a value not issued yet waits for the
//! issue, at most `HOLD_NS` (with `--shared-state`, as long as a lookup of another host's issue
//! polls), before it is counted as a webhook without upload.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::correlate::TraceId;
use crate::http::{Exchange, Link, Role, SpanRef};
use crate::passed_spans::PassedSpans;
use crate::recent::Recent;

/// What a join decided for one exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinEvent {
    /// The exchange issued a key value.
    Issued,
    /// The exchange carried a known value; `callback_after_ns` is set on the issuing
    /// service's first outgoing request with it (upload start to webhook start).
    Joined { callback_after_ns: Option<u64> },
    /// A request named the key field with a value nobody issued (or one that expired).
    Unknown,
}

/// Where a key value came from.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The service whose response issued it.
    pub service: String,
    /// Start of the issuing exchange (monotonic ns).
    pub start_ns: u64,
    /// The issuing exchange's span, when it has one.
    pub span: Option<SpanRef>,
    callback_seen: bool,
}

/// Counters for `traceo_job_joins_total{outcome}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinStats {
    pub joined: u64,
    pub upload_without_webhook: u64,
    pub webhook_without_upload: u64,
}

pub struct Joins {
    keys: Vec<String>,
    /// Each key's header names: `job_id`, `job-id`, `x-job-id` (made once, not per exchange).
    key_headers: Vec<[String; 3]>,
    ttl_ns: u64,
    max_values: usize,
    values: HashMap<String, Origin>,
    /// Values in issue order, for expiry and the cap.
    order: VecDeque<(u64, String)>,
    /// Traces moved into a job's trace: former trace id -> the job's.
    moved: Recent<TraceId, TraceId>,
    /// Spans passed on recently, to tell whether a parent came.
    seen: PassedSpans,
    /// Joined exchanges waiting for their parent (arrival time, exchange, event).
    pending: VecDeque<(u64, Box<Exchange>, Option<JoinEvent>)>,
    /// Exchanges naming a value nobody has issued yet (arrival time, value, exchange).
    awaiting: VecDeque<(u64, String, Box<Exchange>)>,
    /// Values that started waiting since `take_wanted` (for `--shared-state` to ask).
    wanted: Vec<String>,
    /// How long an exchange naming an unknown value waits for its issue (`HOLD_NS`, longer
    /// when other hosts may issue it).
    await_ns: u64,
    pub stats: JoinStats,
}

/// How long a joined exchange waits for its parent (the correlator's own hold).
const HOLD_NS: u64 = 2_000_000_000;
/// Exchanges waiting at most; beyond, the oldest is decided as referring.
const MAX_PENDING: usize = 4096;

/// Values longer than this are not keys (and are never stored).
const MAX_VALUE_LEN: usize = 128;

impl Joins {
    pub fn new(keys: Vec<String>, ttl_ns: u64, max_values: usize) -> Joins {
        let key_headers = keys
            .iter()
            .map(|k| {
                let dashed = k.replace('_', "-");
                [k.clone(), dashed.clone(), format!("x-{dashed}")]
            })
            .collect();
        Joins {
            keys,
            key_headers,
            ttl_ns,
            max_values,
            values: HashMap::new(),
            order: VecDeque::new(),
            moved: Recent::new(),
            seen: PassedSpans::default(),
            pending: VecDeque::new(),
            awaiting: VecDeque::new(),
            wanted: Vec::new(),
            await_ns: HOLD_NS,
            stats: JoinStats::default(),
        }
    }

    /// Take one completed exchange: issue, join, or neither (sets `ex.job_id`), place it in
    /// its trace, and pass it on with what happened, now or once its parent has come.
    pub fn observe(&mut self, ex: Box<Exchange>, out: &mut impl FnMut(Box<Exchange>, Option<JoinEvent>)) {
        match self.carried(&ex) {
            Some((value, None)) => {
                if self.awaiting.len() >= MAX_PENDING {
                    if let Some((_, _, old)) = self.awaiting.pop_front() {
                        self.decide(old, out);
                    }
                }
                let at = ex.response_last_ns.unwrap_or(ex.request_last_ns);
                self.wanted.push(value.clone());
                self.awaiting.push_back((at, value, ex));
            }
            // Nothing changed since `carried` looked: decide on what it found.
            carried => self.decide_carrying(ex, carried, out),
        }
    }

    /// A parent on another host (`--shared-state`): it will not pass here, nothing waits for it.
    pub fn seen_elsewhere(&mut self, parent: SpanRef) {
        self.seen.insert(parent.span_id);
    }

    /// Exchanges naming a value nobody here issued wait `ns` (at least `HOLD_NS`) for it.
    pub fn hold_awaiting(&mut self, ns: u64) {
        self.await_ns = ns.max(HOLD_NS);
    }

    /// Values that exchanges started waiting for since the last call.
    pub fn take_wanted(&mut self) -> Vec<String> {
        std::mem::take(&mut self.wanted)
    }

    /// Another host's agent issued `value` (`--shared-state`): what waits for it joins as
    /// it would a local issue. Its callback is that host's to count, so it counts as seen.
    pub fn issued_elsewhere(
        &mut self,
        value: String,
        service: String,
        span: SpanRef,
        out: &mut impl FnMut(Box<Exchange>, Option<JoinEvent>),
    ) {
        if self.values.contains_key(&value) {
            return;
        }
        let (ready, rest): (VecDeque<_>, VecDeque<_>) = self.awaiting.drain(..).partition(|(_, v, _)| *v == value);
        self.awaiting = rest;
        let at = ready.front().map_or(0, |(at, ..)| *at);
        self.values.insert(value.clone(), Origin { service, start_ns: at, span: Some(span), callback_seen: true });
        self.order.push_back((at, value));
        for (_, _, waiting) in ready {
            self.decide(waiting, out);
        }
    }

    fn decide(&mut self, ex: Box<Exchange>, out: &mut impl FnMut(Box<Exchange>, Option<JoinEvent>)) {
        let carried = self.carried(&ex);
        self.decide_carrying(ex, carried, out);
    }

    /// [`Self::decide`] with what [`Self::carried`] found in `ex` now.
    fn decide_carrying(
        &mut self,
        mut ex: Box<Exchange>,
        carried: Option<(String, Option<Origin>)>,
        out: &mut impl FnMut(Box<Exchange>, Option<JoinEvent>),
    ) {
        let event = self.classify(&mut ex, carried);
        if event == Some(JoinEvent::Issued) {
            let value = ex.job_id.clone();
            self.pass(ex, event, out);
            // What named the value before it was issued now joins.
            let (ready, rest): (VecDeque<_>, VecDeque<_>) =
                self.awaiting.drain(..).partition(|(_, v, _)| Some(v) == value.as_ref());
            self.awaiting = rest;
            for (_, _, waiting) in ready {
                self.decide(waiting, out);
            }
            return;
        }
        let joined = matches!(event, Some(JoinEvent::Joined { .. }));
        let waits = joined
            && ex.trace.as_ref().is_some_and(|t| {
                t.parent.is_some_and(|p| !self.seen.contains(p)) && self.moved.get(&t.trace_id).is_none()
            });
        if waits {
            if self.pending.len() >= MAX_PENDING {
                if let Some((_, old, ev)) = self.pending.pop_front() {
                    self.pass(old, ev, out);
                }
            }
            let at = ex.response_last_ns.unwrap_or(ex.request_last_ns);
            self.pending.push_back((at, ex, event));
            return;
        }
        self.pass(ex, event, out);
    }

    /// Place `ex` in its trace and pass it on, then whatever waited for it as a parent.
    fn pass(
        &mut self,
        ex: Box<Exchange>,
        event: Option<JoinEvent>,
        out: &mut impl FnMut(Box<Exchange>, Option<JoinEvent>),
    ) {
        let mut stack = Vec::new();
        let mut next = Some((ex, event));
        while let Some((mut ex, event)) = next.take().or_else(|| stack.pop()) {
            if let Some(t) = &mut ex.trace {
                if let Some(&job_trace) = self.moved.get(&t.trace_id) {
                    t.trace_id = job_trace;
                }
                self.seen.insert(t.span_id);
                let span = Some(t.span_id);
                if self.pending.iter().any(|(_, c, _)| c.parent_span_id() == span) {
                    let (children, rest): (VecDeque<_>, VecDeque<_>) =
                        self.pending.drain(..).partition(|(_, c, _)| c.parent_span_id() == span);
                    self.pending = rest;
                    stack.extend(children.into_iter().map(|(_, c, e)| (c, e)));
                }
            }
            out(ex, event);
        }
    }

    /// Those that waited too long for their parent: referring, as they are.
    pub fn expire_pending(&mut self, now_ns: u64, out: &mut impl FnMut(Box<Exchange>, Option<JoinEvent>)) {
        while self.awaiting.front().is_some_and(|(at, ..)| now_ns.saturating_sub(*at) > self.await_ns) {
            if let Some((_, _, ex)) = self.awaiting.pop_front() {
                self.decide(ex, out);
            }
        }
        while self.pending.front().is_some_and(|(at, ..)| now_ns.saturating_sub(*at) > HOLD_NS) {
            if let Some((_, ex, ev)) = self.pending.pop_front() {
                self.pass(ex, ev, out);
            }
        }
    }

    /// The end: pass on everything still waiting.
    pub fn finish(&mut self, out: &mut impl FnMut(Box<Exchange>, Option<JoinEvent>)) {
        while let Some((_, _, ex)) = self.awaiting.pop_front() {
            self.decide(ex, out);
        }
        while let Some((_, ex, ev)) = self.pending.pop_front() {
            self.pass(ex, ev, out);
        }
    }

    fn classify(&mut self, ex: &mut Exchange, carried: Option<(String, Option<Origin>)>) -> Option<JoinEvent> {
        if let Some((value, origin)) = carried {
            ex.job_id = Some(value.clone());
            let Some(origin) = origin else {
                self.stats.webhook_without_upload += 1;
                return Some(JoinEvent::Unknown);
            };
            let callback = ex.role == Role::Client && *ex.service == *origin.service && !origin.callback_seen;
            let after = callback.then(|| ex.request_first_ns.saturating_sub(origin.start_ns));
            if callback {
                self.stats.joined += 1;
                if let Some(o) = self.values.get_mut(&value) {
                    o.callback_seen = true;
                }
            }
            self.place(ex, &origin);
            // A callback says how the job ended (`{"job_id": ..., "status": "failed"}`).
            ex.job_status = json_body(&ex.request_body_prefix).and_then(|b| top_level_status(&b));
            return Some(JoinEvent::Joined { callback_after_ns: after });
        }
        if ex.role == Role::Server {
            if let Some(value) = self.issued(ex) {
                ex.job_id = Some(value.clone());
                self.issue(value, ex);
                return Some(JoinEvent::Issued);
            }
        }
        // The client view of an issuing exchange (the uploader's side) names the value too.
        if ex.role == Role::Client {
            if let Some(value) = self.issued(ex) {
                ex.job_id = Some(value);
            }
        }
        None
    }

    /// A joined exchange links to the issuing span. One the issuing service started on its
    /// own (no parent: the webhook, sent from a background task) is what the job caused: it
    /// becomes that span's child, and its former trace moves into the job's.
    fn place(&mut self, ex: &mut Exchange, origin: &Origin) {
        let Some(job) = origin.span else { return };
        if ex.span_id() == Some(job.span_id) {
            return;
        }
        ex.job_origin = Some(job);
        if *ex.service != *origin.service {
            return;
        }
        if let Some(t) = ex.trace.as_mut().filter(|t| t.parent.is_none()) {
            let former = std::mem::replace(&mut t.trace_id, job.trace_id);
            self.moved.insert(former, job.trace_id);
            t.parent = Some(job.span_id);
            t.link = Some(Link::Job);
        }
    }

    fn issue(&mut self, value: String, ex: &Exchange) {
        if self.values.contains_key(&value) {
            return;
        }
        while self.values.len() >= self.max_values {
            let Some((_, old)) = self.order.pop_front() else { break };
            self.forget(&old);
        }
        let origin = Origin {
            service: ex.service.to_string(),
            start_ns: ex.request_first_ns,
            span: ex.trace.as_ref().map(|t| t.span()),
            callback_seen: false,
        };
        self.values.insert(value.clone(), origin);
        self.order.push_back((ex.request_first_ns, value));
    }

    fn forget(&mut self, value: &str) {
        if let Some(o) = self.values.remove(value) {
            if !o.callback_seen {
                self.stats.upload_without_webhook += 1;
            }
        }
    }

    /// Values issued more than the TTL before `now_ns` expire.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some((at, _)) = self.order.front() {
            if now_ns.saturating_sub(*at) <= self.ttl_ns {
                break;
            }
            let (_, value) = self.order.pop_front().expect("front exists");
            self.forget(&value);
        }
    }

    /// A key value in the response (JSON body field or header).
    fn issued(&self, ex: &Exchange) -> Option<String> {
        let body = json_body(&ex.response_body_prefix).and_then(|b| find_key(&b, &self.keys, 4));
        body.or_else(|| self.key_headers.iter().find_map(|k| header(ex, k, false)))
    }

    /// The first known value the request carries, with its origin; or a value under a key
    /// name that nobody issued (origin `None`). Only a top-level JSON field, a query
    /// parameter or a header *names* a key (a webhook payload does); a nested field (JSON-RPC
    /// tool arguments) or a path segment joins only when its value is known.
    fn carried(&self, ex: &Exchange) -> Option<(String, Option<Origin>)> {
        let body = json_body(&ex.request_body_prefix);
        let named = body
            .as_ref()
            .and_then(|b| find_key(b, &self.keys, 0))
            .or_else(|| self.keys.iter().find_map(|k| query_param(&ex.target, k)))
            .or_else(|| self.key_headers.iter().find_map(|k| header(ex, k, true)));
        if let Some(v) = named {
            let origin = self.values.get(&v).cloned();
            return Some((v, origin));
        }
        if self.values.is_empty() {
            // Only known values join from here on.
            return None;
        }
        let known = |v: &str| self.values.get_key_value(v).map(|(k, o)| (k.clone(), Some(o.clone())));
        if let Some(found) = body.as_ref().and_then(|b| find_key(b, &self.keys, 4)).and_then(|v| known(&v)) {
            return Some(found);
        }
        let path = ex.target.split('?').next().unwrap_or("");
        path.split('/').filter(|s| !s.is_empty()).find_map(known)
    }
}

fn valid(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_VALUE_LEN && v.bytes().all(|b| b.is_ascii_graphic())
}

/// A JSON object or array body (a whole one: a prefix cut short does not parse).
fn json_body(body: &[u8]) -> Option<Value> {
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace()).map(|i| &body[i..])?;
    if !trimmed.starts_with(b"{") && !trimmed.starts_with(b"[") {
        return None;
    }
    serde_json::from_slice(trimmed).ok()
}

/// A short `"status"` string at the top level of a JSON object.
fn top_level_status(body: &Value) -> Option<String> {
    let status = body.get("status")?.as_str()?;
    let short = status.len() <= 32 && status.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    short.then(|| status.to_owned())
}

/// `"key": value` (string or number) in `v` or, up to `depth` levels down, inside it.
fn find_key(v: &Value, keys: &[String], depth: u32) -> Option<String> {
    match v {
        Value::Object(map) => {
            let direct = keys.iter().find_map(|k| match map.get(k)? {
                Value::String(s) if valid(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            direct.or_else(|| (depth > 0).then(|| map.values().find_map(|c| find_key(c, keys, depth - 1))).flatten())
        }
        Value::Array(items) if depth > 0 => items.iter().find_map(|c| find_key(c, keys, depth - 1)),
        _ => None,
    }
}

fn query_param(target: &str, key: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key && valid(v)).then(|| v.to_owned())
    })
}

/// The key as a header: `job_id`, `job-id` or `x-job-id` (any case), the names made by
/// [`Joins::new`].
fn header(ex: &Exchange, names: &[String; 3], request: bool) -> Option<String> {
    let headers = if request { &ex.request_headers } else { &ex.response_headers };
    names.iter().find_map(|name| headers.get(name)).filter(|v| valid(v)).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::SpanId;
    use crate::http::TraceContext;
    use crate::http::tests::script::*;

    /// One exchange of `service`: the process received (server) or sent (client) `request`
    /// and the other direction carried `response`.
    fn exchange(service_idx: u32, server: bool, request: &[u8], response: &[u8]) -> Box<Exchange> {
        let mut s = if server { Script::accepted(1) } else { Script::connected(1) };
        s.service = Some(service_idx);
        if let Some(crate::events::Event::ConnOpen(open)) = s.events.first_mut() {
            open.meta.service = Some(service_idx);
        }
        if server {
            s.recv(request).send(response);
        } else {
            s.send(request).recv(response);
        }
        let cfg =
            crate::http::TrackerConfig { service_names: vec!["engine".into(), "mcp".into()], ..Default::default() };
        let (xs, _) = run_with(cfg, &s.take());
        Box::new(one(&xs).clone())
    }

    fn json_response(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    const ENGINE: u32 = 0;
    const MCP: u32 = 1;

    const T_UPLOAD: TraceId = TraceId([0x1a; 16]);
    const T_POLL: TraceId = TraceId([0x2a; 16]);
    const T_HOOK: TraceId = TraceId([0x3a; 16]);
    const S_UPLOAD: SpanId = SpanId([0x1b; 8]);
    const S_TOOL: SpanId = SpanId([0x2b; 8]);
    const S_POLL: SpanId = SpanId([0x3b; 8]);
    const S_HOOK: SpanId = SpanId([0x4b; 8]);
    const S_FAR: SpanId = SpanId([0x5b; 8]);

    /// `ex` as span `span` of trace `trace`, under `parent` (found through `link`).
    fn traced(
        mut ex: Box<Exchange>,
        trace: TraceId,
        span: SpanId,
        parent: Option<SpanId>,
        link: Option<Link>,
    ) -> Box<Exchange> {
        ex.trace = Some(TraceContext { trace_id: trace, span_id: span, parent, link, trace_state: None });
        ex
    }

    /// Observe an exchange that waits for nothing; `ex` becomes what was passed on.
    fn observe(joins: &mut Joins, ex: &mut Box<Exchange>) -> Option<JoinEvent> {
        let mut got = None;
        joins.observe(ex.clone(), &mut |x, e| got = Some((x, e)));
        let (x, e) = got.expect("passed on at once");
        *ex = x;
        e
    }

    #[test]
    fn an_upload_issues_and_the_issuers_webhook_joins_once() {
        let mut joins = Joins::new(vec!["job_id".into()], 3_600_000_000_000, 100);
        let upload = exchange(ENGINE, true, &post("/api/v1/jobs", "a,b\n1,2\n"), &json_response(r#"{"job_id":"j1"}"#));
        let mut upload = traced(upload, T_UPLOAD, S_UPLOAD, None, None);
        assert_eq!(observe(&mut joins, &mut upload), Some(JoinEvent::Issued));
        assert_eq!(upload.job_id.as_deref(), Some("j1"));

        // A poll sent to the engine joins the job but is not the callback. It only refers to
        // the job: its own trace and parent, and a link to the upload.
        let poll = exchange(MCP, false, &get("/api/v1/jobs/j1"), &ok("{}"));
        let mut joins_out = Vec::new();
        joins.observe(traced(poll, T_POLL, S_POLL, Some(S_TOOL), None), &mut |x, e| joins_out.push((x, e)));
        assert!(joins_out.is_empty(), "it waits for its parent");
        let tool = exchange(MCP, true, &post("/mcp", "{}"), &ok("{}"));
        joins.observe(traced(tool, T_POLL, S_TOOL, None, None), &mut |x, e| joins_out.push((x, e)));
        let (poll, ev) = &joins_out[1];
        assert_eq!(*ev, Some(JoinEvent::Joined { callback_after_ns: None }));
        assert_eq!((poll.job_id.as_deref(), poll.trace_id()), (Some("j1"), Some(T_POLL)));
        assert_eq!((poll.parent_span_id(), poll.link()), (Some(S_TOOL), None));
        assert_eq!(poll.job_origin.map(|o| o.span_id), Some(S_UPLOAD));

        // The webhook's far end is reported first: it waits for the webhook.
        let far = exchange(MCP, true, &post("/webhooks/job-complete", r#"{"job_id":"j1"}"#), &ok("{}"));
        let mut out = Vec::new();
        let far = traced(far, T_HOOK, S_FAR, Some(S_HOOK), Some(Link::Connection));
        joins.observe(far, &mut |x, e| out.push((x, e)));
        assert!(out.is_empty());
        // The engine's own webhook (started its own trace) is the callback, caused by the job.
        let webhook = exchange(
            ENGINE,
            false,
            &post("/webhooks/job-complete", r#"{"job_id":"j1","status":"completed"}"#),
            &ok("{}"),
        );
        joins.observe(traced(webhook, T_HOOK, S_HOOK, None, None), &mut |x, e| out.push((x, e)));
        let [(webhook, ev), (far, _)] = &out[..] else { panic!("{out:?}") };
        assert!(matches!(ev, Some(JoinEvent::Joined { callback_after_ns: Some(_) })), "the callback");
        assert_eq!(webhook.job_status.as_deref(), Some("completed"), "the callback says how the job ended");
        assert_eq!((webhook.parent_span_id(), webhook.link()), (Some(S_UPLOAD), Some(Link::Job)));
        assert_eq!(webhook.trace_id(), Some(T_UPLOAD));
        // Its far end keeps its parent and follows it into the job's trace.
        assert_eq!(far.trace_id(), Some(T_UPLOAD));
        assert_eq!((far.parent_span_id(), far.link()), (Some(S_HOOK), Some(Link::Connection)));
        let mut again = exchange(ENGINE, false, &post("/webhooks/job-complete", r#"{"job_id":"j1"}"#), &ok("{}"));
        assert_eq!(
            observe(&mut joins, &mut again),
            Some(JoinEvent::Joined { callback_after_ns: None }),
            "counted once"
        );
        assert_eq!(joins.stats, JoinStats { joined: 1, ..Default::default() });
    }

    #[test]
    fn unknown_values_expiry_and_the_cap_are_counted() {
        let mut joins = Joins::new(vec!["job_id".into()], 1_000, 2);
        let stray = exchange(ENGINE, false, &post("/webhooks/job-complete", r#"{"job_id":"nobody"}"#), &ok("{}"));
        let mut out = Vec::new();
        joins.observe(stray, &mut |x, e| out.push((x, e)));
        assert!(out.is_empty(), "it waits for the value's issue");
        joins.expire_pending(u64::MAX, &mut |x, e| out.push((x, e)));
        assert_eq!(out[0].1, Some(JoinEvent::Unknown), "nobody issued it within the hold");
        for id in ["a", "b", "c"] {
            let mut up =
                exchange(ENGINE, true, &post("/api/v1/jobs", "x"), &json_response(&format!(r#"{{"job_id":"{id}"}}"#)));
            observe(&mut joins, &mut up);
        }
        // The cap of 2 pushed "a" out unanswered; expiry takes the rest.
        assert_eq!(joins.stats.upload_without_webhook, 1);
        joins.expire(u64::MAX);
        assert_eq!(joins.stats, JoinStats { joined: 0, upload_without_webhook: 3, webhook_without_upload: 1 });
    }

    #[test]
    fn a_webhook_that_comes_before_its_upload_waits_for_it_and_joins() {
        let mut joins = Joins::new(vec!["job_id".into()], 3_600_000_000_000, 100);
        let mut out = Vec::new();
        // The webhook and its far end pass the correlator while the upload still waits there
        // for its own parent's trace.
        let far = exchange(MCP, true, &post("/webhooks/job-complete", r#"{"job_id":"j2"}"#), &ok("{}"));
        joins.observe(traced(far, T_HOOK, S_FAR, Some(S_HOOK), Some(Link::Connection)), &mut |x, e| out.push((x, e)));
        let webhook = exchange(ENGINE, false, &post("/webhooks/job-complete", r#"{"job_id":"j2"}"#), &ok("{}"));
        joins.observe(traced(webhook, T_HOOK, S_HOOK, None, None), &mut |x, e| out.push((x, e)));
        assert!(out.is_empty(), "both wait for the issue");
        let upload = exchange(ENGINE, true, &post("/api/v1/jobs", "x"), &json_response(r#"{"job_id":"j2"}"#));
        joins.observe(traced(upload, T_UPLOAD, S_UPLOAD, None, None), &mut |x, e| out.push((x, e)));
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0].1, Some(JoinEvent::Issued));
        let hook = out.iter().find(|(x, _)| x.span_id() == Some(S_HOOK)).expect("the webhook");
        assert_eq!(
            (hook.0.trace_id(), hook.0.parent_span_id(), hook.0.link()),
            (Some(T_UPLOAD), Some(S_UPLOAD), Some(Link::Job))
        );
        let far = out.iter().find(|(x, _)| x.span_id() == Some(S_FAR)).expect("its far end");
        assert_eq!(far.0.trace_id(), Some(T_UPLOAD));
        assert_eq!(joins.stats, JoinStats { joined: 1, ..Default::default() });
    }

    #[test]
    fn a_value_issued_on_another_host_joins_what_waits_for_it() {
        let mut joins = Joins::new(vec!["job_id".into()], 3_600_000_000_000, 100);
        let mut out = Vec::new();
        let far =
            exchange(MCP, true, &post("/webhooks/job-complete", r#"{"job_id":"j7","status":"completed"}"#), &ok("{}"));
        // Its parent, the webhook, is on the other host.
        joins.seen_elsewhere(SpanRef { trace_id: T_HOOK, span_id: S_HOOK });
        joins.observe(traced(far, T_HOOK, S_FAR, Some(S_HOOK), Some(Link::Connection)), &mut |x, e| out.push((x, e)));
        assert!(out.is_empty());
        assert_eq!(joins.take_wanted(), ["j7"], "asked for once");
        let upload = SpanRef { trace_id: T_UPLOAD, span_id: S_UPLOAD };
        joins.issued_elsewhere("j7".into(), "engine".into(), upload, &mut |x, e| out.push((x, e)));
        let [(far, ev)] = &out[..] else { panic!("{out:?}") };
        assert_eq!(*ev, Some(JoinEvent::Joined { callback_after_ns: None }));
        assert_eq!((far.job_origin, far.job_status.as_deref()), (Some(upload), Some("completed")));
        assert_eq!((far.trace_id(), far.parent_span_id()), (Some(T_HOOK), Some(S_HOOK)), "its place is its own");
        joins.expire(u64::MAX);
        assert_eq!(joins.stats, JoinStats::default(), "the other host counts the job");
    }

    #[test]
    fn keys_nested_in_json_rpc_arguments_and_query_parameters_join() {
        let mut joins = Joins::new(vec!["job_id".into()], 3_600_000_000_000, 100);
        let mut up = exchange(ENGINE, true, &post("/api/v1/jobs", "x"), &json_response(r#"{"job_id":"j9"}"#));
        observe(&mut joins, &mut up);
        let call = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"job_status","arguments":{"job_id":"j9"}}}"#;
        let mut tool = exchange(MCP, true, &post("/mcp", call), &ok("{}"));
        assert!(matches!(observe(&mut joins, &mut tool), Some(JoinEvent::Joined { .. })));
        let mut q = exchange(MCP, false, &get("/status?job_id=j9"), &ok("{}"));
        assert!(matches!(observe(&mut joins, &mut q), Some(JoinEvent::Joined { .. })));
        let mut other = exchange(MCP, false, &get("/status?id=j9x"), &ok("{}"));
        assert_eq!(observe(&mut joins, &mut other), None);
        // A nested value nobody issued is a lookup, not a webhook without upload.
        let unknown = call.replace("j9", "zzz");
        let mut lookup = exchange(MCP, true, &post("/mcp", &unknown), &ok("{}"));
        assert_eq!(observe(&mut joins, &mut lookup), None);
        assert_eq!(joins.stats.webhook_without_upload, 0);
    }
}
