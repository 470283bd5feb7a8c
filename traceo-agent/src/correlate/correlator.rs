//! The correlation stage: gives every exchange its trace id, span id and parent, so that
//! parents and children agree although they complete in the "wrong" order.
//!
//! Ordering: a server exchange completes after the outbound calls it made, and the server
//! at the far end of a connection may be seen before or after its client. So ids are
//! assigned when a request is *seen* (the tracker announces each request as soon as it is
//! read or sent in full), not when its exchange completes:
//! - the span id at once;
//! - the parent when it can be known: an inbound request's parent is the client request at
//!   the other end of its connection (already seen, or awaited if that end is traced), else
//!   its `traceparent`; an outbound call's parent is chosen among the process's inbound
//!   requests in flight (`parent`), at once when that is certain, else (an asyncio process)
//!   when a candidate's response shows which task answered it (`tasks` gives the lineage);
//!   a call nothing certain ties to one request gets no parent (`ambiguous`);
//! - the trace id once the parent's is known (it cascades down the waiting children).
//!
//! A completed exchange whose trace is known is emitted at once; otherwise it is held until
//! it is (a request's `State`: waiting or resolved while in flight, then held or emitted).
//! Nothing waits longer than `hold_ns` after its request was seen: then the best
//! answer known is taken (and counted as `expired`). State is bounded: at most
//! `max_requests` requests (the oldest is resolved and forgotten past it, counted as
//! `evicted` when it was still in flight), completed ones are kept `hold_ns` for late
//! children, and the connection index is capped (`pairs`).

use std::collections::{HashMap, VecDeque, hash_map::Entry};

use crate::events::Event;
use crate::http::{Exchange, Link, RequestSeen, Role, SpanRef, Tracked};

use super::ids::{IdGen, TraceId};
use super::node::{Done, Id, Node, Parent, Resolved, State, Wait};
use super::nodes::Nodes;
use super::pairs::{ConnPairs, PairKey, client_key, server_key};
use super::parent::{Answered, Inbound, Pick, Signal, pick_at_start, task_match};
use super::tasks::TaskLineage;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelateConfig {
    /// The longest a request waits for its parent's answer, from when it was seen.
    pub hold_ns: u64,
    /// Requests tracked at most (in flight, waiting, or recently completed).
    pub max_requests: usize,
    /// Traced connections indexed by address at most.
    pub max_connections: usize,
    /// asyncio task births remembered at most (lineage).
    pub max_tasks: usize,
}

impl Default for CorrelateConfig {
    fn default() -> Self {
        CorrelateConfig { hold_ns: 2_000_000_000, max_requests: 65_536, max_connections: 65_536, max_tasks: 65_536 }
    }
}

/// Running totals (gauges where noted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorrelateStats {
    /// Spans with a parent, by [`Link`] (in `Link::ALL` order).
    pub links: [u64; Link::ALL.len()],
    /// Spans that start a new trace (no parent).
    pub roots: u64,
    /// Requests dropped in flight or unresolved because `max_requests` was reached.
    pub evicted: u64,
    /// Requests resolved because their hold expired before the awaited answer came.
    pub expired: u64,
    /// Parents forgotten before a waiting child could read their trace.
    pub orphaned: u64,
    /// Exchanges whose request announcement was no longer held (treated as just seen).
    pub unannounced: u64,
    /// Connections forgotten by the connection index's cap.
    pub connections_evicted: u64,
    /// Task births forgotten by the lineage's cap.
    pub tasks_forgotten: u64,
    /// Gauge: requests tracked now.
    pub tracked: u64,
    /// Gauge: completed exchanges held for their parent's answer.
    pub held: u64,
}

impl CorrelateStats {
    pub fn link(&self, link: Link) -> u64 {
        self.links[link_index(link)]
    }
}

fn link_index(link: Link) -> usize {
    Link::ALL.iter().position(|l| *l == link).unwrap_or(0)
}

/// Processes whose emptied inbound list may be kept, and the largest list kept empty.
const KEPT_EMPTY_LISTS: usize = 1024;
const KEPT_LIST_CAPACITY: usize = 64;

/// The maps keyed by the agent's own integers (connection and request ids, pids): a fast hash.
type FastHash = foldhash::fast::RandomState;

pub struct Correlator {
    cfg: CorrelateConfig,
    ids: IdGen,
    nodes: Nodes,
    next_id: Id,
    by_request: HashMap<(u64, u64), Id, FastHash>,
    /// Inbound requests in flight, by process.
    inbound: HashMap<u32, Vec<Id>, FastHash>,
    /// Outbound requests in flight that carry a correlation value, by value.
    outbound_by_value: HashMap<String, Vec<Id>>,
    pairs: ConnPairs<Id>,
    lineage: TaskLineage,
    /// (resolve-by time, request), in the order requests were seen.
    deadlines: VecDeque<(u64, Id)>,
    /// (forget-after time, request), in completion order.
    linger: VecDeque<(u64, Id)>,
    // Exchanges are boxed once and handed through the stages: moves are pointer-sized.
    #[allow(clippy::vec_box)]
    ready: Vec<Box<Exchange>>,
    /// `resolve`'s work list, kept between calls (a parent decided per outbound call).
    stack: Vec<Id>,
    now_ns: u64,
    stats: CorrelateStats,
}

impl Correlator {
    pub fn new(cfg: CorrelateConfig) -> Correlator {
        Correlator::with_ids(cfg, IdGen::from_entropy())
    }

    pub fn with_ids(cfg: CorrelateConfig, ids: IdGen) -> Correlator {
        Correlator {
            pairs: ConnPairs::new(cfg.max_connections),
            lineage: TaskLineage::new(cfg.max_tasks),
            nodes: Nodes::new(cfg.max_requests),
            cfg,
            ids,
            next_id: 0,
            by_request: HashMap::default(),
            inbound: HashMap::default(),
            outbound_by_value: HashMap::new(),
            deadlines: VecDeque::new(),
            linger: VecDeque::new(),
            ready: Vec::new(),
            stack: Vec::new(),
            now_ns: 0,
            stats: CorrelateStats::default(),
        }
    }

    pub fn stats(&self) -> CorrelateStats {
        let mut s = self.stats.clone();
        s.connections_evicted = self.pairs.evicted;
        s.tasks_forgotten = self.lineage.forgotten;
        s.tracked = self.nodes.len() as u64;
        s.held = self.nodes.values().filter(|n| matches!(n.state, State::Held { .. })).count() as u64;
        s
    }

    /// Follow connections and time from the raw events (before the tracker sees them).
    pub fn observe(&mut self, event: &Event) {
        self.now_ns = self.now_ns.max(event.meta().ts_ns);
        if let Event::Task(t) = event {
            self.lineage.record(t);
        }
        self.pairs.observe(event);
    }

    /// Take what the tracker reports; exchanges come out through `out` once resolved.
    pub fn push(&mut self, tracked: Tracked, out: &mut impl FnMut(Box<Exchange>)) {
        match tracked {
            Tracked::Request(mut seen) => self.push_request(&mut seen, out),
            Tracked::Exchange(ex) => self.push_exchange(ex, out),
        }
    }

    /// [`Self::push`] of a request seen; its carried context is taken. (Callers that match
    /// first pass references and the exchange's box alone: a `Tracked` or a `RequestSeen`
    /// moved whole is a memory copy of a few hundred bytes.)
    pub fn push_request(&mut self, seen: &mut RequestSeen, out: &mut impl FnMut(Box<Exchange>)) {
        self.seen(seen);
        self.ready.drain(..).for_each(&mut *out);
    }

    /// [`Self::push`] of a completed exchange.
    pub fn push_exchange(&mut self, ex: Box<Exchange>, out: &mut impl FnMut(Box<Exchange>)) {
        self.completed(ex);
        self.ready.drain(..).for_each(&mut *out);
    }

    /// Time passes: settle what can be, resolve what waited too long, forget old requests.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl FnMut(Box<Exchange>)) {
        self.now_ns = self.now_ns.max(now_ns);
        while let Some(&(at, id)) = self.deadlines.front() {
            if at > self.now_ns {
                break;
            }
            self.deadlines.pop_front();
            self.force(id);
        }
        while let Some(&(at, id)) = self.linger.front() {
            if at > self.now_ns {
                break;
            }
            self.linger.pop_front();
            if self.nodes.get(&id).is_some_and(|n| matches!(n.state, State::Emitted { .. })) {
                self.remove(id);
            }
        }
        self.ready.drain(..).for_each(&mut *out);
    }

    /// The end of the events: resolve everything with what is known, emit what is held.
    pub fn finish(&mut self, out: &mut impl FnMut(Box<Exchange>)) {
        let ids: Vec<Id> = self.nodes.keys().collect();
        ids.into_iter().for_each(|id| self.force(id));
        self.ready.drain(..).for_each(&mut *out);
    }

    /// Its carried context is taken into the node (no string copies).
    fn seen(&mut self, seen: &mut RequestSeen) -> Id {
        self.now_ns = self.now_ns.max(seen.start_ns);
        let request = (seen.conn_id, seen.seq);
        let id = self.next_id;
        // One probe of the map below `max_requests`; at the cap, evicting changes the map,
        // so it is probed again after.
        match self.by_request.entry(request) {
            Entry::Occupied(known) => return *known.get(),
            Entry::Vacant(slot) if self.nodes.len() < self.cfg.max_requests.max(1) => {
                slot.insert(id);
            }
            Entry::Vacant(_) => {
                while self.nodes.len() >= self.cfg.max_requests.max(1) {
                    let Some(oldest) = self.nodes.keys().next() else { break };
                    self.evict(oldest);
                }
                self.by_request.insert(request, id);
            }
        }
        self.next_id += 1;
        let (pair, server) = match seen.role {
            Role::Server => (server_key(seen.local, seen.peer), true),
            Role::Client => (client_key(seen.local, seen.peer), false),
        };
        let span_id = self.ids.span_id();
        self.nodes.insert_with(id, || Node {
            request,
            role: seen.role,
            pid: seen.pid,
            tid: seen.tid,
            pair,
            start_ns: seen.start_ns,
            span_id,
            carried: std::mem::take(&mut seen.carried),
            task_ctx: seen.task_ctx,
            state: State::Waiting(Wait::New),
            dependents: Vec::new(),
            watchers: Vec::new(),
        });
        self.deadlines.push_back((self.now_ns.saturating_add(self.cfg.hold_ns), id));
        if server {
            self.server_seen(id)
        } else {
            self.client_seen(id)
        }
        id
    }

    fn server_seen(&mut self, id: Id) {
        let Some(n) = self.nodes.get(&id) else { return };
        let (pid, pair, start) = (n.pid, n.pair, n.start_ns);
        self.inbound.entry(pid).or_default().push(id);
        if let Some(key) = pair {
            if let Some(client) = self.pairs.server_started(key, start) {
                return self.decide(id, Parent::Local(client), Some(Link::Connection));
            }
            if self.pairs.client_traced(&key) {
                self.pairs.server_waits(key, start, id);
                return self.set_wait(id, Wait::Partner);
            }
        }
        let (parent, link) = self.server_fallback(id);
        self.decide(id, parent, link);
    }

    /// An inbound request without a traced client end: its `traceparent`, else a client
    /// request of another process in flight with the same correlation value, else a new trace.
    fn server_fallback(&self, id: Id) -> (Parent, Option<Link>) {
        let Some(n) = self.nodes.get(&id) else { return (Parent::Root, None) };
        if let Some(tp) = n.carried.parent {
            return (Parent::Remote(tp), Some(Link::Propagated));
        }
        let caller = n.carried.correlation_id.as_ref().and_then(|value| {
            self.outbound_by_value
                .get(value)?
                .iter()
                .filter_map(|c| Some((*c, self.nodes.get(c)?)))
                .filter(|(_, c)| c.pid != n.pid && c.start_ns <= n.start_ns)
                .max_by_key(|(_, c)| c.start_ns)
                .map(|(c, _)| c)
        });
        match caller {
            Some(c) => (Parent::Local(c), Some(Link::Propagated)),
            None => (Parent::Root, None),
        }
    }

    fn client_seen(&mut self, id: Id) {
        let Some(n) = self.nodes.get(&id) else { return };
        let (pid, tid, start, pair, ctx) = (n.pid, n.tid, n.start_ns, n.pair, n.task_ctx);
        let value = n.carried.correlation_id.clone();
        let cands = self.inbound_views(self.inbound.get(&pid).map(Vec::as_slice).unwrap_or_default());
        match pick_at_start(tid, start, &n.carried, &cands, Signal::of(ctx)) {
            Pick::Certain(parent, link) => self.decide(id, Parent::Local(parent), Some(link)),
            Pick::None => match self.after_answer(id) {
                Some(parent) => self.decide(id, Parent::Local(parent), Some(Link::Task)),
                None => {
                    let (parent, link) = self.client_fallback(id);
                    self.decide(id, parent, link);
                }
            },
            Pick::Task(list) => {
                for c in &list {
                    if let Some(cn) = self.nodes.get_mut(c) {
                        cn.watchers.push(id);
                    }
                }
                self.set_wait(id, Wait::Task { cands: list });
            }
            Pick::Ambiguous(list) => self.decide_ambiguous(id, &list),
        }
        if let Some(value) = value {
            self.outbound_by_value.entry(value).or_default().push(id);
        }
        if let Some(key) = pair {
            if let Some(server) = self.pairs.client_started(key, start, id) {
                self.decide(server, Parent::Local(id), Some(Link::Connection));
            }
        }
    }

    /// An outbound call outside any inbound request: its own `traceparent` (an instrumented
    /// caller), else a new trace.
    fn client_fallback(&self, id: Id) -> (Parent, Option<Link>) {
        match self.nodes.get(&id).and_then(|n| n.carried.parent) {
            Some(tp) => (Parent::Remote(tp), Some(Link::Propagated)),
            None => (Parent::Root, None),
        }
    }

    fn inbound_views(&self, ids: &[Id]) -> Vec<Inbound<Id>> {
        ids.iter()
            .filter_map(|id| {
                let n = self.nodes.get(id)?;
                Some(Inbound {
                    key: *id,
                    conn_id: n.request.0,
                    tid: n.tid,
                    start_ns: n.start_ns,
                    trace_id: n.state.trace().map(|t| t.trace_id).or(n.carried.parent.map(|p| p.trace_id)),
                    correlation_id: n.carried.correlation_id.clone(),
                })
            })
            .collect()
    }

    fn completed(&mut self, ex: Box<Exchange>) {
        let end = ex.response_last_ns.unwrap_or(0).max(ex.request_last_ns);
        self.now_ns = self.now_ns.max(end);
        let id = match self.by_request.remove(&(ex.conn_id, ex.request_seq)) {
            Some(id) if self.nodes.contains_key(&id) => id,
            _ => {
                self.stats.unannounced += 1;
                let id = self.seen(&mut RequestSeen::of(&ex));
                self.by_request.remove(&(ex.conn_id, ex.request_seq));
                id
            }
        };
        let answered_by = (ex.role == Role::Server && ex.response_ctx != 0).then(|| {
            let at = ex.response_first_ns.unwrap_or(end);
            self.lineage.incarnation(ex.pid, ex.response_ctx, at, ex.response_tid)
        });
        let Some(n) = self.nodes.get_mut(&id) else { return };
        let (role, pid, pair, value) = (n.role, n.pid, n.pair, n.carried.correlation_id.clone());
        let watchers = std::mem::take(&mut n.watchers);
        let awaited_partner = matches!(n.state, State::Waiting(Wait::Partner));
        // It answered, so its client's request was sent long ago: it is not coming. Unless
        // over TLS: the client's plaintext is reported when its SSL_write returns, which can
        // be after the answer came; it keeps waiting (indexed), at most the hold.
        let still_awaited = awaited_partner && ex.tls;
        self.unindex(id, role, pid, pair.filter(|_| !still_awaited), value.as_deref());
        if awaited_partner && !still_awaited {
            let (parent, link) = self.server_fallback(id);
            self.decide(id, parent, link);
        }
        // For the calls that task makes after answering (`after_answer`).
        if let Some(by) = answered_by.filter(|by| role == Role::Server && by.1 != 0) {
            self.lineage.set_answered(pid, by, id);
        }
        let done = Done { end_ns: end, answered_by };
        if let Some(ex) = self.nodes.get_mut(&id).and_then(|n| n.complete(ex, done)) {
            self.ready.push(ex);
        }
        // An answer may decide the calls that watched it.
        watchers.into_iter().for_each(|w| self.settle(w, false));
        self.linger.push_back((self.now_ns.saturating_add(self.cfg.hold_ns), id));
    }

    /// Drop a request from the in-flight indexes (it completed or is being forgotten).
    fn unindex(&mut self, id: Id, role: Role, pid: u32, pair: Option<PairKey>, value: Option<&str>) {
        if role == Role::Server {
            if let Some(list) = self.inbound.get_mut(&pid) {
                list.retain(|x| *x != id);
                // An emptied list is kept for the process's next request (dropped and made
                // anew it cost an allocation per request), unless grown large or the map
                // holds many processes: bounded either way.
                if list.is_empty() && (list.capacity() > KEPT_LIST_CAPACITY || self.inbound.len() > KEPT_EMPTY_LISTS) {
                    self.inbound.remove(&pid);
                }
            }
        }
        if let Some(key) = pair {
            self.pairs.forget(&key, id);
        }
        if let Some(value) = value {
            if let Some(list) = self.outbound_by_value.get_mut(value) {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    self.outbound_by_value.remove(value);
                }
            }
        }
    }

    /// What an unresolved request waits for now.
    fn set_wait(&mut self, id: Id, wait: Wait) {
        if let Some(State::Waiting(w) | State::Held { wait: w, .. }) = self.nodes.get_mut(&id).map(|n| &mut n.state) {
            *w = wait;
        }
    }

    /// A call waiting for its task's answer: decided once a candidate's response shows the
    /// call's task (or an ancestor) answered it; ambiguous once every candidate has answered
    /// otherwise, or when forced (the hold expired).
    fn settle(&mut self, id: Id, force: bool) {
        let Some(n) = self.nodes.get(&id) else { return };
        let Some(Wait::Task { cands }) = n.state.wait() else { return };
        // The call's task and its ancestors, as known now: an eager task's call is sent
        // inside `Task.__init__`, before the task's creation is reported.
        let chain = self.lineage.ancestry(n.pid, n.task_ctx, n.start_ns, n.tid);
        let mut answered = Vec::new();
        let mut open = 0;
        for c in cands {
            let Some(cn) = self.nodes.get(c) else { continue };
            match cn.state.done() {
                None => open += 1,
                Some(Done { end_ns, answered_by: Some(by) }) => {
                    answered.push(Answered { key: *c, start_ns: cn.start_ns, end_ns, answered_by: by });
                }
                Some(Done { answered_by: None, .. }) => {}
            }
        }
        match task_match(n.start_ns, &chain, &answered) {
            // Its own task answered that request: nothing nearer can.
            Some((parent, 0)) => return self.decide(id, Parent::Local(parent), Some(Link::Task)),
            // An ancestor did: once every candidate has answered, none nearer did.
            Some((parent, _)) if open == 0 => return self.decide(id, Parent::Local(parent), Some(Link::Task)),
            _ => {}
        }
        // Every candidate answered, none by the call's task: it may be finishing one it
        // answered before (with candidates still open, it may be about to serve one of them).
        if open == 0 {
            if let Some(parent) = self.after_answer(id) {
                return self.decide(id, Parent::Local(parent), Some(Link::Task));
            }
        }
        if open == 0 || force {
            let cands = cands.clone();
            self.decide_ambiguous(id, &cands);
        }
    }

    /// A call made after its task answered a request, and caused by it: Starlette's background
    /// tasks (the seed's audit write after the 202) run in the request's task after the
    /// response. Certain when the call's own task incarnation answered request R before the
    /// call, as R was the last it answered (a task serves one request at a time: a per-request
    /// task serves only R, a per-connection task had not begun the next, which would be in
    /// flight). Or when an ancestor answered R and created the call's line of tasks while
    /// serving R (between R's start and its answer). Only incarnations whose creation was seen:
    /// a thread's base context answers request after request.
    fn after_answer(&self, id: Id) -> Option<Id> {
        let n = self.nodes.get(&id)?;
        if Signal::of(n.task_ctx) != Signal::Task {
            return None;
        }
        let chain = self.lineage.ancestry(n.pid, n.task_ctx, n.start_ns, n.tid);
        // When each link of the chain was made: the call itself, then each task's creation.
        let made_at = std::iter::once(n.start_ns).chain(chain.iter().map(|c| c.1));
        for (depth, (inc, at)) in chain.iter().zip(made_at).enumerate() {
            if inc.1 == 0 {
                break;
            }
            let Some(r) = self.lineage.answered(n.pid, *inc) else { continue };
            let Some((start, done)) = self.nodes.get(&r).and_then(|rn| Some((rn.start_ns, rn.state.done()?))) else {
                continue;
            };
            let certain = if depth == 0 { done.end_ns < at } else { start <= at && at <= done.end_ns };
            return certain.then_some(r);
        }
        None
    }

    /// No certain parent among `cands`: the call starts its own trace (unless it carries a
    /// context of its own), labelled ambiguous, with span links to the candidates.
    fn decide_ambiguous(&mut self, id: Id, cands: &[Id]) {
        let (parent, link) = self.client_fallback(id);
        if link.is_some() {
            return self.decide(id, parent, link);
        }
        /// Span links kept per call at most.
        const MAX_CANDIDATES: usize = 8;
        let links: Vec<SpanRef> = cands
            .iter()
            .filter_map(|c| self.nodes.get(c))
            .filter_map(|cn| Some(SpanRef { trace_id: cn.state.trace()?.trace_id, span_id: cn.span_id }))
            .take(MAX_CANDIDATES)
            .collect();
        self.decide(id, Parent::Ambiguous(links), Some(Link::Ambiguous));
    }

    /// The hold expired: take the best answer known now. A parent may have been seen after its
    /// child (the client end of a connection can be reported after the server end), so the
    /// chain of waiting parents above is resolved first, from the top.
    fn force(&mut self, id: Id) {
        // Most holds expire on a request long resolved: nothing to do, nothing to allocate.
        if self.nodes.get(&id).and_then(|n| n.state.wait()).is_none() {
            return;
        }
        let mut chain = vec![id];
        while let Some(n) = chain.last().and_then(|top| self.nodes.get(top)) {
            let Some(&Wait::Parent(next, _)) = n.state.wait() else { break };
            let parent_known = self.nodes.get(&next).is_none_or(|p| p.state.trace().is_some());
            if chain.len() >= 64 || chain.contains(&next) || parent_known {
                break;
            }
            chain.push(next);
        }
        chain.into_iter().rev().for_each(|n| self.force_one(n));
    }

    fn force_one(&mut self, id: Id) {
        let Some(n) = self.nodes.get(&id) else { return };
        match n.state.wait() {
            None => return,
            Some(Wait::Partner) => {
                self.stats.expired += 1;
                if let Some(key) = n.pair {
                    self.pairs.forget(&key, id);
                }
                let (parent, link) = self.server_fallback(id);
                self.decide(id, parent, link);
            }
            Some(Wait::Task { .. }) => {
                self.stats.expired += 1;
                self.settle(id, true);
            }
            Some(Wait::New | Wait::Parent(..)) => {}
        }
        if self.nodes.get(&id).is_some_and(|n| n.state.trace().is_none()) {
            // Its parent could not be resolved (forgotten, or a cycle no real traffic makes).
            self.stats.orphaned += 1;
            self.decide(id, Parent::Root, None);
        }
    }

    /// `id`'s parent is chosen. Its trace is known at once, unless the parent is a request
    /// seen here whose own trace is still to come: then it waits for that.
    fn decide(&mut self, id: Id, parent: Parent, link: Option<Link>) {
        let Some(n) = self.nodes.get(&id) else { return };
        if n.state.trace().is_some() {
            return;
        }
        let trace = match parent {
            // No parent; the link says why when there is a reason (ambiguous).
            Parent::Root => Resolved::root(self.ids.trace_id(), link, Vec::new()),
            Parent::Ambiguous(candidates) => Resolved::root(self.ids.trace_id(), link, candidates),
            Parent::Remote(tp) => Resolved {
                trace_id: tp.trace_id,
                parent: Some(tp.parent_id),
                link,
                trace_state: n.carried.trace_state.clone(),
                propagated: None,
                candidates: Vec::new(),
            },
            Parent::Local(p) => {
                self.set_wait(id, Wait::Parent(p, link));
                let mut stack = std::mem::take(&mut self.stack);
                stack.push(id);
                self.stack = self.resolve(stack);
                return;
            }
        };
        let waiting = self.set_trace(id, trace, None);
        self.resolve(waiting);
    }

    /// Give each request of `stack` waiting for its parent the parent's trace if it has one,
    /// then, in turn, everything that waited on it. Returns the emptied stack (for reuse).
    fn resolve(&mut self, mut stack: Vec<Id>) -> Vec<Id> {
        while let Some(id) = stack.pop() {
            let Some(&Wait::Parent(p, link)) = self.nodes.get(&id).and_then(|n| n.state.wait()) else { continue };
            let (trace, parent) = match self.nodes.get_mut(&p) {
                Some(pn) => match pn.state.trace() {
                    Some(t) => {
                        let trace = Resolved {
                            trace_id: t.trace_id,
                            parent: Some(pn.span_id),
                            link,
                            trace_state: t.trace_state.clone(),
                            propagated: None,
                            candidates: Vec::new(),
                        };
                        (trace, Some(p))
                    }
                    None => {
                        if !pn.dependents.contains(&id) {
                            pn.dependents.push(id);
                        }
                        continue;
                    }
                },
                None => {
                    self.stats.orphaned += 1;
                    (Resolved::root(self.ids.trace_id(), None, Vec::new()), None)
                }
            };
            stack.append(&mut self.set_trace(id, trace, parent));
        }
        stack
    }

    /// `id`'s trace is known (from `parent`, a request seen here, if it has one): count it,
    /// pass on its exchange if it was held, and return the requests that waited for it.
    fn set_trace(&mut self, id: Id, mut trace: Resolved, parent: Option<Id>) -> Vec<Id> {
        trace.propagated = parent.and_then(|p| self.carried_inbound_context(id, p, trace.trace_id));
        match trace.link {
            Some(l) => self.stats.links[link_index(l)] += 1,
            None => self.stats.roots += 1,
        }
        let Some(n) = self.nodes.get_mut(&id) else { return Vec::new() };
        if let Some(ex) = n.resolve(trace) {
            self.ready.push(ex);
        }
        std::mem::take(&mut n.dependents)
    }

    /// For an outbound call whose parent is an inbound request of the same process: did the
    /// call carry that request's trace (id) or correlation value?
    fn carried_inbound_context(&self, id: Id, parent: Id, trace_id: TraceId) -> Option<bool> {
        let (n, p) = (self.nodes.get(&id)?, self.nodes.get(&parent)?);
        if n.role != Role::Client || p.role != Role::Server || n.pid != p.pid {
            return None;
        }
        let same_trace = n.carried.parent.is_some_and(|tp| tp.trace_id == trace_id);
        let same_value = n.carried.correlation_id.is_some() && n.carried.correlation_id == p.carried.correlation_id;
        Some(same_trace || same_value)
    }

    /// Make room: resolve the request with what is known, then forget it.
    fn evict(&mut self, id: Id) {
        // Counted unless its exchange already went out.
        let in_flight = self.nodes.get(&id).is_some_and(|n| !matches!(n.state, State::Emitted { .. }));
        if in_flight {
            self.stats.evicted += 1;
        }
        self.force(id);
        self.remove(id);
    }

    fn remove(&mut self, id: Id) {
        // Read in place (moving a node out costs copies); it is dropped in place below.
        let Some(n) = self.nodes.get_mut(&id) else { return };
        let (role, pid, pair, request, done) = (n.role, n.pid, n.pair, n.request, n.state.done());
        let value = n.carried.correlation_id.take();
        // Unreachable after `force`, but never lose an exchange.
        let held = n.take_held();
        self.nodes.remove(&id);
        if done.is_some() {
            // `completed` dropped it from `by_request` and the indexes, all but a pair still
            // awaited (nothing indexes a request again once completed).
            if let Some(key) = pair {
                self.pairs.forget(&key, id);
            }
        } else {
            if self.by_request.get(&request) == Some(&id) {
                self.by_request.remove(&request);
            }
            self.unindex(id, role, pid, pair, value.as_deref());
        }
        self.ready.extend(held);
    }
}
