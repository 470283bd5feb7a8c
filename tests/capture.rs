//! Live capture tests: real servers and clients, traced by the real agent through its CLI
//! (`record`, then `replay --events`). They need root; see support::require_root.

mod support;

use std::{
    collections::HashSet,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::*;

#[test]
fn http_server_exchanges_appear_in_order_with_direction_pid_and_addresses() {
    if !require_root("http_server_exchanges") {
        return;
    }
    let dir = temp_dir("http-server");
    for i in 0..3 {
        std::fs::write(dir.join(format!("file{i}.txt")), format!("body of file {i}\n")).unwrap();
    }
    let port = free_port();
    let server = http_server(&dir, port);
    let rec = Recording::start(&dir, &["--service", &format!("web=port:{port}")]);
    for i in 0..3 {
        assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/file{i}.txt")]), format!("body of file {i}\n"));
    }
    let events = rec.stop();

    let local = format!("127.0.0.1:{port}");
    let opens: Vec<&Value> =
        of_kind(&events, "conn_open").into_iter().filter(|e| e["local"] == local.as_str()).collect();
    assert_eq!(opens.len(), 3, "one accepted connection per curl: {opens:#?}");
    for (i, open) in opens.iter().enumerate() {
        assert_eq!(open["how"], "accepted");
        assert_eq!(open["pid"], server.pid());
        assert_eq!(open["service"], "web");
        let peer = open["peer"].as_str().expect("peer address");
        assert!(peer.starts_with("127.0.0.1:") && !peer.ends_with(":0"), "peer {peer}");
        let conn = &open["conn_id"];
        let data: Vec<&Value> = events.iter().filter(|e| e["kind"] == "data" && &e["conn_id"] == conn).collect();
        for d in &data {
            assert_eq!(
                (d["pid"].clone(), d["local"].clone(), d["peer"].clone()),
                (json_u32(server.pid()), open["local"].clone(), open["peer"].clone())
            );
        }
        let request = String::from_utf8(stream(&events, conn, "ingress")).unwrap();
        let response = String::from_utf8(stream(&events, conn, "egress")).unwrap();
        assert!(request.starts_with(&format!("GET /file{i}.txt HTTP/1.1\r\n")), "request {i}: {request:?}");
        assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "response {i}: {response:?}");
        assert!(response.ends_with(&format!("body of file {i}\n")), "response {i}: {response:?}");
        // The response was written after the request was read.
        let last_in =
            data.iter().filter(|d| d["direction"] == "ingress").map(|d| d["exit_ns"].as_u64().unwrap()).max().unwrap();
        let first_out =
            data.iter().filter(|d| d["direction"] == "egress").map(|d| d["enter_ns"].as_u64().unwrap()).min().unwrap();
        assert!(first_out >= last_in, "egress before ingress on connection {i}");
        assert_eq!(of_kind(&events, "conn_close").iter().filter(|c| &c["conn_id"] == conn).count(), 1);
    }
}

fn json_u32(v: u32) -> Value {
    Value::from(v)
}

#[test]
fn a_1_mib_upload_is_seen_with_its_total_length() {
    if !require_root("a_1_mib_upload") || !require_python("a_1_mib_upload") {
        return;
    }
    let dir = temp_dir("upload");
    let body = dir.join("body.bin");
    std::fs::write(&body, vec![b'x'; 1 << 20]).unwrap();
    let port = free_port();
    let _server = uvicorn(port, 1);
    let rec = Recording::start(&dir, &["--service", &format!("api=port:{port}")]);
    let reply = curl(&["--data-binary", &format!("@{}", body.display()), &format!("http://127.0.0.1:{port}/upload")]);
    assert_eq!(reply, r#"{"received": 1048576}"#);
    let events = rec.stop();

    let open = of_kind(&events, "conn_open")
        .into_iter()
        .find(|e| e["local"] == format!("127.0.0.1:{port}").as_str())
        .expect("accepted");
    let ingress: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "data" && e["conn_id"] == open["conn_id"] && e["direction"] == "ingress")
        .collect();
    let total: u64 = ingress.iter().map(|e| e["len"].as_u64().unwrap()).sum();
    let first = ingress[0]["data"].as_str().unwrap();
    assert!(first.starts_with("POST /upload HTTP/1.1\r\n"), "{first:?}");
    let headers = first.find("\r\n\r\n").expect("headers in the first read") + 4;
    assert_eq!(total, headers as u64 + (1 << 20), "ingress bytes = request headers + 1 MiB body");
    // Reads larger than the capture size are marked, and capture stays bounded.
    assert!(ingress.iter().all(|e| e["captured"].as_u64().unwrap() <= 16384));
    assert!(
        ingress.iter().any(|e| e["flags"].as_array().unwrap().contains(&"truncated".into()))
            || ingress.iter().all(|e| e["len"].as_u64().unwrap() <= 16384)
    );
}

#[test]
fn a_keep_alive_connection_opened_before_the_agent_is_still_seen() {
    if !require_root("keep_alive_before_agent") || !require_python("keep_alive_before_agent") {
        return;
    }
    let dir = temp_dir("keepalive");
    let port = free_port();
    // uvicorn closes an idle keep-alive connection after 5 s; a loaded machine can take that
    // long to start the agent, and the test is about the connection outliving that start.
    let _server = uvicorn_app("echo_app:app", port, 1, &[("UVICORN_TIMEOUT_KEEP_ALIVE", "120")]);
    let mut client = python_client("keepalive", port);
    let mut out = None;
    assert_eq!(client.read_line(&mut out), "first");
    let rec = Recording::start(&dir, &["--service", &format!("api=port:{port}")]);
    client.send_line("go");
    assert_eq!(client.read_line(&mut out), "second 201");
    let events = rec.stop();

    let open = of_kind(&events, "conn_open")
        .into_iter()
        .find(|e| e["local"] == format!("127.0.0.1:{port}").as_str())
        .unwrap_or_else(|| panic!("the older connection was not announced: {events:#?}"));
    assert_eq!(open["how"], "existing");
    assert!(open["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let request = String::from_utf8(stream(&events, &open["conn_id"], "ingress")).unwrap();
    let response = String::from_utf8(stream(&events, &open["conn_id"], "egress")).unwrap();
    assert!(request.starts_with("GET /status/201 HTTP/1.1\r\n"), "{request:?}");
    assert!(!request.contains("/hello"), "the request before the agent started cannot be seen");
    assert!(response.starts_with("HTTP/1.1 201 "), "{response:?}");
}

#[test]
fn two_connections_reusing_one_fd_get_different_connection_ids() {
    if !require_root("fd_reuse") || !require_python("fd_reuse") {
        return;
    }
    let dir = temp_dir("fdreuse");
    let port = free_port();
    let _server = uvicorn(port, 1);
    let mut client = python_client("fdreuse", port);
    let rec = Recording::start(&dir, &["--service", &format!("client=pid:{}", client.pid())]);
    client.send_line("go");
    let mut out = None;
    let (a, b) = (client.read_line(&mut out), client.read_line(&mut out));
    assert_eq!(a, b, "the client did not reuse its fd");
    let fd: i64 = a.strip_prefix("fd ").unwrap().parse().unwrap();
    let events = rec.stop();

    let opens: Vec<&Value> = of_kind(&events, "conn_open").into_iter().filter(|e| e["how"] == "connected").collect();
    assert_eq!(opens.len(), 2, "{opens:#?}");
    assert!(
        opens
            .iter()
            .all(|o| o["fd"] == fd && o["peer"] == format!("127.0.0.1:{port}").as_str() && o["pid"] == client.pid())
    );
    assert_ne!(opens[0]["conn_id"], opens[1]["conn_id"]);
    for open in &opens {
        let sent = String::from_utf8(stream(&events, &open["conn_id"], "egress")).unwrap();
        let got = String::from_utf8(stream(&events, &open["conn_id"], "ingress")).unwrap();
        assert!(
            sent.starts_with("GET /hello HTTP/1.1\r\n") && got.starts_with("HTTP/1.1 200 OK\r\n"),
            "{sent:?} / {got:?}"
        );
    }
}

#[test]
fn a_process_started_after_the_agent_that_matches_a_selector_is_traced() {
    if !require_root("late_process") {
        return;
    }
    let dir = temp_dir("late");
    std::fs::write(dir.join("hello.txt"), "hi\n").unwrap();
    let port = free_port();
    let _server = http_server(&dir, port);
    // A uniquely named copy of curl, so no other process on the host matches.
    let name = format!("tlate{}", std::process::id() % 1_000_000);
    let late_curl = dir.join(&name);
    std::fs::copy(which("curl"), &late_curl).expect("copy curl");
    let mut rec = Recording::start(&dir, &["--service", &format!("late=comm:{name}")]);
    assert!(rec.log.iter().any(|l| l.contains("no running process matches")), "{:?}", rec.log);
    let child = Command::new(&late_curl)
        .args(["-sS", &format!("http://127.0.0.1:{port}/hello.txt")])
        .output()
        .expect("run curl copy");
    assert_eq!(String::from_utf8_lossy(&child.stdout), "hi\n");
    rec.wait_log("as service late", Duration::from_secs(5));
    let events = rec.stop();

    let exec = of_kind(&events, "exec")
        .into_iter()
        .find(|e| e["comm"] == name.as_str())
        .expect("exec event of the new process");
    let pid = &exec["pid"];
    let open = of_kind(&events, "conn_open")
        .into_iter()
        .find(|e| &e["pid"] == pid && e["how"] == "connected")
        .expect("its connection");
    assert_eq!(open["peer"], format!("127.0.0.1:{port}").as_str());
    assert_eq!(open["service"], "late");
    let sent = String::from_utf8(stream(&events, &open["conn_id"], "egress")).unwrap();
    assert!(sent.starts_with("GET /hello.txt HTTP/1.1\r\n"), "{sent:?}");
}

fn which(tool: &str) -> std::path::PathBuf {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().expect("sh");
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn children_of_a_traced_process_are_followed() {
    if !require_root("children_followed") || !require_python("children_followed") {
        return;
    }
    let dir = temp_dir("children");
    let port = free_port();
    // A shell that starts `uvicorn --workers 2` only once the agent traces it.
    let mut shell = Proc::spawn(
        Command::new("bash")
            .args(["-c", &format!("read go; exec {} -m uvicorn echo_app:app --host 127.0.0.1 --port {port} --workers 2 --no-access-log", python().display())])
            .current_dir(repo().join("tests/apps"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let rec = Recording::start(&dir, &["--service", &format!("api=pid:{}", shell.pid())]);
    shell.send_line("go");
    wait_for_port(port);
    for _ in 0..8 {
        assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/hello")]), "hello");
    }
    let events = rec.stop();

    let followed: HashSet<u64> = of_kind(&events, "fork").iter().map(|f| f["pid"].as_u64().unwrap()).collect();
    let serving: HashSet<u64> = events
        .iter()
        .filter(|e| {
            e["kind"] == "data" && e["direction"] == "ingress" && e["data"].as_str().unwrap().starts_with("GET /hello")
        })
        .map(|e| e["pid"].as_u64().unwrap())
        .collect();
    assert!(!serving.is_empty(), "no request seen");
    assert!(!serving.contains(&(shell.pid() as u64)), "the workers, not the master, serve");
    assert!(serving.is_subset(&followed), "serving pids {serving:?} were not all followed from forks {followed:?}");
    assert!(of_kind(&events, "fork").iter().all(|f| f["service"] == "api"));
}

#[test]
fn the_agent_never_traces_itself() {
    if !require_root("never_traces_itself") {
        return;
    }
    let dir = temp_dir("self");
    std::fs::write(dir.join("x.txt"), "x\n").unwrap();
    let port = free_port();
    let _server = http_server(&dir, port);
    // Trace everything. The agent's own sockets are its metrics endpoint, scraped below: curl's
    // end of each scrape is traced, the agent's end must never be. (Its output goes to a file:
    // a traced reader of its output socket would feed events back into it.)
    let metrics_port = free_port();
    let log = dir.join("events.jsonl");
    let mut agent = Agent::run(&[
        "--events",
        "--log",
        log.to_str().unwrap(),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    assert!(agent.log.iter().any(|l| l.contains("tracing every process")), "{:?}", agent.log);
    assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/x.txt")]), "x\n");
    for _ in 0..3 {
        assert!(
            curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]).contains("traceo_agent_events_read_total")
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    let events: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    assert!(
        events.iter().any(|e| e["kind"] == "data" && e["data"].as_str().is_some_and(|d| d.starts_with("GET /x.txt"))),
        "trace-all saw curl's request"
    );
    let me = agent.pid() as u64;
    assert!(events.iter().all(|e| e["pid"].as_u64() != Some(me)), "the agent traced itself");
    let scrape = format!("127.0.0.1:{metrics_port}");
    assert!(
        events.iter().any(|e| e["kind"] == "data" && e["peer"] == scrape.as_str()),
        "curl's end of the scrape was traced"
    );
    assert!(!events.iter().any(|e| e["local"] == scrape.as_str()), "the agent's end of the scrape was traced");
}

#[test]
fn every_data_syscall_is_captured_in_order() {
    if !require_root("every_data_syscall") || !require_python("every_data_syscall") {
        return;
    }
    let dir = temp_dir("syscalls");
    let port = free_port();
    let _server = uvicorn(port, 1);
    let mut client = python_client("syscalls", port);
    let rec = Recording::start(&dir, &["--service", &format!("client=pid:{}", client.pid())]);
    client.send_line("go");
    let mut out = None;
    assert_eq!(client.read_line(&mut out), "done");
    let events = rec.stop();

    let open = of_kind(&events, "conn_open").into_iter().find(|e| e["how"] == "connected").expect("the connection");
    let data: Vec<&Value> = events.iter().filter(|e| e["kind"] == "data" && e["conn_id"] == open["conn_id"]).collect();
    let used: HashSet<&str> = data.iter().map(|e| e["syscall"].as_str().unwrap()).collect();
    for syscall in ["sendmsg", "recvmsg", "writev", "readv", "write", "read"] {
        assert!(used.contains(syscall), "{syscall} not captured; saw {used:?}");
    }
    let sent = String::from_utf8(stream(&events, &open["conn_id"], "egress")).unwrap();
    let expected: String =
        ["sendmsg", "writev", "write"].iter().map(|h| format!("GET /hello HTTP/1.1\r\nHost: {h}\r\n\r\n")).collect();
    assert_eq!(sent, expected, "every iovec of the vectored sends, in order");
    let received = String::from_utf8(stream(&events, &open["conn_id"], "ingress")).unwrap();
    assert_eq!(received.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{received:?}");
    assert!(data.iter().all(|e| e["len"] == e["captured"]), "small messages are captured whole");
    // A send's start is its entry (what orders it before the peer's read of it), a receive's
    // its return.
    for e in &data {
        let (enter, exit) = (e["enter_ns"].as_u64().unwrap(), e["exit_ns"].as_u64().unwrap());
        if e["direction"] == "egress" {
            assert!(enter < exit, "a send's entry time: {e}");
            assert!(e["flags"].as_array().unwrap().is_empty(), "{e}");
        } else {
            assert_eq!(enter, exit, "{e}");
        }
    }
}

#[test]
fn ipv6_connections_have_their_addresses() {
    if !require_root("ipv6_addresses") || !require_python("ipv6_addresses") {
        return;
    }
    let dir = temp_dir("ipv6");
    let port = free_port();
    let _server = uvicorn_on("::1", port, 1);
    let rec = Recording::start(&dir, &["--service", &format!("api=port:{port}")]);
    assert_eq!(curl(&["-g", &format!("http://[::1]:{port}/hello")]), "hello");
    let events = rec.stop();

    let open = of_kind(&events, "conn_open").into_iter().find(|e| e["how"] == "accepted").expect("accepted");
    assert_eq!(open["family"], "inet6");
    assert_eq!(open["local"], format!("[::1]:{port}").as_str());
    let peer = open["peer"].as_str().unwrap();
    assert!(peer.starts_with("[::1]:") && !peer.ends_with(":0"), "{peer}");
    let request = String::from_utf8(stream(&events, &open["conn_id"], "ingress")).unwrap();
    assert!(request.starts_with("GET /hello HTTP/1.1\r\n"), "{request:?}");
}

#[test]
fn a_recorder_killed_hard_leaves_a_file_that_replays_up_to_its_last_second() {
    if !require_root("recorder_killed") {
        return;
    }
    let dir = temp_dir("recorder-killed");
    std::fs::write(dir.join("file.txt"), "recorded before the kill\n").unwrap();
    let port = free_port();
    let _server = http_server(&dir, port);
    let rec = Recording::start(&dir, &["--service", &format!("web=port:{port}")]);
    curl(&[&format!("http://127.0.0.1:{port}/file.txt")]);
    // The recorder flushes every second: give it two, then kill it without a chance to flush.
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.pid() as i32, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let events = replay_events(&rec.file);
    let data: String = of_kind(&events, "data").iter().filter_map(|e| e["data"].as_str()).collect();
    assert!(data.contains("GET /file.txt"), "the request before the kill is in the file: {events:?}");
    assert!(data.contains("recorded before the kill"), "and so is its response: {events:?}");
}
