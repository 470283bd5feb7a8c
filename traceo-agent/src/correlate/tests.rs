//! The correlation stage driven with announcements and exchanges in chosen orders.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::events::{Conn, Event, Family, Meta, OpenHow};
use crate::http::{
    ConnInfo, Exchange, HttpMessage, KeptHeaders, Kind, Link, RequestSeen, Role, RouteNormalizer, Tracked,
};

use super::{Carried, CorrelateConfig, Correlator, IdGen, SpanId, TraceId};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

/// One request on one connection, its timing, and what it carries.
#[derive(Clone)]
struct Req {
    conn: u64,
    role: Role,
    pid: u32,
    tid: u32,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    target: String,
    start: u64,
    end: u64,
    headers: Vec<(&'static str, String)>,
    /// Runtime contexts (asyncio tasks) that wrote the request and the response.
    ctx: u64,
    resp_ctx: u64,
}

fn req(conn: u64, role: Role, pid: u32, tid: u32, target: &str, start: u64, end: u64) -> Req {
    let target = target.into();
    Req { conn, role, pid, tid, local: None, peer: None, target, start, end, headers: vec![], ctx: 0, resp_ctx: 0 }
}

impl Req {
    /// Written by the task running in context `ctx` (a server: answered by it).
    fn task(mut self, ctx: u64) -> Req {
        match self.role {
            Role::Client => self.ctx = ctx,
            Role::Server => self.resp_ctx = ctx,
        }
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Req {
        self.headers.push((name, value.into()));
        self
    }

    fn addrs(mut self, local: &str, peer: &str) -> Req {
        self.local = Some(addr(local));
        self.peer = Some(addr(peer));
        self
    }

    fn kept(&self) -> KeptHeaders {
        let mut h = KeptHeaders::default();
        for (n, v) in &self.headers {
            h.push(n, v.as_bytes());
        }
        h
    }

    fn seen(&self) -> Tracked {
        Tracked::Request(RequestSeen {
            conn_id: self.conn,
            seq: 0,
            role: self.role,
            pid: self.pid,
            tid: self.tid,
            local: self.local,
            peer: self.peer,
            start_ns: self.start,
            carried: Carried::from_headers(&self.kept()),
            task_ctx: self.ctx,
            shape: 0,
        })
    }

    fn done(&self) -> Tracked {
        let info = ConnInfo {
            conn_id: self.conn,
            service: "svc".into(),
            local: self.local,
            peer: self.peer,
            midstream: false,
            tls: false,
            lossy: false,
            opened_ctx: 0,
        };
        let request = HttpMessage {
            kind: Kind::Request,
            method: Some("GET".into()),
            target: Some(self.target.clone()),
            headers: self.kept(),
            pid: self.pid,
            tid: self.tid,
            start_ns: self.start,
            end_ns: self.start + 1,
            task_ctx: self.ctx,
            ..HttpMessage::default()
        };
        let response = HttpMessage {
            kind: Kind::Response,
            status: Some(200),
            pid: self.pid,
            tid: self.tid,
            start_ns: self.end - 1,
            end_ns: self.end,
            task_ctx: self.resp_ctx,
            ..HttpMessage::default()
        };
        Tracked::Exchange(Box::new(Exchange::build(
            &info,
            self.role,
            0,
            Box::new(request),
            Some(Box::new(response)),
            &RouteNormalizer::new(&[]),
        )))
    }

    /// The connection's open event, for the connection index.
    fn opened(&self) -> Event {
        Event::ConnOpen(Conn {
            meta: Meta { pid: self.pid, tid: self.tid, service: None, ts_ns: self.start.saturating_sub(1) },
            conn_id: self.conn,
            fd: 5,
            how: Some(OpenHow::Connected),
            family: Family::Inet,
            sock_type: 1,
            local: self.local,
            peer: self.peer,
            comm: "svc".into(),
            ret: 0,
            task_ctx: 0,
            after_loss: false,
        })
    }
}

/// A correlator and everything it emitted, by target.
struct Run {
    c: Correlator,
    // Exchanges are boxed once and handed through the stages: moves are pointer-sized.
    #[allow(clippy::vec_box)]
    out: Vec<Box<Exchange>>,
}

impl Run {
    fn new() -> Run {
        Run::with(CorrelateConfig::default())
    }

    fn with(cfg: CorrelateConfig) -> Run {
        Run { c: Correlator::with_ids(cfg, IdGen::seeded(7)), out: vec![] }
    }

    fn push(&mut self, t: Tracked) -> &mut Self {
        let out = &mut self.out;
        self.c.push(t, &mut |ex| out.push(ex));
        self
    }

    fn observe(&mut self, e: Event) -> &mut Self {
        self.c.observe(&e);
        self
    }

    fn tick(&mut self, now: u64) -> &mut Self {
        let out = &mut self.out;
        self.c.tick(now, &mut |ex| out.push(ex));
        self
    }

    fn emitted(&self) -> Vec<&str> {
        self.out.iter().map(|x| x.target.as_str()).collect()
    }

    fn by_target(&self) -> HashMap<&str, &Exchange> {
        self.out.iter().map(|x| (x.target.as_str(), &**x)).collect()
    }

    /// `child`'s parent is `parent`, through `link`, in the same trace.
    fn assert_child(&self, child: &str, parent: &str, link: Link) {
        let x = self.by_target();
        let (c, p) = (x[child], x[parent]);
        assert_eq!(c.parent_span_id(), p.span_id(), "{child}'s parent should be {parent}");
        assert_eq!(c.trace_id(), p.trace_id(), "{child} and {parent} share a trace");
        assert_eq!(c.link(), Some(link), "{child}'s link");
    }
}

#[test]
fn threaded_server_calls_belong_to_the_request_on_their_thread() {
    let a = req(1, Role::Server, 100, 10, "/a", 1_000, 9_000);
    let b = req(2, Role::Server, 100, 11, "/b", 1_100, 9_100);
    let from_b = req(3, Role::Client, 100, 11, "/from-b", 2_000, 3_000);
    let from_a = req(4, Role::Client, 100, 10, "/from-a", 2_100, 3_100);
    let mut r = Run::new();
    r.push(a.seen()).push(b.seen()).push(from_b.seen()).push(from_a.seen());
    // The calls complete first and are emitted at once: their parents' ids were known.
    r.push(from_b.done()).push(from_a.done());
    assert_eq!(r.emitted(), ["/from-b", "/from-a"]);
    r.push(a.done()).push(b.done());
    r.assert_child("/from-b", "/b", Link::Thread);
    r.assert_child("/from-a", "/a", Link::Thread);
    let x = r.by_target();
    assert_ne!(x["/a"].trace_id(), x["/b"].trace_id(), "two requests from outside: two traces");
    assert_eq!((x["/a"].parent_span_id(), x["/a"].link()), (None, None));
    assert_eq!(x["/from-a"].propagated, Some(false), "the call carried no context");
    assert_eq!(x["/a"].propagated, None);
    assert_eq!(r.c.stats().link(Link::Thread), 2);
    assert_eq!(r.c.stats().roots, 2);
}

#[test]
fn event_loop_with_one_request_in_flight_is_certain() {
    let a = req(1, Role::Server, 100, 10, "/a", 1_000, 9_000);
    let call = req(2, Role::Client, 100, 10, "/call", 2_000, 3_000);
    let mut r = Run::new();
    r.push(a.seen()).push(call.seen()).push(call.done()).push(a.done());
    r.assert_child("/call", "/a", Link::Thread);
}

/// One event loop (one thread): three inbound requests in flight, each handler makes one
/// call; each request is answered by its own task (contexts 0xA0 + i).
fn event_loop(runtime: bool) -> (Run, Vec<Req>, Vec<Req>) {
    let inbound: Vec<Req> = (0..3)
        .map(|i| req(i + 1, Role::Server, 100, 10, &format!("/in{i}"), 1_000 + 100 * i, 9_000).task(0xA0 + i))
        .collect();
    let calls: Vec<Req> = (0..3)
        .map(|i| {
            let call = req(i + 10, Role::Client, 100, 10, &format!("/call{i}"), 2_000 + 10 * i, 3_000 + i);
            // The calls run in the order opposite to the requests' arrival.
            if runtime { call.task(0xA2 - i) } else { call }
        })
        .collect();
    let mut r = Run::new();
    inbound.iter().chain(&calls).for_each(|q| {
        r.push(q.seen());
    });
    for c in &calls {
        r.push(c.done());
    }
    (r, inbound, calls)
}

#[test]
fn event_loop_calls_without_a_runtime_signal_get_no_parent() {
    let (mut r, inbound, _) = event_loop(false);
    assert_eq!(r.emitted(), ["/call0", "/call1", "/call2"], "nothing to wait for");
    inbound.iter().for_each(|q| {
        r.push(q.done());
    });
    let x = r.by_target();
    for i in 0..3 {
        let call = &x[format!("/call{i}").as_str()];
        assert_eq!((call.parent_span_id(), call.link()), (None, Some(Link::Ambiguous)));
        let linked: Vec<SpanId> = call.candidates.iter().map(|c| c.span_id).collect();
        let expected: Vec<SpanId> = (0..3).map(|j| x[format!("/in{j}").as_str()].span_id().unwrap()).collect();
        assert_eq!(linked, expected, "span links to every candidate");
    }
    assert_eq!(r.c.stats().link(Link::Ambiguous), 3);
}

#[test]
fn event_loop_calls_follow_the_task_that_answers() {
    let (mut r, inbound, _) = event_loop(true);
    assert!(r.emitted().is_empty(), "the calls wait for an answer from their task");
    inbound.iter().for_each(|q| {
        r.push(q.done());
    });
    for i in 0..3 {
        r.assert_child(&format!("/call{i}"), &format!("/in{}", 2 - i), Link::Task);
    }
}

/// Task `child` of process 100 created by thread 10 in `parent`, its `__init__` running
/// from `entry` to `ret`.
fn born(child: u64, parent: u64, (entry, ret): (u64, u64)) -> Event {
    Event::Task(crate::events::TaskCreated {
        meta: Meta { pid: 100, tid: 10, service: None, ts_ns: ret },
        parent_ctx: parent,
        child_ctx: child,
        task: 0x7000, // a task object (0 would be a context copy)
        entry_ns: entry,
    })
}

#[test]
fn an_eager_task_calling_inside_its_creation_belongs_to_its_request() {
    // Request /old (task 0xA) made task 0xB, which is gone; /old is still in flight. Request
    // /new (task 0xE) creates an eager task whose context reuses 0xB's address: its
    // `__init__` runs from 2_000 to 2_500, and its first step sends the call at 2_100, before
    // the creation is reported.
    let old = req(1, Role::Server, 100, 10, "/old", 100, 9_000).task(0xA);
    let new = req(2, Role::Server, 100, 10, "/new", 1_500, 9_500).task(0xE);
    let call = req(3, Role::Client, 100, 10, "/call", 2_100, 3_000).task(0xB);
    let mut r = Run::new();
    r.observe(born(0xA, 0x1, (40, 50)));
    r.observe(born(0xB, 0xA, (150, 200)));
    r.observe(born(0xE, 0x1, (1_400, 1_450)));
    r.push(old.seen()).push(new.seen()).push(call.seen());
    r.observe(born(0xB, 0xE, (2_000, 2_500)));
    r.push(call.done()).push(old.done()).push(new.done());
    r.assert_child("/call", "/new", Link::Task);
}

#[test]
fn a_nearer_ancestor_answering_later_wins_over_a_stale_farther_one() {
    // Request /old's task 0xA created 0xB, which finished; a loop callback's context copy
    // then took 0xB's address (no creation reported: it inherits 0xB's lineage) and created
    // request /new's task 0xE, whose child 0xF makes the call. /old answers first.
    let old = req(1, Role::Server, 100, 10, "/old", 100, 4_000).task(0xA);
    let new = req(2, Role::Server, 100, 10, "/new", 1_500, 9_500).task(0xE);
    let call = req(3, Role::Client, 100, 10, "/call", 2_100, 3_000).task(0xF);
    let mut r = Run::new();
    r.observe(born(0xA, 0x1, (40, 50)));
    r.observe(born(0xB, 0xA, (150, 200)));
    r.observe(born(0xE, 0xB, (1_400, 1_450)));
    r.observe(born(0xF, 0xE, (2_000, 2_050)));
    r.push(old.seen()).push(new.seen()).push(call.seen()).push(call.done()).push(old.done());
    assert!(!r.emitted().contains(&"/call"), "decided before /new answered");
    r.push(new.done());
    r.assert_child("/call", "/new", Link::Task);
}

#[test]
fn a_task_created_while_serving_a_request_belongs_to_it() {
    // /in is answered by task 0xA (born at 500 in the loop's context 0x1); it creates 0xB at
    // 1_500, which makes the call. /other, answered by 0xC, is in flight too.
    let inbound = req(1, Role::Server, 100, 10, "/in", 1_000, 9_000).task(0xA);
    let other = req(2, Role::Server, 100, 10, "/other", 1_100, 9_500).task(0xC);
    let call = req(3, Role::Client, 100, 10, "/call", 2_000, 3_000).task(0xB);
    let mut r = Run::new();
    let born = |child, parent, ts_ns: u64| born(child, parent, (ts_ns - 1, ts_ns));
    r.observe(born(0xA, 0x1, 500));
    r.observe(born(0xC, 0x1, 600));
    r.observe(born(0xB, 0xA, 1_500));
    r.push(inbound.seen()).push(other.seen()).push(call.seen()).push(call.done());
    r.push(other.done()).push(inbound.done());
    r.assert_child("/call", "/in", Link::Task);
    // 0xA's address reused by a later task: a call in the new one is not /in's.
    r.observe(born(0xA, 0x1, 10_000));
    let late = req(4, Role::Server, 100, 10, "/late", 10_100, 19_000).task(0xA);
    let late_call = req(5, Role::Client, 100, 10, "/late-call", 11_000, 12_000).task(0xA);
    r.push(late.seen()).push(late_call.seen()).push(late_call.done()).push(late.done());
    r.assert_child("/late-call", "/late", Link::Task);
}

#[test]
fn work_a_task_does_after_answering_belongs_to_the_request_it_answered() {
    // /in is answered at 2_000 by its task 0xA (born at 500); the task then writes an audit
    // row (a background task, after the 202) at 3_000, while /other (task 0xC) is in flight.
    let inbound = req(1, Role::Server, 100, 10, "/in", 1_000, 2_000).task(0xA);
    let other = req(2, Role::Server, 100, 10, "/other", 2_500, 9_500).task(0xC);
    let after = req(3, Role::Client, 100, 10, "/after", 3_000, 3_500).task(0xA);
    // 0xB, created by 0xA while serving /in, still works after the answer; 0xD, created by
    // 0xA after it (nothing in flight for 0xA then), is not tied to /in.
    let child_call = req(4, Role::Client, 100, 10, "/child-after", 3_100, 3_600).task(0xB);
    let late_child_call = req(5, Role::Client, 100, 10, "/late-child", 3_200, 3_700).task(0xD);
    // The loop's base context 0x1 (creation never seen) answered /base: no after-answer link.
    let base = req(6, Role::Server, 100, 10, "/base", 1_200, 1_900).task(0x1);
    let base_call = req(7, Role::Client, 100, 10, "/base-after", 3_300, 3_800).task(0x1);
    let mut r = Run::new();
    let born = |child, parent, ts_ns: u64| born(child, parent, (ts_ns - 1, ts_ns));
    r.observe(born(0xA, 0x1, 500));
    r.observe(born(0xC, 0x1, 2_400));
    r.observe(born(0xB, 0xA, 1_500));
    r.observe(born(0xD, 0xA, 2_800));
    r.push(inbound.seen()).push(base.seen()).push(base.done()).push(inbound.done()).push(other.seen());
    for c in [&after, &child_call, &late_child_call, &base_call] {
        r.push(c.seen()).push(c.done());
    }
    r.push(other.done());
    r.assert_child("/after", "/in", Link::Task);
    r.assert_child("/child-after", "/in", Link::Task);
    let x = r.by_target();
    for orphan in ["/late-child", "/base-after"] {
        assert_eq!(x[orphan].parent_span_id(), None, "{orphan}: {:?}", x[orphan].link());
    }
    // With nothing in flight at all, the same rule.
    let mut r = Run::new();
    r.observe(born(0xA, 0x1, 500));
    r.push(inbound.seen()).push(inbound.done()).push(after.seen()).push(after.done());
    r.assert_child("/after", "/in", Link::Task);
}

#[test]
fn a_propagated_header_or_correlation_value_ties_the_call() {
    let a = req(1, Role::Server, 100, 10, "/a", 1_000, 9_000).header("traceparent", TP);
    let b = req(2, Role::Server, 100, 10, "/b", 1_100, 9_000).header("x-request-id", "req-b");
    let c = req(3, Role::Server, 100, 10, "/c", 1_200, 9_000);
    let to_a = req(4, Role::Client, 100, 10, "/to-a", 2_000, 3_000)
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01");
    let to_b = req(5, Role::Client, 100, 10, "/to-b", 2_100, 3_100).header("x-request-id", "req-b");
    let mut r = Run::new();
    for t in [&a, &b, &c, &to_a, &to_b] {
        r.push(t.seen());
    }
    r.push(to_a.done()).push(to_b.done());
    assert_eq!(r.emitted(), ["/to-a", "/to-b"], "certain links need no wait");
    for t in [&a, &b, &c] {
        r.push(t.done());
    }
    r.assert_child("/to-a", "/a", Link::Propagated);
    r.assert_child("/to-b", "/b", Link::Propagated);
    let x = r.by_target();
    assert_eq!((x["/to-a"].propagated, x["/to-b"].propagated), (Some(true), Some(true)));
    // /a continued its caller's trace.
    assert_eq!(x["/a"].trace_id(), TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(x["/a"].parent_span_id(), SpanId::parse("00f067aa0ba902b7"));
    assert_eq!(x["/a"].link(), Some(Link::Propagated));
}

#[test]
fn inbound_trace_context_and_tracestate_flow_to_children() {
    let a =
        req(1, Role::Server, 100, 10, "/a", 1_000, 9_000).header("traceparent", TP).header("tracestate", "vendor=abc");
    let call = req(2, Role::Client, 100, 10, "/call", 2_000, 3_000);
    let mut r = Run::new();
    r.push(a.seen()).push(call.seen()).push(call.done()).push(a.done());
    r.assert_child("/call", "/a", Link::Thread);
    let x = r.by_target();
    assert_eq!(x["/call"].trace_id(), TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(x["/call"].trace.as_ref().and_then(|t| t.trace_state.as_deref()), Some("vendor=abc"));
    assert_eq!(x["/call"].propagated, Some(false), "the call did not pass the context on");
}

/// Client in pid 100 at 127.0.0.1:40000, server in pid 200 at 127.0.0.1:8000.
fn connection_ends(start: u64) -> (Req, Req) {
    let client =
        req(10, Role::Client, 100, 10, "/call", start, start + 1_000).addrs("127.0.0.1:40000", "127.0.0.1:8000");
    let server = req(20, Role::Server, 200, 20, "/served", start + 100, start + 900)
        .addrs("[::ffff:127.0.0.1]:8000", "[::ffff:127.0.0.1]:40000");
    (client, server)
}

#[test]
fn the_two_ends_of_a_local_connection_join_in_either_order() {
    for server_first in [false, true] {
        let (client, server) = connection_ends(2_000);
        let mut r = Run::new();
        r.observe(client.opened());
        if server_first {
            r.push(server.seen()).push(client.seen());
        } else {
            r.push(client.seen()).push(server.seen());
        }
        // The server answers before the client has its response.
        r.push(server.done()).push(client.done());
        assert_eq!(r.emitted(), ["/served", "/call"]);
        r.assert_child("/served", "/call", Link::Connection);
    }
}

#[test]
fn a_whole_chain_resolves_whatever_the_completion_order() {
    // curl (untraced) -> /a in pid 100 -> call -> /served in pid 200 -> its own call out.
    let a = req(1, Role::Server, 100, 10, "/a", 1_000, 9_000);
    let (call, served) = connection_ends(2_000);
    let onward = req(30, Role::Client, 200, 20, "/onward", 2_200, 2_800);
    let mut r = Run::new();
    r.observe(call.opened());
    // The far end is seen first, and its own call before the near end's request.
    r.push(a.seen()).push(served.seen()).push(onward.seen()).push(call.seen());
    r.push(onward.done()).push(served.done()).push(call.done()).push(a.done());
    assert_eq!(r.emitted(), ["/onward", "/served", "/call", "/a"]);
    r.assert_child("/call", "/a", Link::Thread);
    r.assert_child("/served", "/call", Link::Connection);
    r.assert_child("/onward", "/served", Link::Thread);
}

#[test]
fn an_ambiguous_parent_holds_the_far_end_too() {
    // Two inbound requests on one event loop; the call's far end completes first and waits
    // for the call, which waits for its own end to check its preferred parent's window.
    let a = req(1, Role::Server, 100, 10, "/a", 1_000, 3_200).task(0xA);
    let b = req(2, Role::Server, 100, 10, "/b", 1_100, 9_000).task(0xB);
    let (call, served) = connection_ends(2_000);
    let call = call.task(0xA);
    let mut r = Run::new();
    r.observe(call.opened());
    r.push(a.seen()).push(b.seen()).push(call.seen()).push(served.seen());
    r.push(served.done());
    assert!(r.emitted().is_empty(), "{:?}", r.emitted());
    r.push(call.done());
    assert!(r.emitted().is_empty(), "the call waits for its task's answer");
    r.push(a.done());
    assert_eq!(r.emitted(), ["/a", "/call", "/served"]);
    r.push(b.done());
    r.assert_child("/call", "/a", Link::Task);
    r.assert_child("/served", "/call", Link::Connection);
}

#[test]
fn timing_alone_never_links_processes() {
    // A call in flight in pid 100 while pid 200 serves a request from an untraced client.
    let call = req(10, Role::Client, 100, 10, "/call", 1_000, 5_000).addrs("127.0.0.1:40000", "127.0.0.1:8000");
    let other = req(20, Role::Server, 200, 20, "/other", 1_500, 2_000).addrs("127.0.0.1:9000", "127.0.0.1:50000");
    let mut r = Run::new();
    r.observe(call.opened());
    r.push(call.seen()).push(other.seen()).push(other.done()).push(call.done());
    let x = r.by_target();
    assert_eq!((x["/other"].parent_span_id(), x["/other"].link()), (None, None));
    assert_ne!(x["/other"].trace_id(), x["/call"].trace_id());
}

#[test]
fn a_shared_correlation_value_joins_processes_without_a_connection() {
    // Through a proxy the agent does not trace: no connection match, the value ties them.
    let call = req(10, Role::Client, 100, 10, "/call", 1_000, 5_000).header("x-correlation-id", "job-42");
    let served = req(20, Role::Server, 200, 20, "/served", 1_500, 4_000).header("x-correlation-id", "job-42");
    let mut r = Run::new();
    r.push(call.seen()).push(served.seen()).push(served.done()).push(call.done());
    r.assert_child("/served", "/call", Link::Propagated);
}

#[test]
fn the_hold_is_bounded_and_expiry_takes_the_best_answer() {
    let hold = 1_000_000;
    // The far end of a long call waits for the call's parent, which is not decided before the
    // call ends; the hold cuts that short.
    let a = req(1, Role::Server, 100, 10, "/a", 1_000, 50_000_000);
    let b = req(2, Role::Server, 100, 10, "/b", 1_100, 60_000_000);
    let (call, served) = connection_ends(2_000);
    let call = Req { end: 40_000_000, ..call }.task(0xA);
    let mut r = Run::with(CorrelateConfig { hold_ns: hold, ..CorrelateConfig::default() });
    r.observe(call.opened());
    r.push(a.seen()).push(b.seen()).push(call.seen()).push(served.seen()).push(served.done());
    r.tick(2_000 + hold / 2);
    assert!(r.emitted().is_empty());
    r.tick(2_000 + hold + 200);
    assert_eq!(r.emitted(), ["/served"], "resolved at expiry");
    assert_eq!(r.c.stats().expired, 1);
    r.push(call.done()).push(a.done()).push(b.done());
    // No answer came in time: no parent (never a guess), and the far end still joins it.
    let x = r.by_target();
    assert_eq!((x["/call"].parent_span_id(), x["/call"].link()), (None, Some(Link::Ambiguous)));
    r.assert_child("/served", "/call", Link::Connection);
}

#[test]
fn a_server_whose_traced_client_never_shows_resolves_on_its_own() {
    let (client, server) = connection_ends(2_000);
    let mut r = Run::new();
    r.observe(client.opened());
    r.push(server.seen());
    r.push(server.done());
    // It answered: the client's request is not coming. It starts its own trace at once.
    let x = r.by_target();
    assert_eq!((x["/served"].parent_span_id(), x["/served"].link()), (None, None));
    assert!(x["/served"].trace_id().is_some());
}

#[test]
fn state_is_bounded_and_forgotten_after_the_hold() {
    let cfg = CorrelateConfig { hold_ns: 1_000, max_requests: 4, ..CorrelateConfig::default() };
    let mut r = Run::with(cfg);
    let reqs: Vec<Req> =
        (0..10).map(|i| req(i, Role::Server, 100, i as u32, &format!("/r{i}"), 100 + i, 500 + i)).collect();
    for q in &reqs {
        r.push(q.seen());
    }
    let s = r.c.stats();
    assert_eq!((s.tracked, s.evicted), (4, 6));
    // The four still tracked complete first, then the six forgotten ones: still emitted,
    // with fresh ids, pushing out completed requests only.
    for q in reqs[6..].iter().chain(&reqs[..6]) {
        r.push(q.done());
    }
    assert_eq!(r.out.len(), 10, "every exchange still comes out");
    assert!(r.out.iter().all(|x| x.trace_id().is_some() && x.span_id().is_some()));
    let s = r.c.stats();
    assert_eq!((s.unannounced, s.evicted, s.tracked), (6, 6, 4));
    r.tick(10_000);
    assert_eq!(r.c.stats().tracked, 0, "completed requests are forgotten after the hold");
}

#[test]
fn finish_resolves_and_emits_everything_held() {
    let (mut r, ..) = event_loop(true);
    assert_eq!(r.c.stats().held, 3);
    let out = &mut r.out;
    r.c.finish(&mut |ex| out.push(ex));
    assert_eq!(r.emitted(), ["/call0", "/call1", "/call2"]);
    assert!(r.out.iter().all(|x| x.link() == Some(Link::Ambiguous) && x.parent_span_id().is_none()));
    assert_eq!(r.c.stats().held, 0);
}
