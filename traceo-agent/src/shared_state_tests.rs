//! The shared-state stage on scripted exchanges: keys, holds, moves, provisional ids.

use super::*;
use crate::http::TraceContext;
use crate::http::tests::script::*;

impl SharedState {
    /// The pipeline's side alone: what it sends, and a way to answer.
    fn detached() -> (SharedState, tokio::sync::mpsc::Receiver<Request>, std::sync::mpsc::Sender<Answer>) {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let (atx, answers) = std::sync::mpsc::channel();
        let s = SharedState::with(tx, answers, Arc::new(Counts::default()), 60);
        (s, rx, atx)
    }
}

fn a(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

/// An exchange of `role` between `local` and `peer`, span `span` of `trace` under `parent`.
fn ex(server: bool, local: &str, peer: &str, trace: u8, span: u8, parent: Option<u8>) -> Box<Exchange> {
    let mut s = if server { Script::accepted(1) } else { Script::connected(1) };
    if server {
        s.recv(&post("/api/v1/jobs", "a,b")).send(&ok("{}"));
    } else {
        s.send(&post("/api/v1/jobs", "a,b")).recv(&ok("{}"));
    }
    let (xs, _) = run_with(Default::default(), &s.take());
    let mut x = one(&xs).clone();
    (x.local, x.peer) = (a(local), a(peer));
    let parent = parent.map(|p| SpanId([p; 8]));
    let link = parent.map(|_| Link::Thread);
    x.trace = Some(TraceContext {
        trace_id: TraceId([trace; 16]),
        span_id: SpanId([span; 8]),
        parent,
        link,
        trace_state: None,
    });
    Box::new(x)
}

fn sent(rx: &mut tokio::sync::mpsc::Receiver<Request>) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|r| match r {
            Request::Publish { key, value, .. } => format!("SET {key} {value}"),
            Request::Lookup { key, .. } => format!("GET {key}"),
        })
        .collect()
}

#[test]
fn both_ends_name_the_connection_and_request_alike() {
    let client = ex(false, "10.1.0.2:40000", "10.1.0.1:8000", 1, 1, None);
    let server = ex(true, "[::ffff:10.1.0.1]:8000", "[::ffff:10.1.0.2]:40000", 2, 2, None);
    let key = conn_key(&client, false).expect("a key");
    assert_eq!(Some(&key), conn_key(&server, true).as_ref());
    assert!(key.starts_with("traceo:conn:10.1.0.2:40000>10.1.0.1:8000#0:"), "{key}");
    assert!(!key.contains("/api"), "the target stays out of Redis: {key}");
    let mut other = server.clone();
    other.target = "/api/v1/other".into();
    assert_ne!(conn_key(&other, true), Some(key));
    let mut midstream = server.clone();
    midstream.flags.midstream = true;
    assert_eq!(conn_key(&midstream, true), None, "positions count from the agent's start");
    let lo = ex(true, "127.0.0.1:8000", "127.0.0.1:40000", 2, 2, None);
    assert_eq!(conn_key(&lo, true), None, "loopback is stitched on the host");
}

#[test]
fn tcp_sequence_numbers_meet_through_nat() {
    // The client called a Service address; NAT rewrote both ends on the way.
    let mut client = ex(false, "10.1.0.2:40000", "10.96.0.10:80", 1, 1, None);
    let mut server = ex(true, "10.1.0.1:8000", "192.168.7.1:33000", 2, 2, None);
    assert_ne!(conn_key(&client, false), conn_key(&server, true), "addresses alone cannot meet");
    (client.tcp_seq, server.tcp_seq) = (Some([0xdead_beef, 7]), Some([0xdead_beef, 7]));
    let key = conn_key(&client, false).expect("a key");
    assert!(key.starts_with("traceo:conn:tcp:") && key.len() == 16 + 32, "{key}");
    assert!(!key.contains("deadbeef") && !key.contains("/api"), "no numbers, no target: {key}");
    assert_eq!(conn_key(&server, true), Some(key.clone()));
    // The numbers are absolute: a connection open before the agent came meets too.
    let mut midstream = server.clone();
    midstream.flags.midstream = true;
    assert_eq!(conn_key(&midstream, true), Some(key.clone()));
    // Another exchange (other numbers, or the same numbers and another request) does not.
    let mut other = server.clone();
    other.tcp_seq = Some([0xdead_beef, 8]);
    assert_ne!(conn_key(&other, true), Some(key.clone()));
    other.tcp_seq = server.tcp_seq;
    other.target = "/api/v1/other".into();
    assert_ne!(conn_key(&other, true), Some(key));
}

#[test]
fn a_found_client_span_becomes_the_parent_and_the_trace_moves() {
    let (mut s, mut rx, answer) = SharedState::detached();
    let mut ready = Vec::new();
    // A call the server made (completes first), then the server span that starts the trace.
    s.observe(ex(false, "10.1.0.1:41000", "10.1.0.3:9000", 7, 2, Some(1)), &mut ready);
    s.observe(ex(true, "10.1.0.1:8000", "10.1.0.2:40000", 7, 1, None), &mut ready);
    assert!(ready.is_empty(), "both held for the far side");
    let reqs = sent(&mut rx);
    assert!(reqs[0].starts_with("SET traceo:conn:10.1.0.1:41000>10.1.0.3:9000#0:"), "{reqs:?}");
    assert!(reqs[0].ends_with('?'), "published while its root is undecided: provisional: {reqs:?}");
    assert!(reqs[1].starts_with("GET traceo:conn:10.1.0.2:40000>10.1.0.1:8000#0:"), "{reqs:?}");
    let client = SpanRef { trace_id: TraceId([9; 16]), span_id: SpanId([9; 8]) };
    answer.send(Answer::Conn(TraceId([7; 16]), Some(client))).unwrap();
    s.poll(&mut ready, &mut Vec::new());
    let [root, child] = &ready[..] else { panic!("{ready:?}") };
    let t = root.trace.as_ref().unwrap();
    assert_eq!((t.trace_id, t.parent, t.link), (client.trace_id, Some(client.span_id), Some(Link::Connection)));
    assert_eq!(child.trace_id(), Some(client.trace_id));
    assert_eq!(child.parent_span_id(), Some(SpanId([1; 8])), "its own parent kept");
    assert_eq!(sent(&mut rx), [format!("SET traceo:trace:{} {}", TraceId([7; 16]), client.trace_id)]);
    // Later spans of the old trace follow at once.
    ready.clear();
    s.observe(ex(false, "10.1.0.1:41001", "10.1.0.3:9000", 7, 3, Some(1)), &mut ready);
    assert_eq!(ready[0].trace_id(), Some(client.trace_id));
    assert_eq!(s.held, 0);
}

#[test]
fn a_miss_leaves_the_trace_as_it_was_and_loopback_roots_do_not_wait() {
    let (mut s, _rx, answer) = SharedState::detached();
    let mut ready = Vec::new();
    s.observe(ex(true, "10.1.0.1:8000", "10.1.0.2:40000", 7, 1, None), &mut ready);
    answer.send(Answer::Conn(TraceId([7; 16]), None)).unwrap();
    s.poll(&mut ready, &mut Vec::new());
    let t = ready[0].trace.as_ref().unwrap();
    assert_eq!((t.trace_id, t.parent, t.link), (TraceId([7; 16]), None, None), "never a guess");
    // A provisional child of another trace, then its root's miss: the id is final as it is.
    let (mut s2, mut rx2, answer2) = SharedState::detached();
    s2.observe(ex(false, "10.1.0.1:41005", "10.1.0.3:9000", 5, 2, Some(1)), &mut Vec::new());
    s2.observe(ex(true, "10.1.0.1:8000", "10.1.0.2:40005", 5, 1, None), &mut Vec::new());
    answer2.send(Answer::Conn(TraceId([5; 16]), None)).unwrap();
    s2.poll(&mut Vec::new(), &mut Vec::new());
    let last = sent(&mut rx2).pop();
    assert_eq!(last, Some(format!("SET traceo:trace:{0} {0}", TraceId([5; 16]))));
    s.observe(ex(false, "10.1.0.1:41000", "10.1.0.3:9000", 7, 2, Some(1)), &mut ready);
    assert_eq!(ready.len(), 2, "its trace is settled: no wait");
    // A child waits for its root; a root on loopback settles at once and releases it.
    ready.clear();
    s.observe(ex(false, "10.1.0.1:41002", "10.1.0.3:9000", 8, 2, Some(1)), &mut ready);
    assert!(ready.is_empty());
    s.observe(ex(true, "127.0.0.1:8000", "127.0.0.1:40000", 8, 1, None), &mut ready);
    assert_eq!(ready.len(), 2);
    // A child whose root never comes goes on as it is after the hold.
    ready.clear();
    s.observe(ex(false, "10.1.0.1:41003", "10.1.0.3:9000", 9, 2, Some(1)), &mut ready);
    s.tick(u64::MAX, &mut ready);
    assert_eq!((ready.len(), s.held), (1, 0));
    // A server span continuing a propagated trace does not wait, nor do its calls.
    ready.clear();
    let mut continued = ex(true, "10.1.0.1:8000", "10.1.0.2:40001", 10, 1, Some(5));
    continued.trace.as_mut().unwrap().link = Some(Link::Propagated);
    s.observe(continued, &mut ready);
    s.observe(ex(false, "10.1.0.1:41004", "10.1.0.3:9000", 10, 2, Some(1)), &mut ready);
    assert_eq!((ready.len(), s.held), (2, 0));
}
