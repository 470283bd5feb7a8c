//! The agent sees secrets and never stores or exports them: a client sends a bearer token,
//! a cookie, an API key, secret query values, a path parameter session and a JSON password
//! to a traced uvicorn (the response sets a cookie); then the record file (owner-only), its
//! `replay --events`, the exchanges of `run` (JSON lines) and `run --events` hold none of
//! them, while the rest of the traffic is still there. Needs root; see support::require_root.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::*;

const SECRETS: [&str; 7] = ["Bearer-s3cr3t", "sid-c00kie", "k3y-value", "t0ken-q", "pw-q1", "JSESSION77", "hunter2-pw"];

/// Requests carrying every secret once, with curl (`-c` keeps nothing: responses set none).
fn send_secrets(port: u16) {
    let base = format!("http://127.0.0.1:{port}");
    let body = r#"{"user": "bob", "password": "hunter2-pw"}"#;
    curl(&[
        "-H",
        "Authorization: Bearer Bearer-s3cr3t",
        "-H",
        "Cookie: sid=sid-c00kie",
        "-H",
        "X-Api-Key: k3y-value",
        &format!("{base}/hello?access_token=t0ken-q&pwd=pw-q1&page=2"),
    ]);
    curl(&[&format!("{base}/hello;jsessionid=JSESSION77")]);
    curl(&["-H", "Content-Type: application/json", "--data-binary", body, &format!("{base}/echo")]);
}

fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} keeps the secret {secret}:\n{text}");
    }
    assert!(text.contains("page=2") || text.contains("page%3D2") || text.contains("/hello"), "{what} lost the traffic");
}

#[test]
fn no_secret_is_stored_or_exported() {
    if !require_root("secrets") || !require_python("secrets") {
        return;
    }
    let dir = temp_dir("secrets");
    let port = free_port();
    let _server = uvicorn(port, 1);
    let service = format!("api=port:{port}");

    // Record, then look at the raw file, its mode and its replay.
    let rec = Recording::start(&dir, &["--service", &service]);
    send_secrets(port);
    let file = rec.file.clone();
    let events = rec.stop();
    let raw = std::fs::read(&file).expect("record file");
    assert_clean("the record file", &String::from_utf8_lossy(&raw));
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "record files are owner-only");
    let replayed: String = events.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
    assert_clean("replay --events", &replayed);
    assert!(replayed.contains("/echo"), "the replay lost the traffic");

    // Run: the exchanges (with a kept URL-shaped header) and the raw events.
    for events_mode in [false, true] {
        let log = dir.join(format!("run-{events_mode}.jsonl"));
        let log_arg = log.display().to_string();
        let mut args = vec!["--service", &service, "--log", &log_arg, "--metrics-addr", "off", "--header", "Referer"];
        if events_mode {
            args.push("--events");
        }
        let mut agent = Agent::run(&args);
        send_secrets(port);
        curl(&[
            "-H",
            "Referer: https://app.example/cb?access_token=t0ken-q",
            &format!("http://127.0.0.1:{port}/hello"),
        ]);
        std::thread::sleep(std::time::Duration::from_millis(2500));
        agent.stop();
        let text = read(&log);
        assert_clean(if events_mode { "run --events" } else { "the exchange JSON lines" }, &text);
        if !events_mode {
            assert!(text.contains("\"route\":\"/hello\""), "path parameters never reach routes:\n{text}");
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}
