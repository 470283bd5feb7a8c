//! The JSON line contract and secret handling.

use serde_json::Value;

use crate::correlate::{SpanId, TraceId};
use crate::http::{Link, TraceContext, TrackerConfig, WallClock};

use super::script::*;

use crate::http::EXCHANGE_FIELDS as REQUIRED;

fn parse(line: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => m,
        other => panic!("not a JSON object: {other:?} from {line}"),
    }
}

#[test]
fn json_line_has_every_required_field_with_the_right_type() {
    let mut s = Script::accepted(1);
    s.recv(
        b"POST /api/v1/jobs/123?page=2 HTTP/1.1\r\nHost: engine\r\nUser-Agent: curl/8\r\n\
          X-Request-ID: req-1\r\nContent-Length: 2\r\n\r\n{}",
    );
    s.send(&status(201, "{\"job\":1}"));
    let (xs, _) = run(&s.take());
    let x = one(&xs);
    // Monotonic 1.001 s + offset = 2024-01-01T00:00:01.001...Z
    let clock = WallClock { offset_ns: 1_704_067_200_000_000_000 };
    let line = x.to_json_line(&clock);
    assert!(!line.contains('\n'), "one line");
    let m = parse(&line);
    for key in REQUIRED {
        assert!(m.contains_key(key), "missing {key} in {line}");
    }
    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
    assert!(line.starts_with("{\"ts\":"), "ts first: {line}");
    assert!(keys.len() > REQUIRED.len());
    let ts = m["ts"].as_str().unwrap_or_else(|| panic!("ts string"));
    assert!(ts.starts_with("2024-01-01T00:00:01.00") && ts.ends_with('Z'), "{ts}");
    assert_eq!(m["service"], "engine");
    assert_eq!(m["direction"], "server");
    assert_eq!(m["pid"], PID);
    assert_eq!(m["tid"], TID);
    assert_eq!(m["method"], "POST");
    assert_eq!(m["target"], "/api/v1/jobs/123?page=2");
    assert_eq!(m["route"], "/api/v1/jobs/{id}");
    assert_eq!(m["status"], 201);
    assert!(m["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{}", m["duration_ms"]);
    assert_eq!(m["request_bytes"], 2);
    assert_eq!(m["response_bytes"], 9);
    assert_eq!(m["local"], "10.0.0.1:8080");
    assert_eq!(m["peer"], "10.0.0.2:51000");
    for null in ["trace_id", "span_id", "parent_span_id", "job_id"] {
        assert!(m[null].is_null(), "{null} should be null");
    }
    assert_eq!(m["correlation_id"], "req-1");
    assert_eq!(m["host"], "engine");
    assert_eq!(m["user_agent"], "curl/8");
    assert_eq!(m["version"], "1.1");
    assert_eq!(m["flags"], Value::Array(vec![]));
    assert!(m["ttfb_ms"].is_number());
}

#[test]
fn ids_print_as_lower_case_hex_and_an_unknown_parent_as_null() {
    let mut s = Script::accepted(1);
    s.recv(&get("/x"));
    s.send(&ok("y"));
    let (xs, _) = run(&s.take());
    let mut x = one(&xs).clone();
    let trace_id = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736");
    let span_id = SpanId::parse("00f067aa0ba902b7");
    let (Some(trace_id), Some(span_id)) = (trace_id, span_id) else { panic!("valid ids") };
    x.trace = Some(TraceContext { trace_id, span_id, parent: None, link: None, trace_state: None });
    let line = x.to_json_line(&WallClock::default());
    let ids = r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","parent_span_id":null,"#;
    assert!(line.contains(ids), "{line}");
    x.trace = x.trace.map(|t| TraceContext { parent: Some(SpanId([0xab; 8])), link: Some(Link::Thread), ..t });
    let m = parse(&x.to_json_line(&WallClock::default()));
    assert_eq!((&m["parent_span_id"], &m["link"]), (&Value::from("abababababababab"), &Value::from("thread")));
}

#[test]
fn unknowns_are_null_and_ipv6_is_bracketed() {
    let mut s = Script::unseen(1);
    s.recv(&get("/x"));
    let (mut xs, _) = run(&s.take());
    let mut x = xs.pop().unwrap_or_else(|| panic!("one exchange"));
    x.local = Some(addr("[::1]:80"));
    let m = parse(&x.to_json_line(&WallClock { offset_ns: -5_000_000_000_000 }));
    for key in REQUIRED {
        assert!(m.contains_key(key), "missing {key}");
    }
    assert_eq!(m["local"], "[::1]:80");
    for null in ["ts", "status", "duration_ms", "response_bytes", "peer", "correlation_id"] {
        assert!(m[null].is_null(), "{null} should be null: {}", m[null]);
    }
    let flags: Vec<&str> =
        m["flags"].as_array().unwrap_or_else(|| panic!("flags array")).iter().filter_map(Value::as_str).collect();
    assert_eq!(flags, vec!["midstream", "no_response"]);
}

#[test]
fn secrets_never_reach_the_exchange_or_the_line() {
    let cfg = TrackerConfig {
        extra_headers: vec!["Authorization".into(), "X-Api-Key".into(), "Cookie".into(), "X-Tenant".into()],
        ..Default::default()
    };
    let mut s = Script::accepted(1);
    s.recv(
        b"GET /files?name=a.txt&access_token=SECRET1&Signature=SECRET2 HTTP/1.1\r\n\
          Authorization: Bearer SECRET3\r\nCookie: sid=SECRET4\r\nX-Api-Key: SECRET5\r\n\
          Proxy-Authorization: Basic SECRET6\r\nX-Auth-Token: SECRET7\r\nX-Tenant: acme\r\n\r\n",
    );
    s.send(b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=SECRET8\r\nContent-Length: 0\r\n\r\n");
    let (xs, _) = run_with(cfg, &s.take());
    let x = one(&xs);
    let line = x.to_json_line(&WallClock::default());
    let debug = format!("{x:?}");
    for secret in 1..=8 {
        let needle = format!("SECRET{secret}");
        assert!(!line.contains(&needle), "{needle} in {line}");
        assert!(!debug.contains(&needle), "{needle} stored in the exchange");
    }
    assert_eq!(x.target, "/files?name=a.txt&access_token=REDACTED&Signature=REDACTED");
    let m = parse(&line);
    assert_eq!(m["headers"]["x-tenant"], "acme", "a harmless extra header is kept");
    assert!(m["headers"].get("authorization").is_none());
}
