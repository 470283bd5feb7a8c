//! End to end: two uvicorn apps traced by the agent, spans exported over OTLP/gRPC through a
//! real collector (rotel) to a receiver in the test; one trace per request chain, stitched
//! without any header from the apps.

mod support;

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::otlp::{Got, Receiver, Rotel, require_rotel};
use support::*;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// app1 (calls app2 on /call) and app2, both traced; the agent exports to `endpoint`.
struct Chain {
    app1: u16,
    metrics: u16,
    log: PathBuf,
    agent: Agent,
    _apps: [Proc; 2],
}

impl Chain {
    fn start(dir: &std::path::Path, endpoint: &str) -> Chain {
        Chain::start_with(dir, endpoint, &[])
    }

    /// With more agent arguments (`--otlp-protocol`).
    fn start_with(dir: &std::path::Path, endpoint: &str, extra: &[&str]) -> Chain {
        let (app1, app2) = (free_port(), free_port());
        let downstream = format!("http://127.0.0.1:{app2}");
        let p2 = uvicorn_app("chain_app:app", app2, 1, &[]);
        let p1 = uvicorn_app("chain_app:app", app1, 1, &[("DOWNSTREAM", &downstream)]);
        let metrics = free_port();
        let log = dir.join("exchanges.jsonl");
        let (s1, s2, m) = (format!("app1=port:{app1}"), format!("app2=port:{app2}"), format!("127.0.0.1:{metrics}"));
        let mut args = vec!["--service", &s1, "--service", &s2, "--metrics-addr", &m, "--otlp-endpoint", endpoint];
        args.extend(["--log", log.to_str().expect("utf-8 path")]);
        args.extend(extra);
        let agent = Agent::run(&args);
        Chain { app1, metrics, log, agent, _apps: [p1, p2] }
    }

    fn call(&self, i: usize, headers: &[&str]) {
        call(self.app1, i, headers);
    }

    fn metrics_text(&self) -> String {
        curl(&["-H", "Accept: application/openmetrics-text; version=1.0.0", &self.metric_url()])
    }

    /// The metrics once at least `spans` are counted exported (the agent refreshes its own
    /// counters on a 1 s tick); fails after 5 s.
    fn metrics_once_exported(&self, spans: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.metrics_text();
            if sample(&text, "traceo_agent_spans_exported_total").is_some_and(|n| n >= spans) {
                return text;
            }
            assert!(Instant::now() < deadline, "fewer than {spans} spans exported:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn metric_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics)
    }

    fn json_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect()
    }
}

/// GET /call?i=N on app1 with curl (not traced), which calls app2.
fn call(app1: u16, i: usize, headers: &[&str]) {
    let mut args: Vec<String> = headers.iter().flat_map(|h| ["-H".to_owned(), (*h).to_owned()]).collect();
    args.push(format!("http://127.0.0.1:{app1}/call?i={i}"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let body = curl(&refs);
    assert_eq!(body, "called 200", "app1 answered {body:?}");
}

/// The value of the first sample line starting with `prefix` (labels included).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.split(' ').nth(1)?.parse().ok())
}

fn find<'a>(spans: &'a [Got], service: &str, kind: &str, path: &str) -> Option<&'a Got> {
    spans.iter().find(|s| s.service == service && s.kind() == kind && s.attr("url.path") == Some(path))
}

/// The three spans of one chain i: app1 SERVER /call?i, app1 CLIENT /leaf/i, app2 SERVER /leaf/i.
fn chain_spans(spans: &[Got], i: usize) -> Option<(&Got, &Got, &Got)> {
    let query = format!("i={i}");
    let server = spans
        .iter()
        .find(|s| s.service == "app1" && s.kind() == "server" && s.attr("url.query") == Some(query.as_str()))?;
    let leaf = format!("/leaf/{i}");
    Some((server, find(spans, "app1", "client", &leaf)?, find(spans, "app2", "server", &leaf)?))
}

fn ready(test: &str) -> bool {
    require_root(test) && require_python(test) && require_rotel(test)
}

fn assert_parent(child: &Got, parent: &Got, link: &str) {
    assert_eq!(
        child.parent_id(),
        parent.span_id(),
        "{}\nshould be a child of\n{}",
        child.describe(),
        parent.describe()
    );
    assert_eq!(child.trace_id(), parent.trace_id(), "{} not in its parent's trace", child.describe());
    assert_eq!(child.attr("traceo.link"), Some(link), "{}", child.describe());
}

#[test]
fn a_chain_without_headers_is_one_trace_through_a_real_collector() {
    if !ready("spans_chain") {
        return;
    }
    let dir = temp_dir("spans-chain");
    let receiver = Receiver::start();
    let rotel = Rotel::forwarding(&dir, &receiver.endpoint());
    let mut chain = Chain::start(&dir, &rotel.endpoint());
    chain.call(1, &[]);
    let spans = receiver.wait_for("the chain's three spans", Duration::from_secs(30), |s| chain_spans(s, 1).is_some());
    let (server, client, far) = chain_spans(&spans, 1).expect("three spans");
    assert_eq!((server.kind(), client.kind(), far.kind()), ("server", "client", "server"));
    assert_eq!(server.span.name, "GET /call");
    assert_eq!((client.span.name.as_str(), far.span.name.as_str()), ("GET /leaf/{id}", "GET /leaf/{id}"));
    assert_eq!(server.parent_id(), "", "curl is not traced: app1's server span starts the trace");
    assert_eq!(server.attr("traceo.link"), None);
    assert_parent(client, server, "task");
    assert_parent(far, client, "connection");
    // Resources: one per traced process, with the documented attributes.
    for (s, service) in [(server, "app1"), (far, "app2")] {
        assert_eq!(s.resource.get("service.name").map(String::as_str), Some(service));
        assert!(s.pid > 0, "{:?}", s.resource);
        assert!(s.resource.get("process.executable.name").is_some_and(|n| n.starts_with("python")), "{:?}", s.resource);
        assert!(s.resource.contains_key("host.name"), "{:?}", s.resource);
    }
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
    assert_eq!(client.attr("traceo.propagated"), Some("false"));
    assert!(client.span.start_time_unix_nano <= far.span.start_time_unix_nano);
    assert!(far.span.end_time_unix_nano <= client.span.end_time_unix_nano);
    assert!(server.span.start_time_unix_nano <= client.span.start_time_unix_nano);
    assert!(client.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(now_ns - server.span.start_time_unix_nano < 120_000_000_000, "wall-clock start times");

    // The JSON lines carry the same ids, and the metrics the propagation report and exemplar.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = chain.json_lines();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for s in [server, client, far] {
        let line = lines
            .iter()
            .find(|l| l["span_id"] == s.span_id().as_str())
            .unwrap_or_else(|| panic!("no JSON line for {}: {lines:#?}", s.describe()));
        assert_eq!(line["trace_id"], s.trace_id().as_str());
        let parent = s.parent_id();
        assert_eq!(line["parent_span_id"], if parent.is_empty() { Value::Null } else { Value::from(parent) });
    }
    let text = chain.metrics_once_exported(3.0);
    assert_eq!(sample(&text, "traceo_propagation_total{service=\"app1\",outcome=\"absent\"}"), Some(1.0), "{text}");
    assert!(text.contains(&format!("trace_id=\"{}\"", server.trace_id())), "no exemplar with the trace id:\n{text}");
    chain.agent.stop();
}

#[test]
fn spans_reach_a_real_collector_over_otlp_http_too() {
    if !ready("spans_otlp_http") {
        return;
    }
    let dir = temp_dir("spans-otlp-http");
    let receiver = Receiver::start();
    let rotel = Rotel::forwarding(&dir, &receiver.endpoint());
    let mut chain = Chain::start_with(&dir, &rotel.http_endpoint(), &["--otlp-protocol", "http/protobuf"]);
    // More than one request on the kept-alive connection: three chains, one after another.
    for i in 1..=3 {
        chain.call(i, &[]);
        let what = format!("chain {i}'s three spans");
        receiver.wait_for(&what, Duration::from_secs(30), |s| chain_spans(s, i).is_some());
    }
    let spans = receiver.spans();
    for i in 1..=3 {
        let (server, client, far) = chain_spans(&spans, i).expect("three spans");
        assert_parent(client, server, "task");
        assert_parent(far, client, "connection");
        assert_eq!(server.resource.get("service.name").map(String::as_str), Some("app1"));
        assert_eq!(far.attr("http.route"), Some("/leaf/{id}"), "{}", far.describe());
    }
    let text = chain.metrics_once_exported(9.0);
    assert!(
        text.lines().filter(|l| l.starts_with("traceo_agent_spans_dropped_total")).all(|l| l.ends_with(" 0")),
        "{text}"
    );
    let log = chain.agent.stop().join("\n");
    assert!(log.contains("exporting spans over OTLP/HTTP"), "{log}");
}

#[test]
fn a_callers_traceparent_is_continued() {
    if !ready("spans_traceparent") {
        return;
    }
    let dir = temp_dir("spans-traceparent");
    let receiver = Receiver::start();
    let rotel = Rotel::forwarding(&dir, &receiver.endpoint());
    let mut chain = Chain::start(&dir, &rotel.endpoint());
    let traceparent = format!("traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    chain.call(2, &[&traceparent, "tracestate: caller=1", "X-Correlation-ID: order-77"]);
    let spans = receiver.wait_for("the chain's three spans", Duration::from_secs(30), |s| chain_spans(s, 2).is_some());
    let (server, client, far) = chain_spans(&spans, 2).expect("three spans");
    assert_eq!(server.trace_id(), CALLER_TRACE);
    assert_eq!(server.parent_id(), CALLER_SPAN);
    assert_eq!(server.attr("traceo.link"), Some("propagated"));
    assert_eq!(server.span.trace_state, "caller=1");
    assert_eq!(server.attr("traceo.correlation_id"), Some("order-77"));
    assert_parent(client, server, "task");
    assert_parent(far, client, "connection");
    assert_eq!(far.span.trace_state, "caller=1");
    chain.agent.stop();
}

#[test]
fn fifty_concurrent_requests_on_one_event_loop_each_get_their_own_parent() {
    if !ready("spans_concurrent") {
        return;
    }
    const N: usize = 50;
    let dir = temp_dir("spans-concurrent");
    let receiver = Receiver::start();
    let rotel = Rotel::forwarding(&dir, &receiver.endpoint());
    let mut chain = Chain::start(&dir, &rotel.endpoint());
    // All at once; every other request carries an X-Request-ID, which app1 forwards.
    let app1 = chain.app1;
    std::thread::scope(|scope| {
        for i in 0..N {
            scope.spawn(move || {
                let id = format!("X-Request-ID: req-{i}");
                let headers = [id.as_str()];
                call(app1, i, if i % 2 == 0 { &headers[..] } else { &[] });
            });
        }
    });
    let spans =
        receiver.wait_for("all chains", Duration::from_secs(60), |s| (0..N).all(|i| chain_spans(s, i).is_some()));
    let mut links: HashMap<String, usize> = HashMap::new();
    for i in 0..N {
        let (server, client, far) = chain_spans(&spans, i).expect("three spans");
        // The far end's parent is certain: the two ends of one connection.
        assert_parent(far, client, "connection");
        let link = client.attr("traceo.link").unwrap_or("none").to_owned();
        // Every link is certain, and right: the header where forwarded, else the asyncio task
        // that answered the request made the call.
        assert_parent(client, server, &link);
        if i % 2 == 0 {
            assert_eq!(link, "propagated", "req-{i} was forwarded: {}", client.describe());
            assert_eq!(client.attr("traceo.propagated"), Some("true"));
        }
        *links.entry(link).or_default() += 1;
        *links.entry("connection".into()).or_default() += 1;
    }
    assert_eq!(links.get("propagated"), Some(&(N / 2)), "{links:?}");
    assert_eq!(links.get("task"), Some(&(N / 2)), "{links:?}");
    let total: usize = links.values().sum();
    let mut shares: Vec<String> =
        links.iter().map(|(k, v)| format!("{k} {v} ({:.0}%)", 100.0 * *v as f64 / total as f64)).collect();
    shares.sort();
    println!("links over {total} parent links: {}", shares.join(", "));
    let text = chain.metrics_text();
    let propagated = sample(&text, "traceo_propagation_total{service=\"app1\",outcome=\"propagated\"}");
    assert_eq!(propagated, Some((N / 2) as f64), "{text}");
    chain.agent.stop();
}

#[test]
fn replay_exports_the_recorded_exchanges_as_spans_without_root() {
    let receiver = Receiver::start();
    let fixture = repo().join("tests/fixtures/http_server_curl.trec");
    let out = Command::new(AGENT)
        .arg("replay")
        .arg(&fixture)
        .args(["--otlp-endpoint", &receiver.endpoint()])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run replay");
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Replay waits for the export before it exits.
    let spans = receiver.spans();
    assert_eq!(spans.len(), 2, "{spans:?}");
    for line in &lines {
        let span = spans.iter().find(|s| line["span_id"] == s.span_id().as_str()).expect("a span per line");
        assert_eq!((span.service.as_str(), span.kind()), ("web", "server"));
        assert_eq!(line["trace_id"], span.trace_id().as_str());
        assert!(span.resource.contains_key("host.name"), "the recording host");
        assert!(!span.resource.contains_key("process.executable.name"), "pids of a recording are not looked up");
    }
}

#[test]
fn spans_are_dropped_and_counted_while_the_receiver_is_down_and_flow_again_after() {
    if !(require_root("spans_loss") && require_python("spans_loss")) {
        return;
    }
    let dir = temp_dir("spans-loss");
    let receiver = Receiver::start();
    let port = receiver.port;
    let mut chain = Chain::start(&dir, &receiver.endpoint());
    chain.call(1, &[]);
    receiver.wait_for("the first chain", Duration::from_secs(30), |s| chain_spans(s, 1).is_some());
    drop(receiver);

    for i in 10..15 {
        chain.call(i, &[]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let dropped = "traceo_agent_spans_dropped_total{reason=\"export_failed\"}";
    loop {
        let text = chain.metrics_text();
        if sample(&text, dropped).is_some_and(|n| n > 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no dropped spans counted while the receiver is down:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{}/health", chain.metrics)]).output();
    assert!(health.is_ok_and(|o| o.status.success()), "the agent stopped serving while the receiver was down");

    let receiver = Receiver::restart_on(port);
    // Keep calling until a new chain arrives: the exporter reconnects on its own.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut i = 100;
    loop {
        chain.call(i, &[]);
        let spans = receiver.spans();
        if (100..=i).any(|j| chain_spans(&spans, j).is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "spans did not flow again after the receiver came back");
        std::thread::sleep(Duration::from_millis(500));
        i += 1;
    }
    let log = chain.agent.stop();
    assert!(log.iter().any(|l| l.contains("OTLP export to") && l.contains("failed")), "{}", log.join("\n"));
    assert!(log.iter().any(|l| l.contains("works again")), "{}", log.join("\n"));
}
