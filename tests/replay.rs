//! Replay of committed fixtures and the CLI's error messages: no root needed.
//!
//! `tests/fixtures/http_server_curl.trec` was recorded on the reference machine with
//! `traceo-agent record --service web=pid:<python -m http.server> --duration 3` while
//! `curl http://127.0.0.1:18765/hello.txt http://127.0.0.1:18765/missing` ran.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn fixture(name: &str) -> std::path::PathBuf {
    repo().join("tests/fixtures").join(name)
}

#[test]
fn replaying_the_http_server_fixture_shows_both_exchanges_with_addresses() {
    let events = replay_events(&fixture("http_server_curl.trec"));
    let opens = of_kind(&events, "conn_open");
    assert_eq!(opens.len(), 2);
    assert_eq!(of_kind(&events, "conn_close").len(), 2);
    for (open, (path, status)) in opens.iter().zip([("/hello.txt", "200 OK"), ("/missing", "404 File not found")]) {
        assert_eq!(open["how"], "accepted");
        assert_eq!(open["service"], "web");
        assert_eq!(open["local"], "127.0.0.1:18765");
        let request = String::from_utf8(stream(&events, &open["conn_id"], "ingress")).unwrap();
        let response = String::from_utf8(stream(&events, &open["conn_id"], "egress")).unwrap();
        assert!(request.starts_with(&format!("GET {path} HTTP/1.1\r\n")), "{request:?}");
        assert!(response.starts_with(&format!("HTTP/1.0 {status}\r\n")), "{response:?}");
        let data: Vec<&Value> =
            events.iter().filter(|e| e["kind"] == "data" && e["conn_id"] == open["conn_id"]).collect();
        assert!(
            data.iter().all(|d| d["peer"] == open["peer"] && d["local"] == open["local"] && d["pid"] == open["pid"])
        );
        assert!(data.iter().all(|d| d["len"] == d["captured"]), "small messages are captured whole");
    }
    assert!(events.iter().any(|e| e["data"] == "fixture body\n"));
}

#[test]
fn replay_is_deterministic() {
    let file = fixture("http_server_curl.trec");
    assert_eq!(replay_events(&file), replay_events(&file));
}

fn agent(args: &[&str]) -> (bool, String) {
    let out = Command::new(AGENT).args(args).output().expect("run agent");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_corrupt_or_foreign_record_file_is_a_clear_error() {
    let dir = temp_dir("corrupt");
    let foreign = dir.join("foreign.trec");
    std::fs::write(&foreign, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let (ok, err) = agent(&["replay", "--events", foreign.to_str().unwrap()]);
    assert!(!ok && err.contains("not a record file"), "{err}");

    let mut bytes = std::fs::read(fixture("http_server_curl.trec")).unwrap();
    bytes[8] = 99; // format version
    let newer = dir.join("newer.trec");
    std::fs::write(&newer, &bytes).unwrap();
    let (ok, err) = agent(&["replay", "--events", newer.to_str().unwrap()]);
    assert!(!ok && err.contains("version 99 is newer"), "{err}");

    let (ok, err) = agent(&["replay", "--events", dir.join("absent.trec").to_str().unwrap()]);
    assert!(!ok && err.contains("cannot open record file"), "{err}");
}

#[test]
fn configuration_mistakes_name_the_fix() {
    let (ok, err) = agent(&["record", "--out", "/tmp/x.trec", "--service", "api=socket:80"]);
    assert!(
        !ok && err.contains("unknown selector kind `socket`") && err.contains("pid:N, comm:NAME, port:N or exe:GLOB"),
        "{err}"
    );
    let (ok, err) = agent(&["run", "--service", "api"]);
    assert!(!ok && err.contains("NAME=SELECTOR"), "{err}");
    let (ok, err) = agent(&["run", "--capture-bytes", "100000"]);
    assert!(!ok && err.contains("between 1 and 16384"), "{err}");
}
