//! Which inbound request an outbound call belongs to, inside one process, without code
//! changes: pure decisions over the inbound requests in flight, so they are tested alone.
//! Only certain evidence makes a parent; anything less leaves the call without one.
//!
//! - A propagated header ties them: the call carries the inbound trace id, or its
//!   correlation value (`propagated`).
//! - A threaded server: the calling thread serves exactly one inbound request while other
//!   threads serve the rest (`thread`).
//! - A runtime that names the request a call serves (nginx: the client connection whose
//!   request made it call upstream): that connection's request in flight (`task`).
//! - A runtime that reports its tasks (CPython asyncio): the call waits for an inbound
//!   request whose response is written by the call's task or one of its ancestors
//!   (`task`, decided in [`task_match`]).
//! - No runtime signal: one inbound request in flight in the whole process (`thread`);
//!   several (an event loop serving many at once) is `Ambiguous`: no parent, never a guess.

use crate::http::Link;

use super::context::Carried;
use super::ids::TraceId;
use super::tasks::Incarnation;

/// An inbound (server) request of the calling process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound<K> {
    pub key: K,
    /// Its connection.
    pub conn_id: u64,
    pub tid: u32,
    pub start_ns: u64,
    pub trace_id: Option<TraceId>,
    pub correlation_id: Option<String>,
}

/// What is known when the outbound request is seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick<K> {
    /// No inbound request encloses it.
    None,
    Certain(K, Link),
    /// Wait for these candidates' responses: the runtime will tell (see [`task_match`]).
    Task(Vec<K>),
    /// Several candidates and no signal that can tell them apart.
    Ambiguous(Vec<K>),
}

/// What the runtime said about the call (from `Data::task_ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    None,
    /// The call's task is known (its context address).
    Task,
    /// The call serves the request in flight on this inbound connection.
    Serves(u64),
}

impl Signal {
    pub fn of(task_ctx: u64) -> Signal {
        match task_ctx {
            0 => Signal::None,
            c if c & traceo_ebpf_common::CONN_CTX != 0 => Signal::Serves(c & !traceo_ebpf_common::CONN_CTX),
            _ => Signal::Task,
        }
    }
}

/// Choose among the process's inbound requests in flight when an outbound request is seen.
pub fn pick_at_start<K: Clone>(
    tid: u32,
    start_ns: u64,
    carried: &Carried,
    in_flight: &[Inbound<K>],
    signal: Signal,
) -> Pick<K> {
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
    if let Signal::Serves(conn) = signal {
        // One request at a time on a client connection (HTTP/1.x): the latest one there.
        if let Some(key) = latest(&cands.iter().copied().filter(|c| c.conn_id == conn).collect::<Vec<_>>()) {
            return Pick::Certain(key, Link::Task);
        }
    }
    let runtime = signal == Signal::Task;
    let keys = |list: &[&Inbound<K>]| list.iter().map(|c| c.key.clone()).collect::<Vec<K>>();
    let on_thread: Vec<&Inbound<K>> = cands.iter().copied().filter(|c| c.tid == tid).collect();
    let threaded = on_thread.len() < cands.len();
    if let ([only], true) = (on_thread.as_slice(), threaded) {
        return Pick::Certain(only.key.clone(), Link::Thread);
    }
    let pool = if on_thread.is_empty() { cands } else { on_thread };
    if runtime && !pool.is_empty() {
        return Pick::Task(keys(&pool));
    }
    match pool.as_slice() {
        [] => Pick::None,
        [only] => Pick::Certain(only.key.clone(), Link::Thread),
        many => Pick::Ambiguous(keys(many)),
    }
}

/// A candidate inbound request whose response has been written, for [`task_match`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered<K> {
    pub key: K,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The incarnation of the context that wrote the response.
    pub answered_by: Incarnation,
}

/// The call (started at `start_ns`, its task's ancestry `chain`, nearest first) belongs to
/// the answered request whose responding context is the nearest ancestor, if that request
/// was in flight when the call started; with that ancestor's depth in `chain` (0: the call's
/// own task). Two requests answered by the same incarnation and both in flight (pipelining
/// on one connection's task) tell nothing: no match.
///
/// A match deeper than 0 is certain only once no candidate is left to answer: a nearer
/// ancestor may yet answer another one, and a farther link can be stale (a loop callback's
/// context copy at the address of a finished task inherits that task's lineage).
pub fn task_match<K: Clone>(start_ns: u64, chain: &[Incarnation], answered: &[Answered<K>]) -> Option<(K, usize)> {
    for (depth, inc) in chain.iter().enumerate() {
        let hits: Vec<&Answered<K>> = answered
            .iter()
            .filter(|a| a.answered_by == *inc && a.start_ns < start_ns && a.end_ns >= start_ns)
            .collect();
        match hits.as_slice() {
            [] => continue,
            [one] => return Some((one.key.clone(), depth)),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::context::TraceParent;

    fn inbound(key: u32, tid: u32, start_ns: u64) -> Inbound<u32> {
        Inbound { key, conn_id: u64::from(key), tid, start_ns, trace_id: None, correlation_id: None }
    }

    #[test]
    fn a_thread_serving_one_request_among_threads_is_certain() {
        let none = Carried::default();
        // A threaded server: two requests in flight, on threads 10 and 11.
        let flight = [inbound(1, 10, 100), inbound(2, 11, 150)];
        assert_eq!(pick_at_start(11, 200, &none, &flight, Signal::None), Pick::Certain(2, Link::Thread));
        assert_eq!(pick_at_start(10, 200, &none, &flight, Signal::Task), Pick::Certain(1, Link::Thread));
        // A call from a third thread: two candidates, no signal.
        assert_eq!(pick_at_start(12, 200, &none, &flight, Signal::None), Pick::Ambiguous(vec![1, 2]));
        // A request that started after the call cannot have made it.
        assert_eq!(pick_at_start(11, 120, &none, &flight, Signal::None), Pick::Certain(1, Link::Thread));
        assert_eq!(pick_at_start(10, 50, &none, &flight, Signal::None), Pick::None);
    }

    #[test]
    fn an_event_loop_waits_for_its_runtime_or_stays_ambiguous() {
        let none = Carried::default();
        let flight = [inbound(1, 10, 100), inbound(2, 10, 150)];
        assert_eq!(pick_at_start(10, 200, &none, &flight, Signal::None), Pick::Ambiguous(vec![1, 2]));
        assert_eq!(pick_at_start(10, 200, &none, &flight, Signal::Task), Pick::Task(vec![1, 2]));
        // One request in flight: certain without a runtime; with one, the task decides (a
        // background task's call is not the request's).
        assert_eq!(pick_at_start(10, 200, &none, &flight[..1], Signal::None), Pick::Certain(1, Link::Thread));
        assert_eq!(pick_at_start(10, 200, &none, &flight[..1], Signal::Task), Pick::Task(vec![1]));
    }

    #[test]
    fn a_runtime_naming_the_served_connection_is_certain() {
        let none = Carried::default();
        // nginx: one worker thread, three client requests in flight on connections 1, 2, 3.
        let flight = [inbound(1, 10, 100), inbound(2, 10, 150), inbound(3, 10, 160)];
        assert_eq!(pick_at_start(10, 200, &none, &flight, Signal::Serves(2)), Pick::Certain(2, Link::Task));
        // A connection with nothing in flight says nothing: back to no signal.
        assert_eq!(pick_at_start(10, 200, &none, &flight, Signal::Serves(9)), Pick::Ambiguous(vec![1, 2, 3]));
        assert_eq!(Signal::of(traceo_ebpf_common::CONN_CTX | 7), Signal::Serves(7));
        assert_eq!(Signal::of(0x7f00_1000), Signal::Task);
        assert_eq!(Signal::of(0), Signal::None);
    }

    #[test]
    fn propagated_context_or_correlation_value_wins() {
        let tp = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut a = inbound(1, 10, 100);
        a.trace_id = Some(tp.trace_id);
        let mut b = inbound(2, 10, 110);
        b.correlation_id = Some("req-9".into());
        let flight = [a, b, inbound(3, 10, 120)];
        let with_trace = Carried { parent: Some(tp), ..Carried::default() };
        assert_eq!(pick_at_start(10, 200, &with_trace, &flight, Signal::Task), Pick::Certain(1, Link::Propagated));
        let with_id = Carried { correlation_id: Some("req-9".into()), ..Carried::default() };
        assert_eq!(pick_at_start(10, 200, &with_id, &flight, Signal::None), Pick::Certain(2, Link::Propagated));
        let other = Carried { correlation_id: Some("nope".into()), ..Carried::default() };
        assert_eq!(pick_at_start(10, 200, &other, &flight, Signal::None), Pick::Ambiguous(vec![1, 2, 3]));
    }

    #[test]
    fn the_nearest_answering_ancestor_in_flight_is_the_parent() {
        let answered = |key, start_ns, end_ns, answered_by| Answered { key, start_ns, end_ns, answered_by };
        // The call runs in task 0xC (a child of request task 0xA); request 1 was answered by
        // 0xA, request 2 by 0xB.
        let chain = [(0xC, 30), (0xA, 10), (0x1, 0)];
        let list = [answered(1, 5, 100, (0xA, 10)), answered(2, 6, 100, (0xB, 12))];
        assert_eq!(task_match(40, &chain, &list), Some((1, 1)));
        // The same address in another incarnation is another task.
        assert_eq!(task_match(40, &chain, &[answered(1, 5, 100, (0xA, 50))]), None);
        // A request that ended before the call, or started after it, did not make it.
        assert_eq!(task_match(40, &chain, &[answered(1, 5, 39, (0xA, 10))]), None);
        assert_eq!(task_match(40, &chain, &[answered(1, 41, 100, (0xA, 10))]), None);
        // Two in flight answered by one task (one connection's task, pipelined): no match.
        let both = [answered(1, 5, 100, (0xA, 10)), answered(2, 6, 100, (0xA, 10))];
        assert_eq!(task_match(40, &chain, &both), None);
    }
}
