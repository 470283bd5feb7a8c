//! Roles, timing, joins, ordering and when connections are flushed.

use crate::events::{Event, OpenHow};
use crate::http::{ConnTracker, Role, TrackerConfig};

use super::script::*;

#[test]
fn a_client_whose_response_ends_at_close_stays_the_client() {
    // HTTP/1.0 read until close, and the close (not the peer's EOF) ends it: the exchange
    // completes while the parser is finished, and must keep the connection's role.
    let mut cli = Script::connected(2);
    cli.send(&get("/old"));
    cli.recv(b"HTTP/1.0 200 ok\r\nContent-type: text/html\r\n\r\n<html>");
    cli.close();
    let (xs, _) = run(&cli.take());
    assert_eq!(xs.len(), 1);
    assert_eq!((xs[0].role, xs[0].status, xs[0].response_body_bytes), (Role::Client, Some(200), Some(6)));
}

#[test]
fn server_and_client_roles_and_timestamps() {
    let mut srv = Script::accepted(1);
    srv.recv(&post("/s", "abc"));
    let req_exit = srv.now_ns - STEP_NS + SYSCALL_NS;
    srv.send(&ok("r"));
    let resp_enter = srv.now_ns - STEP_NS;
    let resp_exit = resp_enter + SYSCALL_NS;
    let mut cli = Script::connected(2);
    cli.tid = 77;
    cli.send(&get("/c"));
    let cli_enter = cli.now_ns - STEP_NS;
    cli.recv(&ok("r"));
    let cli_resp_exit = cli.now_ns - STEP_NS + SYSCALL_NS;
    let mut events = srv.take();
    events.extend(cli.take());
    let (xs, _) = run(&events);
    let s = xs.iter().find(|x| x.conn_id == 1).unwrap_or_else(|| panic!("server exchange"));
    let c = xs.iter().find(|x| x.conn_id == 2).unwrap_or_else(|| panic!("client exchange"));
    assert_eq!((s.role, c.role), (Role::Server, Role::Client));
    assert_eq!((s.pid, s.tid, c.tid), (PID, TID, 77));
    // Received bytes are timed at the read's exit, sent bytes at the write's entry.
    assert_eq!(s.request_first_ns, req_exit);
    assert_eq!(s.response_first_ns, Some(resp_enter));
    assert_eq!(s.response_last_ns, Some(resp_exit));
    assert_eq!(s.duration_ns(), Some(resp_exit - req_exit));
    assert_eq!(c.request_first_ns, cli_enter);
    assert_eq!(c.response_last_ns, Some(cli_resp_exit));
    assert_eq!(&*s.service, "engine", "comm from the open event");
    assert_eq!(s.local, Some(addr("10.0.0.1:8080")));
}

#[test]
fn configured_service_name_wins_over_comm() {
    let mut s = Script::unseen(1);
    s.service = Some(1);
    let ev = Event::ConnOpen(crate::events::Conn {
        meta: crate::events::Meta { pid: PID, tid: TID, service: Some(1), ts_ns: 1 },
        conn_id: 1,
        fd: 3,
        how: Some(OpenHow::Accepted),
        family: crate::events::Family::Inet6,
        sock_type: 1,
        local: Some(addr("[::1]:80")),
        peer: None,
        comm: "python3".into(),
        ret: 0,
        task_ctx: 0,
        after_loss: false,
    });
    s.recv(&get("/")).send(&ok(""));
    let mut events = vec![ev];
    events.extend(s.take());
    let cfg = TrackerConfig { service_names: vec!["mcp".into(), "engine".into()], ..Default::default() };
    let (xs, _) = run_with(cfg, &events);
    assert_eq!(&*one(&xs).service, "engine");
    let mut unknown = Script::unseen(2);
    unknown.recv(&get("/")).send(&ok(""));
    let (xs, _) = run(&unknown.take());
    assert_eq!(&*one(&xs).service, "unknown");
}

#[test]
fn midstream_join_resyncs_at_next_request_line() {
    for existing in [false, true] {
        let mut s = if existing { Script::opened(1, OpenHow::Existing) } else { Script::unseen(1) };
        // Tail of a request body and of its response, then a fresh exchange.
        s.recv(b"ar\":1}]}");
        s.send(b"ody-of-an-old-response\r\n0\r\n\r\n");
        s.recv(&post("/api/v1/jobs", "{\"x\":1}"));
        s.send(&status(202, "queued"));
        s.recv(&get("/api/v1/jobs/42")).send(&ok("{}"));
        let (xs, stats) = run(&s.take());
        assert_eq!(
            summary(&xs),
            vec![
                ("POST".into(), "/api/v1/jobs".into(), Some(202), 7, Some(6)),
                ("GET".into(), "/api/v1/jobs/42".into(), Some(200), 0, Some(2)),
            ],
            "existing={existing}"
        );
        assert!(xs.iter().all(|x| x.flags.midstream), "existing={existing}");
        assert!(stats.midstream_resyncs >= 1);
        assert_eq!(stats.total_parse_errors(), 0, "existing={existing}");
    }
}

#[test]
fn midstream_join_between_request_and_response_drops_the_stale_response() {
    let mut s = Script::unseen(1);
    // We missed the request; its response arrives first and must not pair with the next one.
    s.send(&ok("stale"));
    s.recv(&get("/fresh")).send(&ok("new"));
    let (xs, stats) = run(&s.take());
    let x = one(&xs);
    assert_eq!((x.target.as_str(), x.response_body_bytes), ("/fresh", Some(3)));
    assert_eq!(stats.unpaired_responses, 1);
}

#[test]
fn response_seen_before_its_request_is_paired() {
    let mut s = Script::accepted(1);
    s.recv(&get("/first"));
    s.send(&ok("1"));
    s.recv(&get("/second"));
    s.send(&ok("22"));
    let mut events = s.take();
    // Deliver the second response before the second request (reordered across CPUs).
    let n = events.len();
    events.swap(n - 1, n - 2);
    let (xs, stats) = run(&events);
    assert_eq!(
        summary(&xs),
        vec![
            ("GET".into(), "/first".into(), Some(200), 0, Some(1)),
            ("GET".into(), "/second".into(), Some(200), 0, Some(2)),
        ]
    );
    assert_eq!((stats.unpaired_responses, stats.unpaired_requests), (0, 0));
}

#[test]
fn a_response_with_no_request_ever_is_unpaired() {
    let mut s = Script::accepted(1);
    s.send(&ok("orphan"));
    s.close();
    let (xs, stats) = run(&s.take());
    assert!(xs.is_empty(), "{:#?}", summary(&xs));
    assert_eq!(stats.unpaired_responses, 1);
}

#[test]
fn close_flushes_unanswered_requests() {
    let mut s = Script::accepted(1);
    s.recv(&get("/hang"));
    s.close();
    let (xs, stats) = run(&s.take());
    let x = one(&xs);
    assert!(x.flags.no_response && x.status.is_none() && x.duration_ns().is_none());
    assert_eq!((stats.unpaired_requests, stats.exchanges), (1, 1));
}

#[test]
fn idle_connections_expire_and_exit_flushes() {
    let cfg = TrackerConfig { idle_timeout_ns: 1_000_000_000, ..Default::default() };
    let mut tracker = ConnTracker::new(cfg);
    let mut xs = Vec::new();
    let mut idle = Script::accepted(1);
    idle.recv(&get("/idle"));
    let mut dying = Script::opened_by(2, OpenHow::Accepted, 999);
    dying.recv(&get("/dying"));
    dying.exit();
    for ev in idle.take().iter().chain(dying.take().iter()) {
        tracker.handle(&mut ev.clone(), &mut |x| xs.extend(x.into_exchange().map(|x| *x)));
    }
    assert_eq!(xs.iter().map(|x| x.target.as_str()).collect::<Vec<_>>(), vec!["/dying"]);
    tracker.expire(idle.now_ns + 500_000_000, &mut |x| xs.extend(x.into_exchange().map(|x| *x)));
    assert_eq!(xs.len(), 1, "not idle long enough yet");
    tracker.expire(idle.now_ns + 2_000_000_000, &mut |x| xs.extend(x.into_exchange().map(|x| *x)));
    assert_eq!(xs.len(), 2);
    assert!(xs[1].flags.no_response && xs[1].target == "/idle");
    assert_eq!(tracker.stats().active_connections, 0);
}

#[test]
fn a_keep_alive_connection_quiet_between_and_during_exchanges_parses_the_same() {
    let mut s = Script::accepted(1);
    let mut steps = vec![s.recv(&get("/a")).send(&ok("a")).take(), s.recv(&get("/b")).take()];
    steps.push(s.send(&ok("b")).recv(&get("/c")).send(&ok("c")).close().take());
    let mut tracker = ConnTracker::new(TrackerConfig::default());
    let mut xs = Vec::new();
    for events in &steps {
        for ev in events {
            tracker.handle(&mut ev.clone(), &mut |x| xs.extend(x.into_exchange().map(|x| *x)));
        }
        // Quiet past RELEASE_AFTER_NS (the second time with /b waiting for its answer).
        tracker.expire(s.now_ns + 2_000_000_000, &mut |x| xs.extend(x.into_exchange().map(|x| *x)));
    }
    tracker.finish(&mut |x| xs.extend(x.into_exchange().map(|x| *x)));
    let (plain, _) = run(&steps.concat());
    assert_eq!(xs, plain);
    assert_eq!(xs.len(), 3);
}

#[test]
fn lru_cap_evicts_and_flushes_the_oldest_connection() {
    let cfg = TrackerConfig { max_connections: 2, ..Default::default() };
    let mut events = Vec::new();
    for id in 1..=3 {
        let mut s = Script::accepted(id);
        s.recv(&get(&format!("/c{id}")));
        events.extend(s.take());
    }
    let mut tracker = ConnTracker::new(cfg);
    let mut xs = Vec::new();
    for ev in &events {
        tracker.handle(&mut ev.clone(), &mut |x| xs.extend(x.into_exchange().map(|x| *x)));
    }
    assert_eq!(tracker.stats().evicted_connections, 1);
    assert_eq!(tracker.stats().active_connections, 2);
    assert_eq!(one(&xs).target, "/c1");
}

#[test]
fn open_event_overtaken_by_data_keeps_the_stream() {
    let mut s = Script::accepted(1);
    s.recv(&get("/early"));
    s.send(&ok("1"));
    let mut events = s.take();
    // The accept was reported after the first read.
    events.swap(0, 1);
    let (xs, stats) = run(&events);
    let x = one(&xs);
    assert_eq!((x.target.as_str(), x.status), ("/early", Some(200)));
    assert_eq!(x.peer, Some(addr("10.0.0.2:51000")));
    assert!(!x.flags.midstream, "{:?}", x.flags);
    assert_eq!(stats.total_parse_errors(), 0);
}

#[test]
fn in_flight_counts_read_but_unanswered_server_requests() {
    let mut tracker = ConnTracker::new(TrackerConfig::default());
    let mut out = vec![];
    let mut srv = Script::accepted(1);
    srv.recv(&get("/a"));
    let mut cli = Script::connected(2);
    cli.send(&get("/b"));
    for ev in srv.take().iter().chain(cli.take().iter()) {
        tracker.handle(&mut ev.clone(), &mut |x| out.extend(x.into_exchange()));
    }
    // The client's request is in flight too, but it is not a server request.
    assert_eq!(tracker.in_flight_by_service().get("engine"), Some(&1));
    srv.send(&ok("done"));
    for ev in srv.take().iter() {
        tracker.handle(&mut ev.clone(), &mut |x| out.extend(x.into_exchange()));
    }
    assert_eq!(tracker.in_flight_by_service().get("engine"), Some(&0));
    assert_eq!(out.len(), 1);
}

#[test]
fn requests_are_announced_before_their_exchanges_with_matching_numbers() {
    let mut s = Script::accepted(1);
    // Two pipelined requests in one read, answered one after the other.
    let mut both = get("/one");
    both.extend(get("/two"));
    s.recv(&both);
    s.send(&ok("1"));
    s.send(&ok("2"));
    let mut tracker = ConnTracker::new(TrackerConfig::default());
    let mut seen = Vec::new();
    for ev in s.take().iter() {
        tracker.handle(&mut ev.clone(), &mut |t| {
            seen.push(match t {
                crate::http::Tracked::Request(r) => {
                    format!("request {} {}", r.seq, r.role == Role::Server)
                }
                crate::http::Tracked::Exchange(x) => format!("exchange {} {}", x.request_seq, x.target),
            })
        });
    }
    assert_eq!(seen, ["request 0 true", "request 1 true", "exchange 0 /one", "exchange 1 /two"]);
}
