//! Which inbound request an outbound call belongs to, inside one process, without code
//! changes: pure decisions over the inbound requests in flight, so they are tested alone.
//!
//! - A propagated header ties them: the call carries the inbound trace id, or its
//!   correlation value (`propagated`).
//! - One inbound request in flight on the calling thread, or, none there, one in the whole
//!   process (an event loop serving a single request): certain (`thread`).
//! - Several (an event loop serving many at once): a guess (`inferred`), made when the call
//!   ends. An event loop runs handlers in the order their requests arrived, and a handler's
//!   first await is typically its call; so the process's undecided calls, in the order they
//!   started, are matched with its inbound requests in the order they arrived, skipping
//!   requests already claimed by a certain or decided call and windows that do not enclose
//!   the call (`preferred`). With no such request: the narrowest enclosing window. Measured
//!   on uvicorn with 50 concurrent requests (tests/spans.rs): the narrowest window alone chose
//!   right for none of the ambiguous calls, the arrival order for (nearly) all.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use crate::http::Link;

use super::context::Carried;
use super::ids::TraceId;

/// An inbound (server) request of the calling process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound<K> {
    pub key: K,
    pub tid: u32,
    pub start_ns: u64,
    /// `None` while it is in flight.
    pub end_ns: Option<u64>,
    pub trace_id: Option<TraceId>,
    pub correlation_id: Option<String>,
    /// Outbound calls attributed to it so far (certain or guessed).
    pub calls: u32,
}

/// What is known when the outbound request is seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick<K> {
    /// No inbound request encloses it.
    None,
    Certain(K, Link),
    /// Wait for the call to end, then [`settle`] among these candidates.
    Ambiguous(Vec<K>),
}

/// Choose among the process's inbound requests in flight when an outbound request is seen.
pub fn pick_at_start<K: Clone>(tid: u32, start_ns: u64, carried: &Carried, in_flight: &[Inbound<K>]) -> Pick<K> {
    // Only a request that started before the call can have made it.
    let cands: Vec<&Inbound<K>> = in_flight.iter().filter(|c| c.start_ns < start_ns).collect();
    let latest = |list: &[&Inbound<K>]| list.iter().max_by_key(|c| c.start_ns).map(|c| c.key.clone());
    let tied: Vec<&Inbound<K>> = cands
        .iter()
        .copied()
        .filter(|c| {
            let same_trace = carried.parent.is_some_and(|p| c.trace_id == Some(p.trace_id));
            let same_id = carried.correlation_id.is_some() && c.correlation_id == carried.correlation_id;
            same_trace || same_id
        })
        .collect();
    if let Some(key) = latest(&tied) {
        return Pick::Certain(key, Link::Propagated);
    }
    let on_thread: Vec<&Inbound<K>> = cands.iter().copied().filter(|c| c.tid == tid).collect();
    let pool = if on_thread.is_empty() { cands } else { on_thread };
    match pool.as_slice() {
        [] => Pick::None,
        [only] => Pick::Certain(only.key.clone(), Link::Thread),
        many => Pick::Ambiguous(many.iter().map(|c| c.key.clone()).collect()),
    }
}

/// An undecided call of the process, for [`preferred`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call<K> {
    pub start_ns: u64,
    /// `None` while it runs.
    pub end_ns: Option<u64>,
    pub cands: Vec<K>,
}

fn encloses<K>(c: &Inbound<K>, start_ns: u64, end_ns: Option<u64>) -> bool {
    c.start_ns < start_ns && c.end_ns.is_none_or(|e| e >= end_ns.unwrap_or(start_ns))
}

/// The arrival-order guess for the last of `calls` (a process's undecided calls, in the order
/// they started): each call in turn takes the earliest-arrived candidate that encloses it and
/// that nothing has claimed yet (`calls > 0`, or taken by an earlier call here). `inbound`
/// holds every call's candidates.
pub fn preferred<K: Clone + Eq + Hash>(calls: &[Call<K>], inbound: &[Inbound<K>]) -> Option<K> {
    let by_key: HashMap<&K, &Inbound<K>> = inbound.iter().map(|c| (&c.key, c)).collect();
    let mut taken: HashSet<&K> = inbound.iter().filter(|c| c.calls > 0).map(|c| &c.key).collect();
    let mut last = None;
    for call in calls {
        last = call
            .cands
            .iter()
            .filter_map(|k| by_key.get(k).copied())
            .filter(|c| !taken.contains(&c.key) && encloses(c, call.start_ns, call.end_ns))
            .min_by_key(|c| c.start_ns);
        if let Some(c) = last {
            taken.insert(&c.key);
        }
    }
    last.map(|c| c.key.clone())
}

/// The outcome of waiting on windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle<K> {
    Wait,
    /// The parent, or none when no window encloses the call.
    Parent(Option<K>),
}

/// The parent of the call `[start, end]` among the candidates: the preferred one if its
/// window encloses the call, else [`narrowest_enclosing`]. Waits for the call to end (unless
/// forced: the hold expired).
pub fn settle<K: Clone + PartialEq>(
    start_ns: u64,
    end_ns: Option<u64>,
    cands: &[Inbound<K>],
    preferred: Option<&K>,
    now_ns: u64,
    force: bool,
) -> Settle<K> {
    if end_ns.is_none() && !force {
        return Settle::Wait;
    }
    match cands.iter().find(|c| Some(&c.key) == preferred) {
        Some(p) if encloses(p, start_ns, end_ns) => Settle::Parent(Some(p.key.clone())),
        _ => narrowest_enclosing(start_ns, end_ns, cands, now_ns, force),
    }
}

/// Of the candidates, the narrowest window enclosing the call `[start, end]`.
///
/// Not forced, it answers only when no later information can change the answer: the call
/// has ended, and every candidate still open has already lasted longer than the best closed
/// one. Forced (the hold expired), open windows count as ending `now_ns`.
pub fn narrowest_enclosing<K: Clone>(
    start_ns: u64,
    end_ns: Option<u64>,
    cands: &[Inbound<K>],
    now_ns: u64,
    force: bool,
) -> Settle<K> {
    if end_ns.is_none() && !force {
        return Settle::Wait;
    }
    let end = end_ns.unwrap_or(start_ns);
    let width = |c: &Inbound<K>| c.end_ns.unwrap_or(now_ns.max(end)).saturating_sub(c.start_ns);
    let enclosing: Vec<&Inbound<K>> = cands.iter().filter(|c| encloses(c, start_ns, end_ns)).collect();
    // Narrowest first; on a tie the later start (nearer the call).
    let best = |list: &[&Inbound<K>]| {
        list.iter().min_by_key(|c| (width(c), std::cmp::Reverse(c.start_ns))).map(|c| (*c).clone())
    };
    if force {
        return Settle::Parent(best(&enclosing).map(|c| c.key));
    }
    let (closed, open): (Vec<&Inbound<K>>, Vec<&Inbound<K>>) = enclosing.iter().partition(|c| c.end_ns.is_some());
    match best(&closed) {
        None if open.is_empty() => Settle::Parent(None),
        None => Settle::Wait,
        Some(c) if open.iter().all(|o| width(o) > width(&c)) => Settle::Parent(Some(c.key)),
        Some(_) => Settle::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::context::TraceParent;

    fn inbound(key: u32, tid: u32, start_ns: u64, end_ns: Option<u64>) -> Inbound<u32> {
        Inbound { key, tid, start_ns, end_ns, trace_id: None, correlation_id: None, calls: 0 }
    }

    #[test]
    fn one_request_on_the_thread_is_certain() {
        let none = Carried::default();
        // A threaded server: two requests in flight, on threads 10 and 11.
        let flight = [inbound(1, 10, 100, None), inbound(2, 11, 150, None)];
        assert_eq!(pick_at_start(11, 200, &none, &flight), Pick::Certain(2, Link::Thread));
        assert_eq!(pick_at_start(10, 200, &none, &flight), Pick::Certain(1, Link::Thread));
        // A call from a third thread: two candidates in the process.
        assert_eq!(pick_at_start(12, 200, &none, &flight), Pick::Ambiguous(vec![1, 2]));
        // An event loop with one request in flight: certain.
        assert_eq!(pick_at_start(10, 200, &none, &flight[..1]), Pick::Certain(1, Link::Thread));
        // A request that started after the call cannot have made it.
        assert_eq!(pick_at_start(11, 120, &none, &flight), Pick::Certain(1, Link::Thread));
        assert_eq!(pick_at_start(10, 50, &none, &flight), Pick::None);
    }

    #[test]
    fn propagated_context_or_correlation_value_wins() {
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut a = inbound(1, 10, 100, None);
        a.trace_id = Some(tp.trace_id);
        let mut b = inbound(2, 10, 110, None);
        b.correlation_id = Some("req-9".into());
        let flight = [a, b, inbound(3, 10, 120, None)];
        let with_trace = Carried { parent: Some(tp), ..Carried::default() };
        assert_eq!(pick_at_start(10, 200, &with_trace, &flight), Pick::Certain(1, Link::Propagated));
        let with_id = Carried { correlation_id: Some("req-9".into()), ..Carried::default() };
        assert_eq!(pick_at_start(10, 200, &with_id, &flight), Pick::Certain(2, Link::Propagated));
        let other = Carried { correlation_id: Some("nope".into()), ..Carried::default() };
        assert_eq!(pick_at_start(10, 200, &other, &flight), Pick::Ambiguous(vec![1, 2, 3]));
    }

    #[test]
    fn undecided_calls_take_inbound_requests_in_arrival_order() {
        // An event loop: /1 already has a certain call; /2, /3 and /4 have none.
        let mut c = [
            inbound(1, 10, 100, None),
            inbound(2, 10, 110, None),
            inbound(3, 10, 120, None),
            inbound(4, 10, 130, None),
        ];
        c[0].calls = 1;
        let call = |start_ns, end_ns| Call { start_ns, end_ns, cands: vec![1, 2, 3, 4] };
        // The first undecided call takes /2, the next /3.
        assert_eq!(preferred(&[call(200, Some(300))], &c), Some(2));
        assert_eq!(preferred(&[call(200, None), call(210, Some(300))], &c), Some(3));
        // /2 answered before the earlier call ended: that call takes /3, this one /4.
        c[1].end_ns = Some(250);
        assert_eq!(preferred(&[call(200, Some(300)), call(210, Some(300))], &c), Some(4));
        assert_eq!(settle(210, None, &c, Some(&4), 250, false), Settle::Wait, "the call is still running");
        assert_eq!(settle(210, Some(300), &c, Some(&4), 300, false), Settle::Parent(Some(4)));
        // A preference that does not enclose the call falls back to the narrowest window.
        c[3].end_ns = Some(280);
        c[2].end_ns = Some(400);
        c[0].end_ns = Some(900);
        assert_eq!(settle(210, Some(300), &c, Some(&4), 900, false), Settle::Parent(Some(3)));
    }

    #[test]
    fn narrowest_enclosing_window_waits_until_it_is_sure() {
        // Call [200, 300]. Window 1 [100, 900], window 2 [150, 320], window 3 [120, 250] ends
        // inside the call: it does not enclose it.
        let mut c = [inbound(1, 10, 100, None), inbound(2, 10, 150, None), inbound(3, 10, 120, Some(250))];
        assert_eq!(narrowest_enclosing(200, None, &c, 300, false), Settle::Wait, "the call is still running");
        assert_eq!(narrowest_enclosing(200, Some(300), &c, 300, false), Settle::Wait, "nothing closed encloses yet");
        c[1].end_ns = Some(320);
        // Window 1 is open but has lasted 220 ns (at 320) > 170: it cannot become narrower.
        assert_eq!(narrowest_enclosing(200, Some(300), &c, 320, false), Settle::Parent(Some(2)));
        // Forced while window 2 is still open: open windows end now.
        c[1].end_ns = None;
        assert_eq!(narrowest_enclosing(200, Some(300), &c, 310, true), Settle::Parent(Some(2)));
        // Nothing encloses a call that outlived every window (a background task).
        let gone = [inbound(1, 10, 100, Some(250))];
        assert_eq!(narrowest_enclosing(200, Some(300), &gone, 400, false), Settle::Parent(None));
    }

    #[test]
    fn an_open_window_that_could_still_be_narrower_keeps_it_waiting() {
        // Window 2 started just before the call and is still open at 330: it has lasted 40 ns,
        // less than window 1's 300, so it could still close as the narrower one.
        let c = [inbound(1, 10, 0, Some(300)), inbound(2, 10, 290, None)];
        assert_eq!(narrowest_enclosing(295, Some(299), &c, 330, false), Settle::Wait);
        assert_eq!(narrowest_enclosing(295, Some(299), &c, 400, false), Settle::Wait, "110 < 300");
        assert_eq!(narrowest_enclosing(295, Some(299), &c, 600, false), Settle::Parent(Some(1)));
    }
}
