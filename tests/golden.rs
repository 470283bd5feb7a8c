//! Golden tests (no root): every fixture in tests/fixtures/*.trec, recorded from real servers
//! and clients by tests/fixtures/record.sh, replayed to HTTP exchanges and compared with
//! tests/golden/<name>.jsonl. `TRACEO_BLESS=1` rewrites the golden files from the replay.
//!
//! A golden file only says "nothing changed"; it would just as happily keep a wrong answer. So
//! each fixture's meaning is also checked on its own, from what its scenario did (the requests
//! sent, the app's replies, the file sizes: tests/fixtures/README.md) and from the raw bytes on
//! the wire (`replay --events`), never from the exchange layer's own output.

mod support;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use serde_json::Value;
use support::*;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(format!("{name}.trec"))
}

fn golden_file(name: &str) -> PathBuf {
    repo().join("tests/golden").join(format!("{name}.jsonl"))
}

/// Fixture names, sorted.
fn fixtures() -> Vec<String> {
    let dir = repo().join("tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".trec").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// `traceo-agent replay FILE`: its stdout lines (one exchange each).
fn replay_lines(name: &str) -> Vec<String> {
    let out = Command::new(AGENT).arg("replay").arg(fixture(name)).output().expect("run replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay of {name} failed: {stderr}");
    // The only warnings the exchange layer logs are parse errors; real traffic has none.
    assert!(!stderr.contains("parse error"), "replaying {name} logged parse errors:\n{stderr}");
    String::from_utf8(out.stdout).expect("UTF-8 output").lines().map(str::to_owned).collect()
}

fn parse(name: &str, lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name} line {}: bad JSON {l:?}: {e}", i + 1)))
        .collect()
}

fn golden(name: &str) -> Vec<Value> {
    let path = golden_file(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("no golden file {}: {e}; write it with TRACEO_BLESS=1 and review it", path.display())
    });
    parse(name, &text.lines().map(str::to_owned).collect::<Vec<_>>())
}

fn label(v: &Value) -> String {
    format!("{} {} {} {}", v["service"], v["direction"], v["method"], v["target"])
}

/// Field by field differences between golden and replayed lines.
fn diff(want: &[Value], got: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..want.len().max(got.len()) {
        match (want.get(i), got.get(i)) {
            (Some(w), Some(g)) if w != g => {
                let keys: BTreeSet<&String> =
                    w.as_object().into_iter().chain(g.as_object()).flat_map(|o| o.keys()).collect();
                for k in keys {
                    if w.get(k) != g.get(k) {
                        out.push(format!(
                            "  line {} ({}): {k}: golden {} but replay {}",
                            i + 1,
                            label(w),
                            w.get(k).unwrap_or(&Value::Null),
                            g.get(k).unwrap_or(&Value::Null)
                        ));
                    }
                }
            }
            (Some(w), None) => out.push(format!("  line {}: golden has {} but replay ended", i + 1, label(w))),
            (None, Some(g)) => out.push(format!("  line {}: replay has {} not in golden", i + 1, label(g))),
            _ => {}
        }
    }
    out
}

fn blessing() -> bool {
    std::env::var_os("TRACEO_BLESS").is_some_and(|v| v == "1")
}

#[test]
fn every_fixture_replays_to_its_golden_file() {
    let bless = blessing();
    let names = fixtures();
    assert!(names.len() >= 12, "fixtures missing from tests/fixtures: only {names:?}");
    let mut failures = Vec::new();
    for name in &names {
        let lines = replay_lines(name);
        assert!(!lines.is_empty(), "{name} replays to no exchange at all");
        if bless {
            std::fs::create_dir_all(repo().join("tests/golden")).expect("golden folder");
            // Whole files only (other tests read them): write aside, then rename.
            let tmp = golden_file(name).with_extension("jsonl.tmp");
            std::fs::write(&tmp, lines.join("\n") + "\n").expect("write golden file");
            std::fs::rename(&tmp, golden_file(name)).expect("rename golden file");
            eprintln!("blessed {}", golden_file(name).display());
            continue;
        }
        let d = diff(&golden(name), &parse(name, &lines));
        if !d.is_empty() {
            failures.push(format!("{name}: replay differs from {}:\n{}", golden_file(name).display(), d.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(if the change is intended: TRACEO_BLESS=1 cargo test -p traceo-agent --test golden, and review the diff)",
        failures.join("\n")
    );
    // No golden file outlives its fixture.
    let dir = repo().join("tests/golden");
    for e in std::fs::read_dir(&dir).expect("tests/golden").flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let stem = file.strip_suffix(".jsonl").unwrap_or(&file);
        assert!(names.iter().any(|n| n == stem), "{file} in tests/golden has no fixture");
    }
}

#[test]
fn every_fixture_has_its_meaning_checked() {
    let checked: BTreeSet<&str> = SCENARIOS.iter().map(|s| s.0).collect();
    let found: Vec<String> = fixtures();
    let found: BTreeSet<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(found, checked, "each fixture needs a scenario check below (and each check its fixture)");
}

#[test]
fn replay_is_deterministic_for_every_fixture() {
    for name in fixtures() {
        assert_eq!(replay_lines(&name), replay_lines(&name), "{name}: two replays differ");
    }
}

// ---------------------------------------------------------------------------------------
// What each scenario means.

type Check = fn(&[Value], &[Value]);

const SCENARIOS: &[(&str, Check)] = &[
    ("curl_next", curl_next),
    ("expect_100", expect_100),
    ("head", head),
    ("http_server", http_server),
    ("http_server_curl", http_server_curl),
    ("httpx_keepalive", httpx_keepalive),
    ("nginx_proxy", nginx_proxy),
    ("no_content_204", no_content_204),
    ("not_modified_304", not_modified_304),
    ("pipelining", pipelining),
    ("streaming", streaming),
    ("upload_5mib", upload_5mib),
];

/// Run a scenario's check on its golden file and the fixture's raw events.
fn scenario(name: &str) {
    let check = SCENARIOS.iter().find(|s| s.0 == name).unwrap_or_else(|| panic!("no scenario {name}")).1;
    // While blessing, golden files are being rewritten from the replay: check that instead.
    let exchanges = if blessing() { parse(name, &replay_lines(name)) } else { golden(name) };
    let raw = replay_events(&fixture(name));
    common(name, &exchanges, &raw);
    check(&exchanges, &raw);
}

/// The fields DESIGN.md says every exchange line has.
const SCHEMA: [&str; 19] = [
    "ts",
    "service",
    "direction",
    "pid",
    "tid",
    "method",
    "target",
    "route",
    "status",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "local",
    "peer",
    "trace_id",
    "span_id",
    "parent_span_id",
    "correlation_id",
    "job_id",
];

/// What holds for every exchange of every fixture: the schema; sane timings; and the
/// direction, process and addresses agreeing with what the kernel said about the connection.
fn common(name: &str, exchanges: &[Value], raw: &[Value]) {
    for x in exchanges {
        let at = format!("{name}: {}", label(x));
        for field in SCHEMA {
            assert!(x.get(field).is_some(), "{at}: no {field:?} field in {x}");
        }
        let ts = x["ts"].as_str().unwrap_or_else(|| panic!("{at}: ts {}", x["ts"]));
        assert!(ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{at}: ts {ts} is not RFC 3339");
        let duration = x["duration_ms"].as_f64().unwrap_or_else(|| panic!("{at}: no duration"));
        let ttfb = x["ttfb_ms"].as_f64().unwrap_or_else(|| panic!("{at}: no ttfb"));
        assert!(0.0 <= ttfb && ttfb <= duration, "{at}: ttfb {ttfb} ms, duration {duration} ms");
        assert!(duration < 5_000.0, "{at}: {duration} ms for a loopback request");
        assert_eq!(x["version"], "1.1", "{at}: every client here speaks HTTP/1.1");
        let flags: Vec<&str> = x["flags"].as_array().expect("flags").iter().filter_map(Value::as_str).collect();
        for bad in ["parse_error", "upgraded", "no_response", "midstream"] {
            assert!(!flags.contains(&bad), "{at}: flag {bad} on real, complete traffic: {x}");
        }

        // The kernel's view of the connection: accepted = we serve, connected = we call.
        let conn = &x["conn_id"];
        let open = raw
            .iter()
            .find(|e| e["kind"] == "conn_open" && &e["conn_id"] == conn)
            .unwrap_or_else(|| panic!("{at}: the fixture has no conn_open for connection {conn}"));
        let how = if x["direction"] == "server" { "accepted" } else { "connected" };
        assert_eq!(open["how"], how, "{at}: direction {} but the socket was {}", x["direction"], open["how"]);
        assert_eq!((&x["local"], &x["peer"]), (&open["local"], &open["peer"]), "{at}: addresses");
        assert_eq!(x["service"], open["service"], "{at}: service");
        let pids: BTreeSet<u64> = raw
            .iter()
            .filter(|e| e["kind"] == "data" && &e["conn_id"] == conn)
            .filter_map(|e| e["pid"].as_u64())
            .collect();
        assert!(pids.contains(&x["pid"].as_u64().unwrap_or(0)), "{at}: pid {} not among {pids:?}", x["pid"]);
    }
}

/// An exchange as the scenario predicts it.
#[derive(Clone, Debug, PartialEq)]
struct Want {
    service: String,
    direction: String,
    method: String,
    target: String,
    route: String,
    status: u64,
    request_bytes: u64,
    response_bytes: u64,
    flags: Vec<String>,
}

/// `who` is "SERVICE DIRECTION", `request` is "METHOD TARGET".
fn want(who: &str, request: &str, route: &str, status: u64, req: u64, resp: u64) -> Want {
    let (service, direction) = who.split_once(' ').expect("service direction");
    let (method, target) = request.split_once(' ').expect("method target");
    Want {
        service: service.into(),
        direction: direction.into(),
        method: method.into(),
        target: target.into(),
        route: route.into(),
        status,
        request_bytes: req,
        response_bytes: resp,
        flags: vec![],
    }
}

impl Want {
    fn flagged(mut self, flags: &[&str]) -> Want {
        self.flags = flags.iter().map(|f| f.to_string()).collect();
        self
    }

    fn from_line(x: &Value) -> Want {
        let s = |k: &str| x[k].as_str().unwrap_or_else(|| panic!("{k} of {x}")).to_owned();
        Want {
            service: s("service"),
            direction: s("direction"),
            method: s("method"),
            target: s("target"),
            route: s("route"),
            status: x["status"].as_u64().unwrap_or(0),
            request_bytes: x["request_bytes"].as_u64().unwrap_or(u64::MAX),
            response_bytes: x["response_bytes"].as_u64().unwrap_or(u64::MAX),
            flags: x["flags"].as_array().expect("flags").iter().map(|f| f.as_str().unwrap_or("?").to_owned()).collect(),
        }
    }

    fn show(&self) -> String {
        format!(
            "{} {} (route {}) -> {}, request {} B, response {} B, flags {:?}",
            self.method, self.target, self.route, self.status, self.request_bytes, self.response_bytes, self.flags
        )
    }

    fn at(self, who: &str) -> Want {
        let (service, direction) = who.split_once(' ').expect("service direction");
        Want { service: service.into(), direction: direction.into(), ..self }
    }
}

/// The same exchanges seen from the traced server `api` and the traced client `client`
/// (one loopback connection, both ends).
fn both_ends(wants: Vec<Want>) -> Vec<Want> {
    let client = wants.iter().map(|w| w.clone().at("client client")).collect::<Vec<_>>();
    wants.into_iter().chain(client).collect()
}

/// Exchanges of one service and direction, in request order (stable on equal times).
fn of<'a>(exchanges: &'a [Value], service: &str, direction: &str) -> Vec<&'a Value> {
    let mut v: Vec<&Value> =
        exchanges.iter().filter(|x| x["service"] == service && x["direction"] == direction).collect();
    v.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
    v
}

/// The exchanges are exactly `wants`: per service and direction, in order.
fn expect(exchanges: &[Value], wants: &[Want]) {
    let mut groups: Vec<(&str, &str)> = wants.iter().map(|w| (w.service.as_str(), w.direction.as_str())).collect();
    groups.dedup();
    let in_groups =
        exchanges.iter().filter(|x| groups.iter().any(|(s, d)| x["service"] == *s && x["direction"] == *d)).count();
    assert_eq!(in_groups, exchanges.len(), "exchanges of unexpected services/directions: {exchanges:#?}");
    for (service, direction) in groups {
        let got: Vec<Want> = of(exchanges, service, direction).into_iter().map(Want::from_line).collect();
        let want: Vec<Want> =
            wants.iter().filter(|w| w.service == service && w.direction == direction).cloned().collect();
        if got != want {
            let table = |v: &[Want]| v.iter().map(|w| format!("    {}", w.show())).collect::<Vec<_>>().join("\n");
            panic!(
                "{service} {direction}: the golden exchanges\n{}\nare not the scenario's\n{}",
                table(&got),
                table(&want)
            );
        }
    }
}

/// All exchanges of `service`/`direction` went over one connection (keep-alive).
fn one_connection(exchanges: &[Value], service: &str, direction: &str) -> Value {
    let conns: BTreeSet<String> = of(exchanges, service, direction).iter().map(|x| x["conn_id"].to_string()).collect();
    assert_eq!(conns.len(), 1, "{service} {direction}: one keep-alive connection expected, got {conns:?}");
    of(exchanges, service, direction)[0]["conn_id"].clone()
}

/// A data event's payload.
fn text(e: &Value) -> &str {
    e["data"].as_str().unwrap_or_default()
}

fn data<'a>(raw: &'a [Value], service: &str, direction: &str) -> Vec<&'a Value> {
    raw.iter().filter(|e| e["kind"] == "data" && e["service"] == service && e["direction"] == direction).collect()
}

/// A header's value in a head found in the raw bytes (case-insensitive name).
fn raw_header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n\r\n").next()?.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// Content-Length of the response that starts with `status_line` on the wire.
fn raw_response_length(raw: &[Value], service: &str, status_line: &str) -> u64 {
    let stream: String = data(raw, service, "egress").iter().map(|e| text(e)).collect();
    let at = stream.find(status_line).unwrap_or_else(|| panic!("{service} never sent {status_line:?}"));
    let length = raw_header(&stream[at..], "content-length").unwrap_or_else(|| panic!("no length after {status_line}"));
    length.parse().expect("a number")
}

// Sizes from tests/apps/echo_app.py.
const HELLO: u64 = 5; // "hello"
const NOT_FOUND: u64 = 9; // "not found"
const STATUS: u64 = 6; // "status"

fn upload_reply(received: u64) -> u64 {
    format!("{{\"received\": {received}}}").len() as u64
}

/// /stream: "chunk <i>\n" for i in 0..5.
fn stream_body() -> u64 {
    (0..5).map(|i| format!("chunk {i}\n").len() as u64).sum()
}

/// /events: `data: {"n": <i>}\n\n` for i in 0..3.
fn events_body() -> u64 {
    (0..3).map(|i| format!("data: {{\"n\": {i}}}\n\n").len() as u64).sum()
}

// --- the scenarios (tests/fixtures/README.md) ---

#[test]
fn httpx_keepalive_fixture() {
    scenario("httpx_keepalive");
}

fn httpx_keepalive(x: &[Value], _raw: &[Value]) {
    // httpx 0.27 encodes json= with json.dumps defaults.
    let echo = r#"{"name": "traceo", "values": [1, 2, 3]}"#.len() as u64;
    let first = r#"{"title": "first"}"#.len() as u64;
    let second = r#"{"title": "second"}"#.len() as u64;
    let created = format!(r#"{{"id": 1, "received": {first}}}"#).len() as u64;
    let got = r#"{"id": "7"}"#.len() as u64;
    let put = format!(r#"{{"id": "7", "received": {second}}}"#).len() as u64;
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
            want("api server", "POST /echo", "/echo", 200, echo, echo),
            want("api server", "POST /items", "/items", 201, first, created),
            want("api server", "GET /items/7", "/items/{id}", 200, 0, got),
            want("api server", "PUT /items/7", "/items/{id}", 200, second, put),
            want("api server", "DELETE /items/7", "/items/{id}", 204, 0, 0),
            want("api server", "GET /missing", "/missing", 404, 0, NOT_FOUND),
        ]),
    );
    one_connection(x, "api", "server");
    one_connection(x, "client", "client");
    for c in of(x, "client", "client") {
        assert!(c["user_agent"].as_str().is_some_and(|u| u.starts_with("python-httpx/")), "{c}");
    }
    let echo = of(x, "api", "server").into_iter().find(|e| e["target"] == "/echo").expect("echo");
    assert_eq!(echo["content_type"], "application/json");
}

#[test]
fn http_server_fixture() {
    scenario("http_server");
}

fn http_server(x: &[Value], raw: &[Value]) {
    let hello = "hello from http.server\n".len() as u64;
    let not_found = raw_response_length(raw, "web", "HTTP/1.0 404 ");
    let unsupported = raw_response_length(raw, "web", "HTTP/1.0 501 ");
    let mut wants = vec![
        want("web server", "GET /hello.txt", "/hello.txt", 200, 0, hello),
        want("web server", "GET /missing.txt", "/missing.txt", 404, 0, not_found),
        want("web server", "POST /form", "/form", 501, "a=1".len() as u64, unsupported),
    ];
    wants.extend(wants.clone().into_iter().map(|w| w.at("client client")));
    expect(x, &wants);
    // HTTP/1.0 responses end the connection: one per request.
    let conns: BTreeSet<String> = of(x, "web", "server").iter().map(|e| e["conn_id"].to_string()).collect();
    assert_eq!(conns.len(), 3);
}

#[test]
fn http_server_curl_fixture() {
    scenario("http_server_curl");
}

/// The older fixture (see tests/replay.rs): `python -m http.server` traced by pid, curl
/// fetching /hello.txt ("fixture body\n") and /missing.
fn http_server_curl(x: &[Value], raw: &[Value]) {
    let not_found = raw_response_length(raw, "web", "HTTP/1.0 404 ");
    expect(
        x,
        &[
            want("web server", "GET /hello.txt", "/hello.txt", 200, 0, "fixture body\n".len() as u64),
            want("web server", "GET /missing", "/missing", 404, 0, not_found),
        ],
    );
}

#[test]
fn nginx_proxy_fixture() {
    scenario("nginx_proxy");
}

fn nginx_proxy(x: &[Value], _raw: &[Value]) {
    let body = 100;
    let requests = |who: &str| {
        vec![
            want(who, "GET /hello", "/hello", 200, 0, HELLO),
            want(who, "POST /upload", "/upload", 200, body, upload_reply(body)),
            want(who, "GET /status/404", "/status/{id}", 404, 0, STATUS),
            want(who, "GET /stream", "/stream", 200, 0, stream_body()),
        ]
    };
    let wants: Vec<Want> = ["nginx server", "nginx client", "api server"].into_iter().flat_map(requests).collect();
    expect(x, &wants);
    // curl -> nginx on one connection; nginx -> uvicorn on one kept-alive upstream connection.
    one_connection(x, "nginx", "server");
    one_connection(x, "nginx", "client");
    // Each upstream call is the api's exchange seen from the other end of the same connection,
    // and happens within the nginx exchange that caused it.
    let (server, upstream, api) = (of(x, "nginx", "server"), of(x, "nginx", "client"), of(x, "api", "server"));
    for ((s, u), a) in server.iter().zip(&upstream).zip(&api) {
        assert_eq!((&u["local"], &u["peer"]), (&a["peer"], &a["local"]), "upstream connection ends: {u} {a}");
        assert!(s["ts"].as_str() <= u["ts"].as_str() && u["ts"].as_str() <= a["ts"].as_str(), "{s}\n{u}\n{a}");
        let ms = |v: &Value| v["duration_ms"].as_f64().expect("duration");
        assert!(
            ms(a) <= ms(u) && ms(u) <= ms(s),
            "durations nest: nginx {} > upstream {} > api {}",
            ms(s),
            ms(u),
            ms(a)
        );
    }
}

#[test]
fn curl_next_fixture() {
    scenario("curl_next");
}

fn curl_next(x: &[Value], _raw: &[Value]) {
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
            want("api server", "GET /status/404", "/status/{id}", 404, 0, STATUS),
            want("api server", "POST /upload", "/upload", 200, 3, upload_reply(3)),
            want("api server", "GET /items/3", "/items/{id}", 200, 0, r#"{"id": "3"}"#.len() as u64),
        ]),
    );
    one_connection(x, "api", "server");
    one_connection(x, "client", "client");
}

#[test]
fn pipelining_fixture() {
    scenario("pipelining");
}

fn pipelining(x: &[Value], raw: &[Value]) {
    // The three requests crossed in one send and one read.
    for (service, dir) in [("client", "egress"), ("api", "ingress")] {
        let first = data(raw, service, dir).into_iter().next().expect("a request");
        assert_eq!(text(first).matches(" HTTP/1.1\r\n").count(), 3, "{service} {dir} did not pipeline: {first}");
    }
    let echo = r#"{"pipelined": true}"#.len() as u64;
    // Distinct statuses and sizes: a pairing off by one would show.
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /status/201", "/status/{id}", 201, 0, STATUS),
            want("api server", "POST /echo", "/echo", 200, echo, echo),
            want("api server", "GET /status/404", "/status/{id}", 404, 0, STATUS),
        ]),
    );
    one_connection(x, "api", "server");
    // Each response ends after the previous one: completion times in request order.
    let end = |v: &&Value| {
        let ts = v["ts"].as_str().expect("ts");
        (ts.to_owned(), v["duration_ms"].as_f64().expect("duration"))
    };
    let server: Vec<(String, f64)> = of(x, "api", "server").iter().map(end).collect();
    for pair in server.windows(2) {
        assert_eq!(pair[0].0, pair[1].0, "the server read all three requests at once: same start");
        assert!(pair[0].1 <= pair[1].1, "responses came in order: {server:?}");
    }
}

#[test]
fn streaming_fixture() {
    scenario("streaming");
}

fn streaming(x: &[Value], raw: &[Value]) {
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /stream", "/stream", 200, 0, stream_body()),
            want("api server", "GET /events", "/events", 200, 0, events_body()),
        ]),
    );
    let server = of(x, "api", "server");
    assert_eq!(server[1]["content_type"], "text/event-stream");
    // The app sleeps 10 ms after each part (5, then 3): the last byte leaves that much later.
    for (x, parts) in server.iter().zip([5.0, 3.0]) {
        let ms = x["duration_ms"].as_f64().expect("duration");
        assert!(ms >= parts * 10.0 - 1.0, "{}: {ms} ms for {parts} parts 10 ms apart", x["target"]);
    }
    // It really streamed: the chunks left in separate writes, the head first.
    let writes = data(raw, "api", "egress");
    assert!(writes.len() >= 5 + 3, "{} writes", writes.len());
    assert!(writes.iter().any(|w| text(w).contains("Transfer-Encoding: chunked")), "not chunked on the wire");
    one_connection(x, "api", "server");
}

#[test]
fn upload_5mib_fixture() {
    scenario("upload_5mib");
}

fn upload_5mib(x: &[Value], raw: &[Value]) {
    const FILE: u64 = 5 * 1024 * 1024;
    // The multipart body curl -F builds around the file, from the boundary in its head.
    let head = text(data(raw, "client", "egress")[0]);
    let ctype = raw_header(head, "content-type").expect("content type");
    let boundary = ctype.split_once("boundary=").expect("multipart boundary").1;
    let body = format!("--{boundary}\r\n").len()
        + "Content-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n".len()
        + "Content-Type: application/octet-stream\r\n\r\n".len()
        + FILE as usize
        + format!("\r\n--{boundary}--\r\n").len();
    let body = body as u64;
    assert_eq!(raw_header(head, "content-length"), Some(body.to_string()), "curl's Content-Length");
    // Every byte the server read on the connection, captured or not: head + body.
    let read: u64 = data(raw, "api", "ingress").iter().filter_map(|e| e["len"].as_u64()).sum();
    let server_head = text(data(raw, "api", "ingress")[0]);
    let head_len = server_head.find("\r\n\r\n").expect("head in the first read") as u64 + 4;
    assert_eq!(read, head_len + body, "bytes the server read");
    // --capture-bytes 1024: most of the body was not captured.
    let flags = ["truncated"];
    expect(
        x,
        &both_ends(vec![want("api server", "POST /upload", "/upload", 200, body, upload_reply(body)).flagged(&flags)]),
    );
}

#[test]
fn expect_100_fixture() {
    scenario("expect_100");
}

fn expect_100(x: &[Value], raw: &[Value]) {
    const BODY: u64 = 1024 * 1024;
    // On the wire: the head asks, the server says 100 Continue, then the final 200.
    let head = text(data(raw, "client", "egress")[0]);
    assert_eq!(raw_header(head, "expect").as_deref(), Some("100-continue"));
    let replies: Vec<&str> = data(raw, "api", "egress").iter().map(|e| text(e)).collect();
    assert!(replies[0].starts_with("HTTP/1.1 100 Continue\r\n"), "{replies:?}");
    assert!(replies[1].starts_with("HTTP/1.1 200 OK\r\n"), "{replies:?}");
    // The exchange is the request and its final response; 16 KiB capture per syscall.
    expect(
        x,
        &both_ends(vec![
            want("api server", "POST /upload", "/upload", 200, BODY, upload_reply(BODY)).flagged(&["truncated"]),
        ]),
    );
}

#[test]
fn head_fixture() {
    scenario("head");
}

fn head(x: &[Value], raw: &[Value]) {
    // The HEAD responses announce bodies they do not carry.
    let replies: Vec<&str> = data(raw, "api", "egress").iter().map(|e| text(e)).collect();
    assert_eq!(raw_header(replies[0], "content-length").as_deref(), Some("5"), "{replies:?}");
    assert_eq!(raw_header(replies[1], "transfer-encoding").as_deref(), Some("chunked"), "{replies:?}");
    expect(
        x,
        &both_ends(vec![
            want("api server", "HEAD /hello", "/hello", 200, 0, 0),
            want("api server", "HEAD /stream", "/stream", 200, 0, 0),
            // Framed right after them on the same connection.
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
        ]),
    );
    one_connection(x, "api", "server");
    one_connection(x, "client", "client");
}

#[test]
fn no_content_204_fixture() {
    scenario("no_content_204");
}

fn no_content_204(x: &[Value], _raw: &[Value]) {
    expect(
        x,
        &both_ends(vec![
            want("api server", "DELETE /items/5", "/items/{id}", 204, 0, 0),
            want("api server", "GET /status/204", "/status/{id}", 204, 0, 0),
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
        ]),
    );
    one_connection(x, "api", "server");
}

#[test]
fn not_modified_304_fixture() {
    scenario("not_modified_304");
}

fn not_modified_304(x: &[Value], raw: &[Value]) {
    // record.sh writes "<html>" + "static page " * 100 + "</html>\n".
    let page = ("<html>".len() + "static page ".len() * 100 + "</html>\n".len()) as u64;
    let requests: Vec<&str> = data(raw, "client", "egress").iter().map(|e| text(e)).collect();
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert!(raw_header(requests[1], "if-none-match").is_some(), "{}", requests[1]);
    assert!(raw_header(requests[2], "if-modified-since").is_some(), "{}", requests[2]);
    // nginx sends the file with sendfile: the kernel sees its length, not its bytes.
    let sendfiles = data(raw, "nginx", "egress").iter().filter(|e| e["syscall"] == "sendfile").count();
    assert_eq!(sendfiles, 2, "the two 200s use sendfile");
    let get = |who, status, size| want(who, "GET /page.html", "/page.html", status, 0, size);
    expect(
        x,
        &[
            get("nginx server", 200, page).flagged(&["truncated"]),
            get("nginx server", 304, 0),
            get("nginx server", 304, 0),
            get("nginx server", 200, page).flagged(&["truncated"]),
            get("client client", 200, page),
            get("client client", 304, 0),
            get("client client", 304, 0),
            get("client client", 200, page),
        ],
    );
    one_connection(x, "nginx", "server");
}
