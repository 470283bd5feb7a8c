//! The Sentry join's rules on scripted exchanges (envelopes parsed from the tracker's real
//! body prefixes).

use std::io::Write;

use super::*;
use crate::http::tests::script::{Script, get, one, run, status};
use crate::logs::ExceptionInfo;

const PID: u32 = 7;
const S: u64 = 1_000_000_000;

fn id(n: u8) -> String {
    format!("{n:02x}").repeat(16)
}

/// A server exchange of `GET path` answered `code`, from `start` to `end`.
fn server(conn: u64, path: &str, code: u16, start: u64, end: u64) -> Box<Exchange> {
    let mut s = Script::accepted(conn);
    s.recv(&get(path)).send(&status(code, "x"));
    let mut ex = one(&run(&s.take()).0).clone();
    (ex.pid, ex.request_first_ns, ex.request_last_ns) = (PID, start, start + 1);
    (ex.response_first_ns, ex.response_last_ns) = (Some(end - 1), Some(end));
    Box::new(ex)
}

/// A gzip envelope for an event about `GET path` raising `kind`, posted at `at`, read by the
/// tracker from the bytes a client sends.
fn envelope(conn: u64, n: u8, path: &str, kind: &str, at: u64) -> Box<Exchange> {
    let event = serde_json::json!({
        "level": "error", "event_id": id(n),
        "exception": {"values": [{"type": kind, "value": "secret"}]},
        "request": {"url": format!("http://127.0.0.1:8000{path}"), "method": "GET"},
        // Barely compressible: the gzip body is larger than the default body prefix.
        "breadcrumbs": {"values": [{"message": noise(12_000)}]},
    })
    .to_string();
    let plain = format!("{{\"event_id\":\"{}\"}}\n{{\"type\":\"event\",\"length\":{}}}\n{event}\n", id(n), event.len());
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(plain.as_bytes()).unwrap();
    let body = enc.finish().unwrap();
    let mut req = format!(
        "POST /api/42/envelope/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut s = Script::connected(conn);
    s.send(&req).recv(&status(200, "{}"));
    let mut ex = one(&run(&s.take()).0).clone();
    (ex.pid, ex.request_first_ns, ex.request_last_ns) = (PID, at, at + 1);
    (ex.response_first_ns, ex.response_last_ns) = (Some(at + 2), Some(at + 3));
    Box::new(ex)
}

fn noise(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + (x >> 59) as u8 % 26)
        })
        .collect()
}

/// (target, event id) of the exchanges passed on, in order.
type Passed = Vec<(String, Option<String>)>;

/// Feed the exchanges, tick to `until`, finish: what was passed on, and (matched, unmatched).
// Exchanges are boxed once and handed through the stages: moves are pointer-sized.
#[allow(clippy::vec_box)]
fn run_join(exchanges: Vec<Box<Exchange>>, until: u64) -> (Passed, (u64, u64)) {
    let mut join = SentryJoin::new(SentryConfig::default());
    let mut passed = Vec::new();
    let mut events = (0, 0);
    let mut out = |o: SentryOut| match o {
        SentryOut::Exchange(ex) => passed.push((ex.target.clone(), ex.sentry_event_id.clone())),
        SentryOut::Event { matched: true, .. } => events.0 += 1,
        SentryOut::Event { matched: false, .. } => events.1 += 1,
    };
    for ex in exchanges {
        join.observe(ex, &mut out);
    }
    join.tick(until, &mut out);
    assert_eq!(join.held(), 0, "every exchange leaves by its deadline");
    join.finish(&mut out);
    (passed, events)
}

#[test]
fn the_event_goes_to_the_one_failed_request_it_describes() {
    let xs = vec![
        server(1, "/fail/1", 500, S, S + 10),
        server(2, "/fail/2", 500, S, S + 20),
        server(3, "/ok", 200, S, S + 5),
        envelope(4, 2, "/fail/2", "ValueError", S + 30),
        envelope(5, 1, "/fail/1", "ValueError", S + 40),
    ];
    let (passed, events) = run_join(xs, 100 * S);
    assert_eq!(events, (2, 0));
    let ids: Vec<_> = passed.iter().filter(|(t, _)| t.starts_with("/fail")).cloned().collect();
    // Each leaves as soon as its event is decided, with that event's id.
    assert!(ids.contains(&("/fail/1".into(), Some(id(1)))), "{passed:?}");
    assert!(ids.contains(&("/fail/2".into(), Some(id(2)))), "{passed:?}");
    assert!(passed.iter().filter(|(t, _)| !t.starts_with("/fail")).all(|(_, e)| e.is_none()));
}

#[test]
fn an_event_arriving_first_waits_for_its_exchange() {
    // The envelope was answered before the exchange reached this stage (an earlier stage
    // held it); the exchange had ended before the envelope was sent.
    let mut join = SentryJoin::new(SentryConfig::default());
    let mut got = Vec::new();
    let mut out = |o: SentryOut| {
        if let SentryOut::Exchange(ex) = o {
            got.push(ex.sentry_event_id.clone());
        }
    };
    join.observe(envelope(4, 9, "/fail/9", "ValueError", S + 30), &mut out);
    join.tick(S + 100, &mut out);
    join.observe(server(1, "/fail/9", 500, S, S + 10), &mut out);
    join.tick(10 * S, &mut out);
    assert_eq!(got, vec![None, Some(id(9))]);
    assert_eq!((join.stats.matched, join.stats.unmatched), (1, 0));
}

#[test]
fn ambiguity_wrong_types_and_strangers_are_unmatched() {
    // Two failed requests with the same method and path: nothing tells them apart.
    let (passed, events) = run_join(
        vec![
            server(1, "/fail", 500, S, S + 10),
            server(2, "/fail", 500, S, S + 20),
            envelope(4, 1, "/fail", "ValueError", S + 30),
        ],
        100 * S,
    );
    assert_eq!(events, (0, 1));
    assert!(passed.iter().all(|(_, e)| e.is_none()));

    // The traceback the agent read names another exception.
    let mut ex = server(1, "/fail/1", 500, S, S + 10);
    ex.exception = Some(ExceptionInfo { kind: "KeyError".into(), message: String::new(), stacktrace: String::new() });
    let (_, events) = run_join(vec![ex, envelope(4, 1, "/fail/1", "ValueError", S + 30)], 100 * S);
    assert_eq!(events, (0, 1));

    // A qualified traceback name matches the SDK's bare class name.
    let mut ex = server(1, "/fail/1", 500, S, S + 10);
    ex.exception = Some(ExceptionInfo { kind: "app.Boom".into(), message: String::new(), stacktrace: String::new() });
    let (passed, events) = run_join(vec![ex, envelope(4, 1, "/fail/1", "Boom", S + 30)], 100 * S);
    // The envelope passes on at once; the exchange after its event was decided.
    assert_eq!(events, (1, 0));
    assert_eq!(passed[1], ("/fail/1".to_owned(), Some(id(1))));

    // Another process, a 2xx, a request started after the envelope: none is a candidate.
    let mut other = server(1, "/fail/1", 500, S, S + 10);
    other.pid = PID + 1;
    for ex in [other, server(2, "/fail/1", 200, S, S + 10), server(3, "/fail/1", 500, S + 50, S + 60)] {
        let (passed, events) = run_join(vec![ex, envelope(4, 1, "/fail/1", "ValueError", S + 30)], 100 * S);
        assert_eq!(events, (0, 1));
        assert!(passed.iter().all(|(_, e)| e.is_none()));
    }
}

#[test]
fn an_exchange_passed_on_already_is_never_tied_and_blocks_its_twins() {
    let mut join = SentryJoin::new(SentryConfig::default());
    let mut got = Vec::new();
    let mut out = |o: SentryOut| {
        if let SentryOut::Exchange(ex) = o {
            got.push(ex.sentry_event_id.clone());
        }
    };
    join.observe(server(1, "/fail", 500, S, S + 10), &mut out);
    join.tick(10 * S, &mut out);
    join.observe(server(2, "/fail", 500, 10 * S, 10 * S + 10), &mut out);
    join.observe(envelope(4, 1, "/fail", "ValueError", 10 * S + 30), &mut out);
    join.finish(&mut out);
    assert_eq!(got.iter().filter(|e| e.is_some()).count(), 0, "{got:?}");
    assert_eq!((join.stats.matched, join.stats.unmatched), (0, 1));
}

#[test]
fn unreadable_envelopes_and_rejected_ones() {
    let mut cut = envelope(4, 1, "/fail/1", "ValueError", S + 30);
    cut.request_body_prefix.truncate(cut.request_body_prefix.len() / 2);
    let (_, events) = run_join(vec![server(1, "/fail/1", 500, S, S + 10), cut], 100 * S);
    assert_eq!(events, (0, 1));

    // Rate-limited by Sentry: the event is stored nowhere, so it is not an event at all.
    let mut rejected = envelope(4, 1, "/fail/1", "ValueError", S + 30);
    rejected.status = Some(429);
    let (passed, events) = run_join(vec![server(1, "/fail/1", 500, S, S + 10), rejected], 100 * S);
    assert_eq!(events, (0, 0));
    assert!(passed.iter().all(|(_, e)| e.is_none()));
}

#[test]
fn percent_escapes_compare_decoded() {
    assert_eq!(&*percent_decoded("/a%20b/%zz"), b"/a b/%zz");
    assert_eq!(&*percent_decoded("/%"), b"/%");
}

#[test]
fn a_twin_still_in_flight_keeps_the_event_untied() {
    // /fail/3 failed on two connections at once: one answered, the other still in flight when
    // the envelope is decided. The event may be the second one's: no tie.
    let mut join = SentryJoin::new(SentryConfig::default());
    let mut ids = Vec::new();
    let mut out = |o: SentryOut| {
        if let SentryOut::Exchange(ex) = o {
            ids.push(ex.sentry_event_id.clone());
        }
    };
    let answered = server(1, "/fail/3", 500, S, S + 10);
    let mut twin = RequestSeen::of(&server(2, "/fail/3?x=1", 500, S + 5, S + 50 * S));
    (twin.role, twin.shape) = (Role::Server, crate::sentry::request_shape("GET", "/fail/%33"));
    for seen in [RequestSeen::of(&answered), twin] {
        join.request_seen(&seen);
    }
    join.observe(answered, &mut out);
    join.observe(envelope(4, 3, "/fail/3", "ValueError", S + 30), &mut out);
    join.tick(10 * S, &mut out);
    assert_eq!((join.stats.matched, join.stats.unmatched), (0, 1));
    // Without the twin in flight the same event is tied.
    let (passed, events) =
        run_join(vec![server(1, "/fail/3", 500, S, S + 10), envelope(4, 3, "/fail/3", "ValueError", S + 30)], 100 * S);
    assert_eq!((events, passed[1].1.clone()), ((1, 0), Some(id(3))), "{passed:?}");
    assert_eq!(ids, [None, None], "the envelope, then the answered twin untied");
}
