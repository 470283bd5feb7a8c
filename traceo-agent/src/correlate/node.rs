//! One request's life in the correlation stage: the parent chosen for it, what it waits
//! for, its trace once known, and its exchange held until then (`State`).

use crate::http::{Exchange, Link, Role, SpanRef, TraceContext};

use super::context::{Carried, TraceParent};
use super::ids::{SpanId, TraceId};
use super::pairs::PairKey;
use super::tasks::Incarnation;

pub(super) type Id = u64;

/// The parent chosen for a request.
#[derive(Debug)]
pub(super) enum Parent {
    /// A new trace starts here.
    Root,
    /// Several inbound requests could have made the call and nothing certain tells which: a
    /// new trace starts here, with span links to those requests.
    Ambiguous(Vec<SpanRef>),
    /// A caller we did not see, named by the request's `traceparent`.
    Remote(TraceParent),
    Local(Id),
}

/// What a request's trace waits for.
#[derive(Debug)]
pub(super) enum Wait {
    /// Just seen: `server_seen` / `client_seen` choose what it waits for.
    New,
    /// A server request waiting for the client end of its connection.
    Partner,
    /// An outbound call of a task-tracked process, waiting for a candidate's response to
    /// show which task answered it (the call's task and its ancestors are looked up then).
    Task { cands: Vec<Id> },
    /// Its parent is chosen, another request seen here: its trace follows once the
    /// parent's is known.
    Parent(Id, Option<Link>),
}

/// A request's place in its trace, once known.
#[derive(Debug)]
pub(super) struct Resolved {
    pub(super) trace_id: TraceId,
    pub(super) parent: Option<SpanId>,
    pub(super) link: Option<Link>,
    pub(super) trace_state: Option<String>,
    /// An outbound call under an inbound request of its process: did it carry that
    /// request's context?
    pub(super) propagated: Option<bool>,
    /// A call left ambiguous: the spans of the requests that could have made it.
    pub(super) candidates: Vec<SpanRef>,
}

impl Resolved {
    /// The first span of a new trace.
    pub(super) fn root(trace_id: TraceId, link: Option<Link>, candidates: Vec<SpanRef>) -> Resolved {
        Resolved { trace_id, parent: None, link, trace_state: None, propagated: None, candidates }
    }
}

/// A completed exchange, as calls waiting on its request's task need it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Done {
    /// Its last byte.
    pub(super) end_ns: u64,
    /// An inbound request: the incarnation of the context that wrote its response.
    pub(super) answered_by: Option<Incarnation>,
}

/// Where a request is in its life. Its trace becomes known once its parent's is, and its
/// exchange completes whenever it does; an exchange is passed on once both happened.
pub(super) enum State {
    /// In flight, its trace not known yet.
    Waiting(Wait),
    /// In flight, its trace known (its children can take theirs).
    Resolved(Resolved),
    /// Completed before its trace was known: the exchange is held until it is. Kept in the
    /// box it came in: inline it made every node ~1 KiB, which the node map moved on each
    /// insert and removal (a tenth of the agent's CPU under load).
    Held { wait: Wait, exchange: Box<Exchange>, done: Done },
    /// Completed and resolved: the exchange was passed on; the node stays for late children.
    Emitted { trace: Resolved, done: Done },
}

impl State {
    pub(super) fn wait(&self) -> Option<&Wait> {
        match self {
            State::Waiting(wait) | State::Held { wait, .. } => Some(wait),
            State::Resolved(_) | State::Emitted { .. } => None,
        }
    }

    pub(super) fn trace(&self) -> Option<&Resolved> {
        match self {
            State::Resolved(trace) | State::Emitted { trace, .. } => Some(trace),
            State::Waiting(_) | State::Held { .. } => None,
        }
    }

    pub(super) fn done(&self) -> Option<Done> {
        match self {
            State::Held { done, .. } | State::Emitted { done, .. } => Some(*done),
            State::Waiting(_) | State::Resolved(_) => None,
        }
    }
}

pub(super) struct Node {
    pub(super) request: (u64, u64),
    pub(super) role: Role,
    pub(super) pid: u32,
    pub(super) tid: u32,
    pub(super) pair: Option<PairKey>,
    pub(super) start_ns: u64,
    pub(super) span_id: SpanId,
    pub(super) carried: Carried,
    /// The runtime context that wrote the request (`RequestSeen::task_ctx`).
    pub(super) task_ctx: u64,
    pub(super) state: State,
    /// Requests whose parent this is, waiting for its trace.
    pub(super) dependents: Vec<Id>,
    /// Undecided calls that have this (inbound) request among their candidates.
    pub(super) watchers: Vec<Id>,
}

impl Node {
    /// Its trace is known: an exchange held for it goes out with it.
    pub(super) fn resolve(&mut self, mut trace: Resolved) -> Option<Box<Exchange>> {
        let (state, out) = match std::mem::replace(&mut self.state, State::Waiting(Wait::New)) {
            State::Waiting(_) => (State::Resolved(trace), None),
            State::Held { mut exchange, done, .. } => {
                fill(&mut exchange, self.span_id, &mut trace);
                (State::Emitted { trace, done }, Some(exchange))
            }
            // A trace is given once (`decide` and `resolve` check).
            known @ (State::Resolved(_) | State::Emitted { .. }) => (known, None),
        };
        self.state = state;
        out
    }

    /// Its exchange completed: it goes out now if its trace is known, else it is held.
    pub(super) fn complete(&mut self, mut exchange: Box<Exchange>, done: Done) -> Option<Box<Exchange>> {
        let (state, out) = match std::mem::replace(&mut self.state, State::Waiting(Wait::New)) {
            State::Waiting(wait) => (State::Held { wait, exchange, done }, None),
            State::Resolved(mut trace) | State::Emitted { mut trace, .. } => {
                fill(&mut exchange, self.span_id, &mut trace);
                (State::Emitted { trace, done }, Some(exchange))
            }
            // A request completes once (its announcement is dropped then); should another
            // exchange come, the earlier one still goes out.
            State::Held { wait, exchange: earlier, .. } => (State::Held { wait, exchange, done }, Some(earlier)),
        };
        self.state = state;
        out
    }
}

impl Node {
    /// The exchange held, taken out (the node is being forgotten).
    pub(super) fn take_held(&mut self) -> Option<Box<Exchange>> {
        if !matches!(self.state, State::Held { .. }) {
            return None;
        }
        match std::mem::replace(&mut self.state, State::Waiting(Wait::New)) {
            State::Held { exchange, .. } => Some(exchange),
            _ => None,
        }
    }
}

/// The exchange's trace context, from its request's.
pub(super) fn fill(ex: &mut Exchange, span_id: SpanId, trace: &mut Resolved) {
    ex.trace = Some(TraceContext {
        trace_id: trace.trace_id,
        span_id,
        parent: trace.parent,
        link: trace.link,
        trace_state: trace.trace_state.clone(),
    });
    ex.propagated = trace.propagated;
    ex.candidates = std::mem::take(&mut trace.candidates);
}
