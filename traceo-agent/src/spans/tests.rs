//! Spans from exchanges the real tracker and correlation stage produced.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{InstrumentationScope, KeyValue, any_value::Value},
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind, status::StatusCode},
};
use prost::Message as _;

use crate::correlate::{CorrelateConfig, Correlator, IdGen};
use crate::events::Event;
use crate::http::tests::script::{Script, get, ok};
use crate::http::{ConnTracker, Exchange, TrackerConfig, WallClock};

use super::ConnRuns;
use super::{ResourceEntry, SpanBlock, request, resource};

/// The prost span of an exchange, checked against the export path's bytes for it: the
/// same message, byte for byte.
/// Encoded twice: the second time its connection attributes are the ones kept from the
/// first (`ConnRuns`), and must be the same bytes.
fn span(ex: &Exchange, clock: &WallClock) -> Option<Span> {
    let (mut wire, mut runs) = (Vec::new(), ConnRuns::default());
    let encoded = super::encode_span(ex, clock, &mut runs, &mut wire);
    let sp = super::span(ex, clock);
    assert_eq!(encoded, sp.is_some());
    if let Some(sp) = &sp {
        assert_eq!(wire, sp.encode_to_vec(), "encode_span differs from prost for {sp:?}");
        let mut again = Vec::new();
        assert!(super::encode_span(ex, clock, &mut runs, &mut again));
        assert_eq!(again, wire, "encoded again with its connection's kept attributes");
        assert_eq!(runs.hits, u64::from(ex.db.is_none()));
    }
    sp
}

const CLOCK: WallClock = WallClock { offset_ns: 1_700_000_000_000_000_000 };

fn exchanges(cfg: TrackerConfig, events: &[Event]) -> Vec<Exchange> {
    let mut tracker = ConnTracker::new(cfg);
    let mut correlator = Correlator::with_ids(CorrelateConfig::default(), IdGen::seeded(1));
    let mut out = Vec::new();
    for ev in events {
        correlator.observe(ev);
        tracker.handle(&mut ev.clone(), &mut |t| correlator.push(t, &mut |x| out.push(*x)));
    }
    tracker.finish(&mut |t| correlator.push(t, &mut |x| out.push(*x)));
    correlator.finish(&mut |x| out.push(*x));
    out
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attr(span, key)? {
        Value::StringValue(s) => Some(s.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key)? {
        Value::IntValue(i) => Some(*i),
        other => panic!("{key} is not an int: {other:?}"),
    }
}

/// Every key and string value, flattened (arrays too), for "never exported" checks.
fn everything(attrs: &[KeyValue]) -> String {
    fn value(v: &Value) -> String {
        match v {
            Value::StringValue(s) => s.clone(),
            Value::ArrayValue(a) => a.values.iter().filter_map(|v| v.value.as_ref()).map(value).collect(),
            other => format!("{other:?}"),
        }
    }
    attrs
        .iter()
        .map(|kv| {
            format!("{}={} ", kv.key, kv.value.as_ref().and_then(|v| v.value.as_ref()).map(value).unwrap_or_default())
        })
        .collect()
}

const SECRET_REQUEST: &str = "POST /api/v1/jobs/123?token=abc&page=2 HTTP/1.1\r\nHost: engine:8000\r\n\
    User-Agent: curl/8.1\r\nAuthorization: Bearer s3cr3t\r\nCookie: sid=c00kie\r\nX-Api-Key: k3y\r\n\
    X-Tenant: acme\r\nX-Request-ID: r-1\r\nContent-Length: 14\r\n\r\npassword=hunt2";

#[test]
fn a_server_span_carries_the_http_conventions_and_never_a_secret() {
    let mut s = Script::accepted(1);
    s.recv(SECRET_REQUEST.as_bytes());
    s.send(b"HTTP/1.1 503 Unavailable\r\nSet-Cookie: sid=n3w\r\nContent-Length: 4\r\n\r\ndown");
    s.close();
    // The user asks for secrets too: they are still never kept, let alone exported.
    let headers = ["X-Tenant", "Authorization", "Cookie", "X-Api-Key"].map(String::from).to_vec();
    let xs = exchanges(TrackerConfig { extra_headers: headers, ..Default::default() }, &s.take());
    let ex = &xs[0];
    let sp = span(ex, &CLOCK).expect("ids were assigned");
    assert_eq!(sp.kind, SpanKind::Server as i32);
    assert_eq!(sp.name, "POST /api/v1/jobs/{id}");
    assert_eq!((sp.trace_id.len(), sp.span_id.len(), sp.parent_span_id.len()), (16, 8, 0));
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(Some(hex(&sp.trace_id)), ex.trace_id().map(|id| id.to_string()));
    assert_eq!(Some(hex(&sp.span_id)), ex.span_id().map(|id| id.to_string()));
    assert_eq!(sp.start_time_unix_nano, (CLOCK.offset_ns as u64) + ex.request_first_ns);
    assert_eq!(sp.end_time_unix_nano, (CLOCK.offset_ns as u64) + ex.response_last_ns.unwrap());
    assert_eq!(text(&sp, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(text(&sp, "url.path").as_deref(), Some("/api/v1/jobs/123"));
    assert_eq!(text(&sp, "url.query").as_deref(), Some("token=REDACTED&page=2"));
    assert_eq!(text(&sp, "http.route").as_deref(), Some("/api/v1/jobs/{id}"));
    assert_eq!(int(&sp, "http.response.status_code"), Some(503));
    assert_eq!((text(&sp, "server.address").as_deref(), int(&sp, "server.port")), (Some("engine"), Some(8000)));
    assert_eq!((text(&sp, "client.address").as_deref(), int(&sp, "client.port")), (Some("10.0.0.2"), Some(51000)));
    assert_eq!(text(&sp, "network.peer.address").as_deref(), Some("10.0.0.2"));
    assert_eq!(int(&sp, "network.peer.port"), Some(51000));
    assert_eq!(text(&sp, "user_agent.original").as_deref(), Some("curl/8.1"));
    assert_eq!((int(&sp, "http.request.body.size"), int(&sp, "http.response.body.size")), (Some(14), Some(4)));
    assert_eq!(text(&sp, "error.type").as_deref(), Some("503"));
    assert_eq!(sp.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    assert_eq!(text(&sp, "traceo.correlation_id").as_deref(), Some("r-1"));
    assert!(attr(&sp, "traceo.link").is_none(), "a trace's first span has no link");
    assert!(attr(&sp, "http.request.header.x-tenant").is_some());
    let all = everything(&sp.attributes).to_ascii_lowercase();
    for secret in ["authorization", "cookie", "api-key", "s3cr3t", "c00kie", "k3y", "n3w", "hunt2", "abc"] {
        assert!(!all.contains(secret), "{secret} exported: {all}");
    }
}

/// A client's `GET target` answered 200.
fn client_exchange(target: &str) -> Exchange {
    let mut s = Script::connected(2);
    s.send(&get(target));
    s.recv(&ok("fine"));
    s.close();
    exchanges(TrackerConfig::default(), &s.take()).remove(0)
}

#[test]
fn a_client_span_names_the_server_it_called() {
    let sp = span(&client_exchange("/down?page=1"), &CLOCK).expect("ids");
    assert_eq!((sp.kind, sp.name.as_str()), (SpanKind::Client as i32, "GET /down"));
    assert_eq!(text(&sp, "url.full").as_deref(), Some("http://svc/down?page=1"));
    assert_eq!(text(&sp, "server.address").as_deref(), Some("svc"));
    assert_eq!(int(&sp, "server.port"), Some(51000), "no port in Host: the peer's");
    assert!(attr(&sp, "http.route").is_none() && attr(&sp, "client.address").is_none());
    assert!(attr(&sp, "error.type").is_none());
    assert_eq!(sp.status.as_ref().map(|s| s.code), Some(StatusCode::Unset as i32));
}

#[test]
fn a_tls_exchange_is_https_in_its_span() {
    use crate::events::{Direction, Syscall};
    let mut s = Script::connected(2);
    let (req, resp) = (get("/down"), ok("fine"));
    s.data(Direction::Egress, &req, req.len() as u64, Syscall::SslWrite);
    s.data(Direction::Ingress, &resp, resp.len() as u64, Syscall::SslRead);
    s.close();
    let xs = exchanges(TrackerConfig::default(), &s.take());
    assert!(xs[0].tls);
    let sp = span(&xs[0], &CLOCK).expect("ids");
    assert_eq!(text(&sp, "url.scheme").as_deref(), Some("https"));
    assert_eq!(text(&sp, "url.full").as_deref(), Some("https://svc/down"));
    assert_eq!(attr(&sp, "tls.established"), Some(&Value::BoolValue(true)));
    let plain = exchanges(TrackerConfig::default(), &Script::connected(3).send(&req).recv(&resp).take());
    let sp = span(&plain[0], &CLOCK).expect("ids");
    assert_eq!(text(&sp, "url.scheme").as_deref(), Some("http"));
    assert!(attr(&sp, "tls.established").is_none());
}

#[test]
fn an_exchange_without_response_is_a_failed_span() {
    let mut s = Script::accepted(3);
    s.recv(&get("/hang"));
    s.close();
    let xs = exchanges(TrackerConfig::default(), &s.take());
    let sp = span(&xs[0], &CLOCK).expect("ids");
    assert_eq!(text(&sp, "error.type").as_deref(), Some("no_response"));
    assert!(attr(&sp, "http.response.status_code").is_none());
    assert_eq!(sp.end_time_unix_nano, (CLOCK.offset_ns as u64) + xs[0].request_last_ns);
}

#[test]
fn without_ids_there_is_no_span() {
    let mut s = Script::accepted(4);
    s.recv(&get("/x"));
    s.send(&ok("x"));
    let mut tracker = ConnTracker::new(TrackerConfig::default());
    let mut xs = Vec::new();
    for ev in &s.take() {
        tracker.handle(&mut ev.clone(), &mut |t| xs.extend(t.into_exchange()));
    }
    assert!(span(&xs[0], &CLOCK).is_none());
}

#[test]
fn one_resource_per_traced_process_and_spans_grouped_under_it() {
    let r = resource("engine", 42, Some("python3.11"), Some("host-1"));
    let keys: Vec<&str> = r.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["service.name", "process.pid", "process.executable.name", "host.name"]);
    let entry = |service: &str, pid| {
        Arc::new(ResourceEntry { service: service.into(), pid, resource: resource(service, pid, None, None) })
    };
    let (a, b) = (entry("engine", 1), entry("mcp", 2));
    let named = |n: &str| Span { name: n.into(), ..Span::default() };
    // A process serving two services has a resource for each.
    let c = entry("admin", 1);
    let items = vec![
        (a.clone(), named("1")),
        (b, named("2")),
        (c.clone(), named("4")),
        (a.clone(), named("3")),
        (c, named("5")),
    ];
    let block = |spans: &[&Span]| {
        let mut b = SpanBlock::default();
        spans.iter().for_each(|s| b.push(&s.encode_to_vec()));
        b
    };
    let encoded: Vec<_> = items.iter().map(|(r, s)| (r.clone(), block(&[s]))).collect();
    // Blocks of several spans are their spans in order.
    let (one, two) = (named("6"), named("7"));
    let blocked = [(a.clone(), block(&[&one, &two])), (a.clone(), block(&[&one]))];
    assert_eq!(
        request(blocked.into()),
        prost_request(vec![(a.clone(), one.clone()), (a.clone(), two), (a.clone(), one)]).encode_to_vec()
    );
    let bytes = request(encoded);
    assert_eq!(bytes, prost_request(items).encode_to_vec(), "the request prost would have sent");
    let req = ExportTraceServiceRequest::decode(&bytes[..]).expect("a request");
    let groups: Vec<Vec<&str>> =
        req.resource_spans.iter().map(|rs| rs.scope_spans[0].spans.iter().map(|s| s.name.as_str()).collect()).collect();
    assert_eq!(groups, [vec!["1", "3"], vec!["2"], vec!["4", "5"]]);
    assert_eq!(req.resource_spans[0].scope_spans[0].scope.as_ref().map(|s| s.name.as_str()), Some("traceo"));
}

/// The request as the generated client used to build it, for the byte comparison.
fn prost_request(items: Vec<(Arc<ResourceEntry>, Span)>) -> ExportTraceServiceRequest {
    let scope =
        InstrumentationScope { name: "traceo".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() };
    let mut groups: Vec<(Arc<ResourceEntry>, Vec<Span>)> = Vec::new();
    for (r, span) in items {
        match groups.iter_mut().find(|(g, _)| g.service == r.service && g.pid == r.pid) {
            Some((_, spans)) => spans.push(span),
            None => groups.push((r, vec![span])),
        }
    }
    let resource_spans = groups
        .into_iter()
        .map(|(r, spans)| ResourceSpans {
            resource: Some(r.resource.clone()),
            scope_spans: vec![ScopeSpans { scope: Some(scope.clone()), spans, ..Default::default() }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

#[test]
fn every_part_of_a_span_encodes_as_prost_does() {
    use crate::correlate::{SpanId, TraceId};
    use crate::http::SpanRef;
    let mut s = Script::accepted(1);
    s.recv(SECRET_REQUEST.as_bytes());
    s.send(b"HTTP/1.1 500 Oops\r\nX-Tenant: r\r\nContent-Length: 4\r\n\r\ndown");
    let cfg = TrackerConfig { extra_headers: vec!["X-Tenant".into()], ..Default::default() };
    let base = exchanges(cfg, &s.take()).remove(0);
    let to = |n: u8| SpanRef { trace_id: TraceId([n; 16]), span_id: SpanId([n; 8]) };
    let mut x = base.clone();
    let trace = x.trace.as_mut().expect("ids");
    trace.parent = Some(SpanId([7; 8]));
    trace.trace_state = Some("congo=t61rcWkgMzE".into());
    x.exception = Some(crate::logs::ExceptionInfo {
        kind: "ValueError".into(),
        message: "bad".into(),
        stacktrace: "Traceback (most recent call last):\n".repeat(20),
    });
    x.sentry_event_id = Some("e1".into());
    x.job_origin = Some(to(1));
    x.candidates = vec![to(2), to(3)];
    x.propagated = Some(false);
    x.job_id = Some("job-1".into());
    x.job_status = Some("done".into());
    x.tls = true;
    let sp = span(&x, &CLOCK).expect("ids");
    assert_eq!((sp.events.len(), sp.links.len(), sp.parent_span_id.len()), (1, 3, 8));
    assert!(attr(&sp, "http.response.header.x-tenant").is_some());
    // An unknown method, a status below 500, no body size.
    let mut y = base;
    y.method = "BREW".into();
    y.status = Some(418);
    y.response_body_bytes = None;
    y.propagated = Some(true);
    assert_eq!(text(&span(&y, &CLOCK).expect("ids"), "http.request.method").as_deref(), Some("_OTHER"));
}

#[test]
fn mcp_spans_are_named_for_the_tool_and_a_failed_call_is_an_error() {
    let call = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"job_status","arguments":{}}}"#;
    let answer = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{\"isError\":true}}\r\n\r\n";
    let mut s = Script::accepted(1);
    s.recv(format!("POST /mcp HTTP/1.1\r\nHost: mcp\r\nContent-Length: {}\r\n\r\n{call}", call.len()).as_bytes());
    s.send(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        )
        .as_bytes(),
    );
    let mut x = exchanges(TrackerConfig::default(), &s.take()).remove(0);
    x.mcp = crate::mcp::parse(&x);
    let span = span(&x, &CLOCK).expect("a span");
    assert_eq!(span.name, "tools/call job_status");
    assert_eq!(text(&span, "mcp.method.name").as_deref(), Some("tools/call"));
    assert_eq!(text(&span, "mcp.tool.name").as_deref(), Some("job_status"));
    assert_eq!(text(&span, "jsonrpc.request.id").as_deref(), Some("4"));
    assert_eq!(text(&span, "mcp.outcome").as_deref(), Some("tool_error"));
    assert_eq!(text(&span, "error.type").as_deref(), Some("tool_error"), "a failure inside a 200 is an error");
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
}

#[test]
fn resources_are_cached_per_process_and_service() {
    let mut b = super::SpanBuilder::new(CLOCK, super::HostFacts { host_name: None, live: false });
    let (a, again, other) = (b.resource("engine", 1), b.resource("engine", 1), b.resource("admin", 1));
    assert!(Arc::ptr_eq(&a, &again) && !Arc::ptr_eq(&a, &other));
    assert_eq!((other.service.as_str(), other.pid), ("admin", 1));
    // Back to the first after another: the cached one, not a new one.
    assert!(Arc::ptr_eq(&a, &b.resource("engine", 1)));
    assert_eq!(b.resource("engine", 2).pid, 2);
}

#[test]
fn lengths_either_side_of_one_byte_and_ipv6_peers_encode_as_prost_does() {
    // A KeyValue, its AnyValue or an array crossing 127 bytes while what it holds does not,
    // server and client spans, with and without a Host header, an absolute (proxy) target.
    let v6: std::net::SocketAddr = "[2001:db8::8a2e:370:7334]:8443".parse().expect("an address");
    let mapped: std::net::SocketAddr = "[::ffff:10.1.2.3]:80".parse().expect("an address");
    let mut spans = 0;
    for n in [1, 90, 100, 105, 110, 115, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 130, 200, 20_000] {
        let t = "t".repeat(n);
        for host in [format!("Host: {t}:81\r\n"), format!("Host: [::1]:{}\r\n", n % 60_000), String::new()] {
            for target in [format!("/{t}?q={t}"), format!("http://{t}/p?q")] {
                let req = format!("GET {target} HTTP/1.1\r\n{host}User-Agent: {t}\r\nX-Tenant: {t}\r\n\r\n");
                let cfg = || TrackerConfig { extra_headers: vec!["X-Tenant".into()], ..Default::default() };
                let mut server = Script::accepted(1);
                server.recv(req.as_bytes()).send(&ok(&t));
                let mut client = Script::connected(2);
                client.send(req.as_bytes()).recv(&ok(&t));
                for mut x in [exchanges(cfg(), &server.take()), exchanges(cfg(), &client.take())].concat() {
                    for peer in [x.peer, Some(v6), Some(mapped)] {
                        x.peer = peer;
                        x.local = peer;
                        span(&x, &CLOCK).expect("ids");
                        spans += 1;
                    }
                }
            }
        }
    }
    assert_eq!(spans, 20 * 3 * 2 * 2 * 3);
}

#[test]
fn spans_in_open_blocks_are_sent_or_counted_when_the_output_is_dropped() {
    let ex = client_exchange("/down");
    // Nothing listens on port 1: the export fails and is counted.
    let host = super::HostFacts { host_name: None, live: false };
    let mut out = super::SpanOutput::start(
        &super::OtlpTarget { endpoint: "127.0.0.1:1".into(), protocol: super::Protocol::Grpc },
        CLOCK,
        host,
    )
    .expect("output");
    let counts = out.counts().clone();
    out.send(&ex);
    // An agent ending on an error drops its output without `finish`.
    drop(out);
    let handed: u64 = counts.exported.load(std::sync::atomic::Ordering::Relaxed)
        + counts.dropped().iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(handed, 1, "the span in the open block was neither sent nor counted");
}

/// Requests of one connection whose Host or User-Agent differ, or two connections on one
/// slot, never take each other's connection attributes.
#[test]
fn kept_connection_attributes_are_reused_only_for_the_same_connection_facts() {
    let mut s = Script::accepted(1);
    for (path, host, agent) in
        [("/a", "one:80", "x/1"), ("/b", "one:80", "x/1"), ("/c", "two:81", "x/1"), ("/d", "two:81", "y/2")]
    {
        s.recv(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n\r\n").as_bytes());
        s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    }
    s.close();
    let mut xs = exchanges(TrackerConfig::default(), &s.take());
    assert_eq!(xs.len(), 4);
    // A fifth on another connection that shares the first's slot, with another peer.
    let mut other = xs[0].clone();
    other.conn_id += 256;
    other.peer = Some("10.1.2.3:4444".parse().expect("address"));
    xs.push(other);
    let mut runs = ConnRuns::default();
    for ex in &xs {
        let mut wire = Vec::new();
        assert!(super::encode_span(ex, &CLOCK, &mut runs, &mut wire));
        let sp = super::span(ex, &CLOCK).expect("a span");
        assert_eq!(wire, sp.encode_to_vec(), "{}", ex.target);
    }
    // /b repeats /a's; /c, /d and the other connection each differ from the span before.
    assert_eq!((runs.hits, runs.misses), (1, 4));
}
