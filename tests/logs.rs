//! Live: the services' own log records joined to their requests' traces (`--log-records`).
//! A FastAPI app under uvicorn logs with the stdlib logger inside its handlers while 50
//! requests are in flight; each record names its request (`[rid:N]`, also sent as
//! `x-request-id`), which is the ground truth.

mod support;

use std::{collections::HashMap, process::Command, time::Duration};

use serde_json::Value;
use support::otlp::{Receiver, hex};
use support::*;

/// `n` GETs of `path?rid=N` with `x-request-id: N`, `concurrency` at a time (a Python client,
/// not traced).
fn load(port: u16, path: &str, n: usize, concurrency: usize, first: usize) {
    let script = format!(
        r#"
import concurrent.futures, urllib.request, urllib.error
def one(i):
    req = urllib.request.Request("http://127.0.0.1:{port}{path}?rid=%d" % i, headers={{"x-request-id": str(i)}})
    try:
        urllib.request.urlopen(req, timeout=20).read()
    except urllib.error.HTTPError as e:
        e.read()
with concurrent.futures.ThreadPoolExecutor({concurrency}) as ex:
    list(ex.map(one, range({first}, {first} + {n})))
"#
    );
    let status = Command::new(python()).args(["-c", &script]).status().expect("run the load");
    assert!(status.success(), "load client failed");
}

/// The request id a record names (a traceback also quotes the source line `[rid:{rid}]`).
fn rid_of(message: &str) -> Option<String> {
    message.match_indices("[rid:").find_map(|(i, _)| {
        let rest = &message[i + 5..];
        let end = rest.find(']')?;
        rest[..end].bytes().all(|b| b.is_ascii_digit()).then(|| rest[..end].to_owned())
    })
}

/// An agent tracing `app=port:PORT` with its exchanges and log records in files of `dir`.
struct LogAgent {
    agent: Agent,
    exchanges: std::path::PathBuf,
    records: std::path::PathBuf,
}

impl LogAgent {
    /// Start it (with `extra` arguments; `--metrics-addr off` unless they say otherwise) and
    /// give it a moment to attach.
    fn start(dir: &std::path::Path, port: u16, extra: &[&str]) -> LogAgent {
        let (exchanges, records) = (dir.join("exchanges.jsonl"), dir.join("records.jsonl"));
        let service = format!("app=port:{port}");
        let mut args = vec!["--service", &service, "--log", exchanges.to_str().expect("utf-8")];
        args.extend(["--log-records", records.to_str().expect("utf-8")]);
        if !extra.contains(&"--metrics-addr") {
            args.extend(["--metrics-addr", "off"]);
        }
        args.extend(extra);
        let agent = Agent::run(&args);
        std::thread::sleep(Duration::from_millis(500));
        LogAgent { agent, exchanges, records }
    }

    /// Let held exchanges and waiting records go out, stop, and read both files (and the
    /// agent's log).
    fn finish(self, settle: Duration) -> (Vec<Value>, Vec<Value>, Vec<String>) {
        let LogAgent { mut agent, exchanges, records } = self;
        std::thread::sleep(settle);
        let log = agent.stop();
        (json_lines(&exchanges), json_lines(&records), log)
    }
}

/// Exchanges by the request id they carried (`x-request-id`, their correlation id).
fn by_rid(exchanges: &[Value]) -> HashMap<String, &Value> {
    exchanges.iter().filter_map(|e| Some((e["correlation_id"].as_str()?.to_owned(), e))).collect()
}

#[test]
fn records_carry_their_own_requests_trace_and_exceptions_reach_the_span() {
    if !require_root("logs") || !require_python("logs") {
        return;
    }
    let dir = temp_dir("logs");
    let port = free_port();
    let app = uvicorn_app("log_app:app", port, 1, &[]);
    let (exchanges, records) = (dir.join("exchanges.jsonl"), dir.join("records.jsonl"));
    let metrics = free_port();
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let mut agent = Agent::run(&[
        "--otlp-endpoint",
        &endpoint,
        "--service",
        &format!("app=port:{port}"),
        "--log",
        exchanges.to_str().expect("utf-8"),
        "--log-records",
        records.to_str().expect("utf-8"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics}"),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    const N: usize = 200;
    load(port, "/work", N, 50, 0);
    load(port, "/boom", 3, 3, 1000);
    load(port, "/secret", 2, 2, 2000);
    // Held exchanges and waiting records go out within a few seconds.
    std::thread::sleep(Duration::from_secs(5));
    let metrics_text = curl(&[&format!("http://127.0.0.1:{metrics}/metrics")]);
    let agent_log = agent.stop();
    drop(app);

    let exchanges = json_lines(&exchanges);
    let records = json_lines(&records);
    let trace_of: HashMap<String, &Value> =
        exchanges.iter().filter_map(|e| Some((e["correlation_id"].as_str()?.to_owned(), e))).collect();
    assert!(trace_of.len() >= N, "only {} exchanges with a request id", trace_of.len());

    // Every record naming a request carries that request's trace, span and correlation id.
    let mut attributed = 0;
    let mut named = 0;
    let mut wrong = Vec::new();
    for r in &records {
        let Some(rid) = r["message"].as_str().and_then(rid_of) else { continue };
        named += 1;
        if r["trace_id"].is_null() {
            continue;
        }
        attributed += 1;
        let ex = trace_of.get(&rid).unwrap_or_else(|| panic!("no exchange for rid {rid}"));
        if r["trace_id"] != ex["trace_id"] || r["span_id"] != ex["span_id"] || r["correlation_id"] != rid.as_str() {
            wrong.push(format!("{r}\n  vs exchange {ex}"));
        }
    }
    assert!(wrong.is_empty(), "{} records carry another request's ids:\n{}", wrong.len(), wrong.join("\n"));
    // 2 per /work, 1 + the traceback per /boom, 1 per /secret.
    assert!(named >= 2 * N + 3 + 2, "only {named} records name their request");
    assert!(
        attributed * 100 >= named * 95,
        "only {attributed} of {named} records got their request's ids; agent log:\n{}",
        agent_log.join("\n")
    );
    // Parsed: Python's default format.
    let start = records.iter().find(|r| r["message"].as_str().is_some_and(|m| m.starts_with("start [rid:"))).unwrap();
    assert_eq!(
        (start["severity"].as_str(), start["logger"].as_str(), start["stream"].as_str()),
        (Some("info"), Some("shop.orders"), Some("stderr"))
    );
    // Background records are outside any request: no ids, never a guess.
    let background: Vec<&Value> =
        records.iter().filter(|r| r["message"].as_str().is_some_and(|m| m.contains("background tick"))).collect();
    assert!(!background.is_empty(), "no background records");
    assert!(background.iter().all(|r| r["trace_id"].is_null()), "a background record got a trace id");

    // The endpoint that raises: its 500 carries the exception, and so does its span's error.type.
    let booms: Vec<&Value> =
        exchanges.iter().filter(|e| e["target"].as_str().is_some_and(|t| t.starts_with("/boom"))).collect();
    assert_eq!(booms.len(), 3, "boom exchanges");
    for b in &booms {
        assert_eq!(b["status"], 500);
        assert_eq!(b["exception"]["type"], "ValueError", "no exception on {b}");
        let rid = b["correlation_id"].as_str().expect("rid");
        assert_eq!(b["exception"]["message"], format!("boom [rid:{rid}]"));
        let tb = records
            .iter()
            .find(|r| r["exception"]["type"] == "ValueError" && r["trace_id"] == b["trace_id"])
            .unwrap_or_else(|| panic!("no traceback record with the 500's trace {b}"));
        assert_eq!(tb["severity"], "error");
        assert!(tb["message"].as_str().is_some_and(|m| m.contains("Traceback (most recent call last):")));
    }
    assert!(
        metrics_text.contains("traceo_exceptions_total{service=\"app\",exception_type=\"ValueError\"} 3"),
        "{metrics_text}"
    );
    assert!(metrics_text.contains("traceo_log_records_total{service=\"app\",severity=\"warning\"}"));

    // OTLP: the 500's span has the exception event; log records carry their span's ids.
    let spans = receiver.spans();
    for b in &booms {
        let trace = b["trace_id"].as_str().unwrap();
        let span = spans.iter().find(|s| s.trace_id() == trace).unwrap_or_else(|| panic!("no span for {b}"));
        assert_eq!(span.attr("error.type"), Some("ValueError"));
        let ev = span.span.events.iter().find(|e| e.name == "exception").expect("an exception event");
        let attr = |k: &str| ev.attributes.iter().find(|a| a.key == k).map(|a| format!("{:?}", a.value));
        assert!(attr("exception.type").is_some_and(|v| v.contains("ValueError")), "{ev:?}");
        assert!(attr("exception.stacktrace").is_some_and(|v| v.contains("Traceback")), "{ev:?}");
    }
    let logs = receiver.logs();
    let mut exported = 0;
    for l in &logs {
        let Some(rid) = rid_of(&l.body()) else { continue };
        if l.record.trace_id.is_empty() {
            continue;
        }
        exported += 1;
        let ex = trace_of[&rid];
        assert_eq!(Some(hex(&l.record.trace_id).as_str()), ex["trace_id"].as_str(), "{l:?}");
        assert_eq!(Some(hex(&l.record.span_id).as_str()), ex["span_id"].as_str(), "{l:?}");
        assert_eq!(l.service, "app");
    }
    assert_eq!(exported, attributed, "OTLP log records with ids vs JSON records with ids");
    assert!(logs.iter().all(|l| !l.body().contains("hunter2") && !format!("{:?}", l.attrs).contains("hunter2")));

    // The secret in a log line never leaves the agent.
    let secret_records: Vec<&Value> =
        records.iter().filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with("login [rid:"))).collect();
    assert_eq!(secret_records.len(), 2);
    for text in [
        std::fs::read_to_string(dir.join("records.jsonl")).unwrap(),
        std::fs::read_to_string(dir.join("exchanges.jsonl")).unwrap(),
        agent_log.join("\n"),
        metrics_text,
    ] {
        assert!(!text.contains("hunter2"), "the secret leaked");
    }
}

#[test]
fn record_files_and_events_scrub_log_text() {
    if !require_root("logs") || !require_python("logs") {
        return;
    }
    let dir = temp_dir("logs-record");
    let port = free_port();
    let app = uvicorn_app("log_app:app", port, 1, &[]);
    let rec = Recording::start(&dir, &["--service", &format!("app=port:{port}"), "--logs"]);
    let file = rec.file.clone();
    std::thread::sleep(Duration::from_millis(300));
    load(port, "/secret", 3, 3, 0);
    std::thread::sleep(Duration::from_millis(500));
    let events = rec.stop();
    drop(app);
    let raw = std::fs::read(&file).expect("record file");
    assert!(!raw.windows(7).any(|w| w == b"hunter2"), "the secret is in the record file");
    let writes = of_kind(&events, "log_write");
    assert!(
        writes.iter().any(|e| e["data"].as_str().is_some_and(|d| d.contains("login [rid:"))),
        "no log write replayed"
    );
    assert!(!events.iter().any(|e| e.to_string().contains("hunter2")));
    // Replayed through the pipeline: the records come out, with their requests' ids.
    let out = Command::new(env!("CARGO_BIN_EXE_traceo-agent"))
        .args(["replay", "--log", "off", "--log-records", "-"])
        .arg(&file)
        .output()
        .expect("replay");
    assert!(out.status.success());
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let logins: Vec<&Value> =
        lines.iter().filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with("login [rid:"))).collect();
    assert_eq!(logins.len(), 3, "{lines:?}");
    assert!(logins.iter().all(|r| r["correlation_id"].as_str() == r["message"].as_str().and_then(rid_of).as_deref()));
}

#[test]
fn a_threaded_servers_records_carry_their_threads_request() {
    if !require_root("logs") || !require_python("logs") {
        return;
    }
    let dir = temp_dir("logs-threaded");
    let port = free_port();
    let app = Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/threaded_log_app.py"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_for_port(port);
    let agent = LogAgent::start(&dir, port, &[]);
    const N: usize = 100;
    load(port, "/t", N, 50, 0);
    let (exchanges, records, _) = agent.finish(Duration::from_secs(5));
    drop(app);
    let by_rid = by_rid(&exchanges);
    assert_eq!(by_rid.len(), N, "exchanges with a request id");
    let (mut named, mut attributed, mut access) = (0, 0, 0);
    for r in &records {
        // The handler's records name the request; the access line has it in its path.
        let rid = r["message"].as_str().and_then(rid_of).or_else(|| {
            let path = r["fields"]["path"].as_str()?;
            Some(path.split("rid=").nth(1)?.to_owned())
        });
        let Some(rid) = rid else { continue };
        named += 1;
        if r["format"] == "access" {
            access += 1;
        }
        if r["trace_id"].is_null() {
            continue;
        }
        attributed += 1;
        let ex = by_rid[&rid];
        assert_eq!((&r["trace_id"], &r["span_id"]), (&ex["trace_id"], &ex["span_id"]), "{r} vs {ex}");
    }
    assert_eq!(access, N, "access lines parsed as the common log format");
    assert_eq!(named, 3 * N, "records naming their request");
    assert_eq!(attributed, named, "records tied to their thread's request");
}

#[test]
fn a_log_file_selected_by_glob_is_captured_and_joined() {
    if !require_root("logs") || !require_python("logs") {
        return;
    }
    let dir = temp_dir("logs-file");
    let port = free_port();
    let file = dir.join("app.log");
    let app = uvicorn_app("log_app:app", port, 1, &[("LOG_FILE", file.to_str().expect("utf-8"))]);
    let glob = format!("{}/*.log", dir.display());
    let agent = LogAgent::start(&dir, port, &["--log-file", &glob]);
    const N: usize = 40;
    load(port, "/work", N, 20, 0);
    let (exchanges, records, _) = agent.finish(Duration::from_secs(5));
    drop(app);
    let by_rid = by_rid(&exchanges);
    let in_file: Vec<Value> = records.into_iter().filter(|r| r["stream"] == "file").collect();
    assert!(std::fs::read_to_string(&file).expect("the app's log file").contains("[rid:"), "the app wrote no file");
    let named: Vec<&Value> = in_file.iter().filter(|r| r["message"].as_str().and_then(rid_of).is_some()).collect();
    assert_eq!(named.len(), 2 * N, "records from the log file naming their request");
    assert!(
        in_file
            .iter()
            .filter(|r| r["message"].as_str().is_some_and(|m| m.contains("background")))
            .all(|r| r["trace_id"].is_null())
    );
    for r in named {
        let rid = r["message"].as_str().and_then(rid_of).expect("a request id");
        assert_eq!(r["logger"], "shop.orders");
        assert_eq!(r["trace_id"], by_rid[&rid]["trace_id"], "{r}");
    }
}

/// The records naming request `rid` (in the message, or an access line's path), by rid.
fn named_rid(r: &Value) -> Option<String> {
    r["message"].as_str().and_then(rid_of).or_else(|| {
        let path = r["fields"]["path"].as_str()?;
        Some(path.split("rid=").nth(1)?.to_owned())
    })
}

/// gunicorn (`worker_class`, with these extra arguments) serving tests/apps/gunicorn_log_app.py
/// with its access log on stdout; 60 requests at 20 in flight. Every handler record and every
/// access line (written after the response, by the thread that answered) carries its own
/// request's ids.
fn gunicorn_case(worker_class: &str, extra: &[&str]) {
    let dir = temp_dir(&format!("logs-gunicorn-{worker_class}"));
    let port = free_port();
    let app = Proc::spawn(
        Command::new(python())
            .args(["-m", "gunicorn", "gunicorn_log_app:app", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--worker-class", worker_class, "--access-logfile", "-", "--error-logfile", "-"])
            .args(extra)
            .current_dir(repo().join("tests/apps"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    wait_for_port(port);
    let agent = LogAgent::start(&dir, port, &[]);
    const N: usize = 60;
    load(port, "/g", N, 20, 0);
    let (exchanges, records, _) = agent.finish(Duration::from_secs(6));
    drop(app);
    let by_rid = by_rid(&exchanges);
    assert_eq!(by_rid.len(), N, "{worker_class}: exchanges with a request id");
    let (mut handler, mut access) = (0, 0);
    for r in &records {
        let Some(rid) = named_rid(r) else { continue };
        let ex = by_rid.get(&rid).unwrap_or_else(|| panic!("{worker_class}: no exchange for {r}"));
        assert_eq!(
            (&r["trace_id"], &r["span_id"]),
            (&ex["trace_id"], &ex["span_id"]),
            "{worker_class}: record {r} vs its request {ex}"
        );
        if r["format"] == "access" {
            access += 1;
            assert_eq!(r["fields"]["status"], 200, "{r}");
        } else {
            handler += 1;
            assert_eq!(r["logger"], "wsgi.orders", "{r}");
        }
    }
    assert_eq!((handler, access), (N, N), "{worker_class}: handler records and access lines, all tied");
}

#[test]
fn gunicorns_access_lines_written_after_the_response_carry_their_request() {
    if !require_root("logs") || !require_python("logs") {
        return;
    }
    gunicorn_case("sync", &["--workers", "2"]);
    gunicorn_case("gthread", &["--workers", "1", "--threads", "8"]);
}

/// A FastAPI app logging JSON lines (tests/apps/json_log_app.py), 100 requests at 50 in
/// flight: every record keeps its fields and carries its own request's ids. Its sync handler
/// runs on FastAPI's thread pool: those records are not tied (no certain signal: the pool's
/// thread serves no connection and its context is a copy no task creation reported), never
/// tied to another request.
#[test]
fn json_records_keep_their_fields_and_carry_their_request() {
    if !require_root("logs") || !require_python("logs") {
        return;
    }
    let dir = temp_dir("logs-json");
    let port = free_port();
    let app = uvicorn_app("json_log_app:app", port, 1, &[]);
    let agent = LogAgent::start(&dir, port, &[]);
    const N: usize = 100;
    load(port, "/order", N, 50, 0);
    const S: usize = 40;
    load(port, "/sync", S, 20, 1000);
    let (exchanges, records, _) = agent.finish(Duration::from_secs(6));
    drop(app);
    let by_rid = by_rid(&exchanges);
    assert_eq!(by_rid.len(), N + S, "exchanges with a request id");
    let (mut orders, mut sync, mut sync_tied) = (0, 0, 0);
    for r in &records {
        let Some(rid) = r["message"].as_str().and_then(rid_of) else { continue };
        assert_eq!(r["format"], "json", "{r}");
        assert_eq!(r["logger"], "shop.json", "{r}");
        assert_eq!(r["fields"]["rid"], rid.as_str(), "the record's own fields are kept: {r}");
        let ex = by_rid[&rid];
        if r["message"].as_str().is_some_and(|m| m.starts_with("sync handler")) {
            sync += 1;
            if !r["trace_id"].is_null() {
                sync_tied += 1;
                assert_eq!(r["trace_id"], ex["trace_id"], "a thread-pool record tied to another request: {r}");
            }
            continue;
        }
        orders += 1;
        assert_eq!(r["fields"]["order_id"], format!("o-{rid}"), "{r}");
        assert_eq!(r["fields"]["items"], 3, "{r}");
        assert_eq!(
            r["severity"],
            if r["message"].as_str().unwrap().starts_with("order placed") { "info" } else { "warning" }
        );
        assert_eq!((&r["trace_id"], &r["span_id"]), (&ex["trace_id"], &ex["span_id"]), "{r} vs {ex}");
    }
    assert_eq!(orders, 2 * N, "the async handlers' records");
    assert_eq!(sync, S, "the sync handler's records");
    eprintln!("sync handler records tied: {sync_tied} of {S}");
    assert_eq!(sync_tied, 0, "thread-pool records are documented as not tied");
}

/// A service whose stdout and stderr are a unix stream socket, as systemd connects them to
/// the journal: its records are captured and joined as from a pipe or a tty, and the
/// socket's reader (here standing in for journald) still gets every byte.
#[test]
fn records_written_to_a_journal_socket_are_captured_and_joined() {
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::Stdio;
    if !require_root("logs") || !require_python("logs") {
        return;
    }
    let dir = temp_dir("logs-journal");
    let port = free_port();
    let listener = UnixListener::bind(dir.join("stdout.sock")).expect("bind the journal socket");
    let writer = UnixStream::connect(dir.join("stdout.sock")).expect("connect");
    let (mut reader, _) = listener.accept().expect("accept");
    let journal = std::thread::spawn(move || {
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut got).expect("read the journal socket");
        got
    });
    let out = std::os::fd::OwnedFd::from(writer.try_clone().expect("dup"));
    let app = Proc::spawn(
        Command::new(python())
            .args(["-m", "uvicorn", "log_app:app", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--no-access-log")
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(repo().join("tests/apps"))
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(std::os::fd::OwnedFd::from(writer))),
    );
    wait_for_port(port);
    let agent = LogAgent::start(&dir, port, &[]);
    const N: usize = 40;
    load(port, "/work", N, 20, 0);
    let (exchanges, records, _) = agent.finish(Duration::from_secs(5));
    drop(app);
    let written = String::from_utf8_lossy(&journal.join().expect("the journal reader")).into_owned();
    assert!(written.contains("[rid:"), "the app wrote nothing to its socket: {written:?}");
    let by_rid = by_rid(&exchanges);
    let named: Vec<&Value> = records.iter().filter(|r| r["message"].as_str().and_then(rid_of).is_some()).collect();
    assert_eq!(named.len(), 2 * N, "records from the journal socket naming their request: {records:?}");
    for r in named {
        let rid = r["message"].as_str().and_then(rid_of).expect("a request id");
        assert_eq!((r["stream"].as_str(), r["logger"].as_str()), (Some("stderr"), Some("shop.orders")), "{r}");
        assert_eq!(r["trace_id"], by_rid[&rid]["trace_id"], "{r}");
    }
    assert!(exchanges.iter().all(|x| x["kind"] == "exchange"), "the socket is not read as a connection");
}

/// Thread pools (`--thread-pools`): a FastAPI sync handler (Starlette's `run_in_threadpool`)
/// and an async handler calling `asyncio.to_thread`, each logging and calling /leaf from the
/// pool thread, 20 in flight. With the option, every call's parent and every record's trace
/// is its own request's; without it, none is guessed.
#[test]
fn thread_pool_work_belongs_to_the_request_that_handed_it_over() {
    if !require_root("logs") || !require_python("logs") {
        return;
    }
    let port = free_port();
    let app = uvicorn_app("pool_app:app", port, 1, &[("POOL_PORT", &port.to_string())]);
    const N: usize = 40;
    // (right parents, wrong parents, records with their request's trace, wrong records).
    let score = |dir: &std::path::Path, extra: &[&str], first: usize| {
        let agent = LogAgent::start(dir, port, extra);
        load(port, "/sync", N, 20, first);
        load(port, "/to_thread", N, 20, first + N);
        let (exchanges, records, _) = agent.finish(Duration::from_secs(5));
        let server: HashMap<String, &Value> = exchanges
            .iter()
            .filter(|e| e["direction"] == "server" && e["correlation_id"].is_string())
            .map(|e| (e["correlation_id"].as_str().unwrap_or_default().to_owned(), e))
            .collect();
        assert!(server.len() >= 2 * N * 95 / 100, "only {} server exchanges", server.len());
        let (mut right, mut wrong) = (0, Vec::new());
        for call in exchanges.iter().filter(|e| e["direction"] == "client") {
            let target = call["target"].as_str().unwrap_or_default();
            let Some(rid) = target.split("from=").nth(1) else { continue };
            if call["parent_span_id"].is_null() {
                continue;
            }
            match server.get(rid) {
                Some(s) if s["span_id"] == call["parent_span_id"] && s["trace_id"] == call["trace_id"] => right += 1,
                _ => wrong.push(call.to_string()),
            }
        }
        let (mut tied, mut crossed) = (0, Vec::new());
        for r in &records {
            let Some(rid) = r["message"].as_str().filter(|m| m.starts_with("pool ")).and_then(rid_of) else {
                continue;
            };
            if r["trace_id"].is_null() {
                continue;
            }
            match server.get(&rid) {
                Some(s) if s["trace_id"] == r["trace_id"] => tied += 1,
                _ => crossed.push(r.to_string()),
            }
        }
        (right, wrong, tied, crossed)
    };

    let (right, wrong, tied, crossed) = score(&temp_dir("logs-pools"), &["--thread-pools"], 0);
    assert!(wrong.is_empty(), "{} calls got another request's parent:\n{}", wrong.len(), wrong.join("\n"));
    assert!(crossed.is_empty(), "{} records got another request's trace:\n{}", crossed.len(), crossed.join("\n"));
    assert!(right * 100 >= 2 * N * 95, "only {right} of {} pool calls got their request as parent", 2 * N);
    // Two records per request.
    assert!(tied * 100 >= 4 * N * 95, "only {tied} of {} pool records got their request's trace", 4 * N);

    // Without the option the pool threads' work is not followed: never a wrong link.
    let (right, wrong, tied, crossed) = score(&temp_dir("logs-no-pools"), &[], 1000);
    assert!(wrong.is_empty() && crossed.is_empty(), "a guess without --thread-pools:\n{wrong:?}\n{crossed:?}");
    // Only a request alone in flight can give its call a parent without the option.
    assert!(
        right * 4 < 2 * N && tied * 4 < 4 * N,
        "pool work tied without --thread-pools ({right} calls, {tied} records)"
    );
    drop(app);
}
