//! Sentry events tied to their failed requests, live: a FastAPI app under uvicorn reporting
//! its exceptions with the real sentry-sdk (gzip envelopes) to a receiver started by the test
//! (tests/apps/sentry_receiver.py, which prints the event id it got for each request path:
//! the ground truth). Twenty requests at a time, failing and good ones mixed: each failing
//! request's span must carry exactly the event id the receiver got for its path, no other
//! span any, and nothing else of the event may leave the agent.

mod support;

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::otlp::Receiver;
use support::*;

const ROUNDS: usize = 2;
const CONCURRENT: usize = 20;
const CANARY: &str = "sentry-canary-7f3a";

fn ready(test: &str) -> bool {
    if !(require_root(test) && require_python(test)) {
        return false;
    }
    let deps =
        Command::new(python()).args(["-c", "import sentry_sdk, fastapi"]).output().is_ok_and(|o| o.status.success());
    if !deps {
        let why = format!("{test} needs sentry-sdk and fastapi in the venv: run `cargo xtask setup`");
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        return false;
    }
    true
}

/// `GET path` on 127.0.0.1:port: the status.
fn get(port: u16, path: &str) -> u16 {
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}{path}")]);
    out.trim().parse().unwrap_or_else(|_| panic!("curl said {out:?}"))
}

/// The receiver's lines: request path -> (event id, canary tag).
fn received(file: &std::path::Path) -> HashMap<String, (String, Option<String>)> {
    json_lines(file)
        .into_iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().map(str::to_owned);
            (s("path").expect("path"), (s("event_id").expect("event_id"), s("canary")))
        })
        .collect()
}

#[test]
fn each_failed_request_gets_its_own_sentry_event_id() {
    if !ready("sentry") {
        return;
    }
    let dir = temp_dir("sentry");
    let (port, sentry_port) = (free_port(), free_port());
    let got_file = dir.join("received.jsonl");
    let _receiver = Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/sentry_receiver.py"))
            .arg(sentry_port.to_string())
            .stdout(std::fs::File::create(&got_file).expect("receiver output"))
            .stderr(Stdio::null()),
    );
    wait_for_port(sentry_port);
    let dsn = format!("http://public@127.0.0.1:{sentry_port}/42");
    let app = uvicorn_app("sentry_app:app", port, 1, &[("SENTRY_DSN", &dsn)]);

    let otlp = Receiver::start();
    let (exchanges, records) = (dir.join("exchanges.jsonl"), dir.join("records.jsonl"));
    let metrics = free_port();
    let mut agent = Agent::run(&[
        "--service",
        &format!("app=port:{port}"),
        "--otlp-endpoint",
        &otlp.endpoint(),
        "--log",
        exchanges.to_str().expect("utf-8"),
        // Tracebacks too: the event must also name the exception the agent read.
        "--log-records",
        records.to_str().expect("utf-8"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics}"),
    ]);
    std::thread::sleep(Duration::from_millis(500));

    // Rounds of twenty requests at once, every other one failing.
    let mut expected_fail = Vec::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(CONCURRENT));
        let workers: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let n = round * CONCURRENT + i;
                let path = if i % 2 == 0 { format!("/fail/{n}") } else { format!("/ok/{n}") };
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (get(port, &path), path)
                })
            })
            .collect();
        for w in workers {
            let (status, path) = w.join().expect("client thread");
            let want = if path.starts_with("/fail/") { 500 } else { 200 };
            assert_eq!(status, want, "{path}");
            if want == 500 {
                expected_fail.push(path);
            }
        }
    }

    // The receiver's ground truth: one event per failing request.
    let deadline = Instant::now() + Duration::from_secs(30);
    while received(&got_file).len() < expected_fail.len() {
        assert!(Instant::now() < deadline, "the receiver got {} events", received(&got_file).len());
        std::thread::sleep(Duration::from_millis(200));
    }
    let truth = received(&got_file);
    assert_eq!(truth.len(), expected_fail.len(), "{truth:?}");
    for path in &expected_fail {
        let (_, canary) = truth.get(path).unwrap_or_else(|| panic!("no event for {path}: {truth:?}"));
        assert_eq!(canary.as_deref(), Some(CANARY), "the SDK sent the tag the agent must not export");
    }

    // Every event is decided within seconds (held 5xx exchanges leave with their id).
    let matched = "traceo_sentry_events_total{service=\"app\",outcome=\"matched\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut page = scrape(metrics);
    while metric_sum(&page, matched) < expected_fail.len() as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        page = scrape(metrics);
    }
    // Spans are exported in batches: wait for every failing request's span.
    let spans = otlp.wait_for("the failing requests' spans", Duration::from_secs(20), |s| {
        s.iter().filter(|s| s.attr("url.path").is_some_and(|p| p.starts_with("/fail/"))).count() >= expected_fail.len()
    });
    let log = agent.stop();
    drop(app);

    assert_eq!(metric_sum(&page, matched), expected_fail.len() as f64, "{page}");
    assert_eq!(metric_sum(&page, "traceo_sentry_events_total{service=\"app\",outcome=\"unmatched\"}"), 0.0);

    // JSON lines: each failing request has its event's id; nothing else has one.
    let lines = json_lines(&exchanges);
    let mut tied = 0;
    for l in &lines {
        let target = l["target"].as_str().unwrap_or_default();
        let id = l.get("sentry_event_id").and_then(Value::as_str);
        match (l["direction"].as_str(), truth.get(target)) {
            (Some("server"), Some((want, _))) => {
                assert_eq!(l["status"], 500, "{l}");
                assert_eq!(id, Some(want.as_str()), "{target}: {l}");
                tied += 1;
            }
            _ => assert_eq!(id, None, "only a failed request gets an event id: {l}"),
        }
    }
    assert_eq!(tied, expected_fail.len(), "failing requests in the JSON lines");
    let envelopes = lines.iter().filter(|l| l["target"].as_str().is_some_and(|t| t.ends_with("/envelope/"))).count();
    assert!(envelopes >= expected_fail.len(), "the agent saw {envelopes} envelope posts");

    // OTLP: the span attribute, and on the exception event read from the traceback (the log
    // join gives a span its traceback when the record arrives in time: most, not always all).
    let mut with_event = 0;
    for s in &spans {
        let path = s.attr("url.path").unwrap_or_default();
        let want = (s.kind() == "server").then(|| truth.get(path)).flatten().map(|(id, _)| id.as_str());
        assert_eq!(s.attr("sentry.event_id"), want, "{}", s.describe());
        let Some(ev) = s.span.events.iter().find(|e| e.name == "exception") else { continue };
        let attr = |k: &str| ev.attributes.iter().find(|a| a.key == k).map(|a| format!("{:?}", a.value));
        assert!(attr("exception.type").is_some_and(|v| v.contains("ValueError")), "{ev:?}");
        assert_eq!(attr("sentry.event_id").is_some(), want.is_some(), "{ev:?}");
        if let Some(want) = want {
            assert!(attr("sentry.event_id").is_some_and(|v| v.contains(want)), "{ev:?}");
            with_event += 1;
        }
    }
    assert!(with_event >= expected_fail.len() / 2, "only {with_event} failing spans had their traceback's event");

    // Nothing of the event but its id leaves the agent.
    let exported = format!(
        "{}\n{}\n{}\n{:?}\n{}",
        std::fs::read_to_string(&exchanges).unwrap_or_default(),
        std::fs::read_to_string(&records).unwrap_or_default(),
        page,
        spans.iter().map(|s| &s.span).collect::<Vec<_>>(),
        log.join("\n")
    );
    assert!(!exported.contains(CANARY), "an event's tag left the agent");
}
