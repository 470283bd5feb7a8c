//! Golden tests (no root): every fixture in tests/fixtures/*.trec, recorded from real servers
//! and clients by tests/fixtures/record.sh, replayed to HTTP exchanges (and database
//! operations) and compared with tests/golden/<name>.jsonl. `TRACEO_BLESS=1` rewrites the
//! golden files from the replay.
//!
//! A golden file only says "nothing changed"; it would just as happily keep a wrong answer. So
//! each fixture's meaning is also checked on its own, from what its scenario did (the requests
//! sent, the app's replies, the file sizes: tests/fixtures/README.md) and from the raw bytes on
//! the wire (`replay --events`), never from the exchange layer's own output.

#[path = "golden_db_scenarios.rs"]
mod db_scenarios;
#[path = "golden_scenarios.rs"]
mod scenarios;
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
    if is_operation(v) {
        return format!("{} {} {} {}", v["service"], v["db_system"], v["operation"], v["collection"]);
    }
    format!("{} {} {} {}", v["service"], v["direction"], v["method"], v["target"])
}

/// A database operation's line (the rest are HTTP exchanges).
fn is_operation(v: &Value) -> bool {
    v["kind"] == "operation"
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
    assert!(names.len() >= 16, "fixtures missing from tests/fixtures: only {names:?}");
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
    ("curl_next", scenarios::curl_next),
    ("expect_100", scenarios::expect_100),
    ("curl_https", scenarios::curl_https),
    ("head", scenarios::head),
    ("http_server", scenarios::http_server),
    ("http_server_curl", scenarios::http_server_curl),
    ("https_keepalive", scenarios::https_keepalive),
    ("httpx_keepalive", scenarios::httpx_keepalive),
    ("nginx_proxy", scenarios::nginx_proxy),
    ("no_content_204", scenarios::no_content_204),
    ("not_modified_304", scenarios::not_modified_304),
    ("pipelining", scenarios::pipelining),
    ("postgres_asyncpg", db_scenarios::postgres_asyncpg),
    ("redis_py", db_scenarios::redis_py),
    ("streaming", scenarios::streaming),
    ("upload_5mib", scenarios::upload_5mib),
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
use traceo_agent::http::EXCHANGE_FIELDS as SCHEMA;

/// The fields of an operation line (`db::json_line`).
const OPERATION_SCHEMA: [&str; 21] = [
    "ts",
    "service",
    "direction",
    "pid",
    "tid",
    "db_system",
    "db_namespace",
    "operation",
    "collection",
    "query_text",
    "status_code",
    "rows",
    "duration_ms",
    "local",
    "peer",
    "trace_id",
    "span_id",
    "parent_span_id",
    "link",
    "conn_id",
    "flags",
];

/// What holds for every line (exchange or database operation) of every fixture: the schema;
/// sane timings; and the direction, process and addresses agreeing with what the kernel said
/// about the connection.
fn common(name: &str, exchanges: &[Value], raw: &[Value]) {
    for x in exchanges {
        let at = format!("{name}: {}", label(x));
        let operation = is_operation(x);
        let schema: &[&str] = if operation { &OPERATION_SCHEMA } else { &SCHEMA };
        for field in schema {
            assert!(x.get(field).is_some(), "{at}: no {field:?} field in {x}");
        }
        let ts = x["ts"].as_str().unwrap_or_else(|| panic!("{at}: ts {}", x["ts"]));
        assert!(ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{at}: ts {ts} is not RFC 3339");
        let duration = x["duration_ms"].as_f64().unwrap_or_else(|| panic!("{at}: no duration"));
        assert!((0.0..5_000.0).contains(&duration), "{at}: {duration} ms for a loopback request");
        if operation {
            // The agent reads database protocols from the client's side only.
            assert_eq!(x["direction"], "client", "{at}");
        } else {
            let ttfb = x["ttfb_ms"].as_f64().unwrap_or_else(|| panic!("{at}: no ttfb"));
            assert!(0.0 <= ttfb && ttfb <= duration, "{at}: ttfb {ttfb} ms, duration {duration} ms");
            assert_eq!(x["version"], "1.1", "{at}: every client here speaks HTTP/1.1");
        }
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
        if operation {
            continue; // not read over TLS here, and an operation line has no `tls`
        }
        // TLS or not, as the connection's first socket bytes say: a TLS handshake record
        // (type 22, version 3.x). Plaintext events (ssl_*) carry the SSL object, not the socket.
        let first = raw.iter().find(|e| {
            e["kind"] == "data" && &e["conn_id"] == conn && !e["syscall"].as_str().unwrap_or("").starts_with("ssl_")
        });
        let handshake = first.is_some_and(|e| e["data"].as_str().unwrap_or("").starts_with("\u{16}\u{3}"));
        assert_eq!(x["tls"], handshake, "{at}: tls {} but the connection's first bytes are {first:?}", x["tls"]);
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
