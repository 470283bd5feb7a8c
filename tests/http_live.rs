//! Live HTTP exchanges: real servers and clients traced by `traceo-agent run`, its JSON lines
//! (`--log FILE`) and its own metrics (`--metrics-addr`) checked against what the clients know
//! they did. They need root; see support::require_root.

mod support;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// The agent's JSON lines, one exchange each.
fn exchanges(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("cannot read {}: {e}", log.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect()
}

#[test]
fn known_requests_give_exactly_those_exchanges_within_the_client_time() {
    if !require_root("known_requests") || !require_python("known_requests") {
        return;
    }
    let dir = temp_dir("known-requests");
    let port = free_port();
    let _server = uvicorn(port, 1);
    let (mut agent, log, _) = start_agent(&dir, &[format!("api=port:{port}")]);

    // (method, path, body, status, response body bytes), as tests/apps/echo_app.py answers.
    let item = r#"{"title": "x"}"#;
    let kinds: [(&str, &str, Option<&str>, u64, u64); 8] = [
        ("GET", "/hello", None, 200, 5),
        ("GET", "/missing", None, 404, 9),
        ("POST", "/items", Some(item), 201, format!(r#"{{"id": 1, "received": {}}}"#, item.len()).len() as u64),
        ("PUT", "/items/9", Some(item), 200, format!(r#"{{"id": "9", "received": {}}}"#, item.len()).len() as u64),
        ("DELETE", "/items/9", None, 204, 0),
        ("GET", "/status/500", None, 500, 6),
        ("POST", "/upload", Some("0123456789"), 200, r#"{"received": 10}"#.len() as u64),
        ("GET", "/slow", None, 200, 4),
    ];
    // Each request's path is unique (?n=i), so exchanges match requests one to one.
    let requests: Vec<(&str, String, Option<&str>, u64, u64)> = (0..3)
        .flat_map(|round| kinds.iter().enumerate().map(move |(i, k)| (round * kinds.len() + i, k)))
        .map(|(n, (m, p, b, s, r))| (*m, format!("{p}?n={n}"), *b, *s, *r))
        .collect();
    let spec = Value::from(
        requests
            .iter()
            .map(|(m, p, b, ..)| Value::from(vec![Value::from(*m), p.as_str().into(), (*b).into()]))
            .collect::<Vec<_>>(),
    );
    let mut client = Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/clients.py"))
            .args(["timed", "127.0.0.1", &port.to_string(), &spec.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    client.send_line("go");
    let mut out = None;
    let measured: HashMap<String, Value> = (0..requests.len())
        .map(|_| {
            let line = client.read_line(&mut out);
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("client said {line:?}: {e}"));
            (v["path"].as_str().expect("path").to_owned(), v)
        })
        .collect();
    assert!(client.child.wait().expect("client").success());
    // Let the last events reach the agent; a clean stop flushes the rest.
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();

    let seen = exchanges(&log);
    let server: Vec<&Value> = seen.iter().filter(|x| x["service"] == "api" && x["direction"] == "server").collect();
    assert_eq!(server.len(), requests.len(), "one server exchange per request: {seen:#?}");
    assert_eq!(seen.len(), server.len(), "nothing else was traced");
    for (method, path, body, status, response_bytes) in &requests {
        let client_view = &measured[path];
        assert_eq!(client_view["status"], *status, "the app's answer to {method} {path}");
        let matching: Vec<&&Value> = server.iter().filter(|x| x["target"] == path.as_str()).collect();
        assert_eq!(matching.len(), 1, "exchanges for {path}: {matching:#?}");
        let x = matching[0];
        assert_eq!(x["method"], *method, "{path}");
        assert_eq!(x["status"], *status, "{path}");
        assert_eq!(x["request_bytes"], body.map_or(0, str::len), "{path}");
        assert_eq!(x["response_bytes"], *response_bytes, "{path}");
        assert_eq!(x["flags"], Value::from(Vec::<Value>::new()), "{path}: {x}");
        assert_eq!(x["local"], format!("127.0.0.1:{port}").as_str());
        // The server's time is inside the client's: request first byte read to response last
        // byte written, against the client's perf_counter around the whole call.
        let server_ms = x["duration_ms"].as_f64().expect("duration");
        let client_ms = client_view["ms"].as_f64().expect("client time");
        assert!(
            server_ms > 0.0 && server_ms <= client_ms,
            "{method} {path}: server {server_ms} ms > client {client_ms} ms"
        );
        if path.starts_with("/slow") {
            assert!(server_ms >= 29.0, "/slow sleeps 30 ms, the exchange took {server_ms} ms");
        }
    }
    // One keep-alive connection.
    let conns: std::collections::BTreeSet<String> = server.iter().map(|x| x["conn_id"].to_string()).collect();
    assert_eq!(conns.len(), 1, "{conns:?}");
}

/// A fixed pseudo-random byte sequence (xorshift), not starting like any text protocol.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    v[0] = 0xff;
    v
}

/// The start of a TLS 1.2/1.3 ClientHello record.
const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x5b\x1a\x2c\x3d\x4e\x5f\x60\x71\x82\x93\xa4\xb5\xc6\xd7\xe8\xf9\x0a\x1b\x2c\x3d\x4e\x5f\x60\x71\x82\x93\xa4\xb5\xc6\xd7\xe8\xf9\x00\x00\x20\xcc\xa8\xcc\xa9\xc0\x2f\xc0\x30\xc0\x2b\xc0\x2c\xc0\x13\xc0\x09\xc0\x14\xc0\x0a\x00\x9c\x00\x9d\x00\x2f\x00\x35\xc0\x12\x00\x0a\x01\x00\x00\x58\x00\x00\x00\x18\x00\x16\x00\x00\x13example.ulfheim.net";

/// Send `bytes` on a new connection, half-close, and read what comes back until the server
/// closes (or a short timeout): the server has seen it all by then.
fn send_raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    send_in_pieces(port, bytes, bytes.len())
}

/// As `send_raw`, `piece` bytes per write, 2 ms apart.
fn send_in_pieces(port: u16, bytes: &[u8], piece: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    for (i, part) in bytes.chunks(piece.max(1)).enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        // A server may answer and close before reading everything: that is its right.
        if s.write_all(part).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

/// `NAME{LABELS} VALUE` from a Prometheus text page (0 when absent).
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn bad_input_is_counted_and_never_disturbs_good_traffic() {
    if !require_root("bad_input") || !require_python("bad_input") {
        return;
    }
    let dir = temp_dir("bad-input");
    // uvicorn that accepts big heads (h11 stops at 16 KiB by default), so the one over 64 KiB
    // is read whole and answered.
    let port = free_port();
    let _api = Proc::spawn(
        Command::new(python())
            .args(["-m", "uvicorn", "echo_app:app", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--no-access-log", "--h11-max-incomplete-event-size", "1048576"])
            .current_dir(repo().join("tests/apps"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    // A binary protocol on a traced port: a TCP echo server.
    let echo_port = free_port();
    let echo = "import socketserver, sys\n\
        class H(socketserver.BaseRequestHandler):\n\
        \x20   def handle(self):\n\
        \x20       while (d := self.request.recv(65536)):\n\
        \x20           self.request.sendall(d)\n\
        socketserver.ThreadingTCPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n";
    let _echo = Proc::spawn(
        Command::new(python()).args(["-c", echo, &echo_port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()),
    );
    wait_for_port(echo_port);
    let (mut agent, log, metrics_port) =
        start_agent(&dir, &[format!("api=port:{port}"), format!("echo=port:{echo_port}")]);

    // Good requests, each on its own connection, while the bad input goes in.
    const GOOD: usize = 40;
    let good = std::thread::spawn(move || {
        (0..GOOD)
            .map(|i| {
                curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/hello?good={i}")])
            })
            .collect::<Vec<String>>()
    });

    // 1. Garbage to the HTTP server: not HTTP.
    let reply = send_raw(port, b"\x00\x01\x02\xfe\xffgarbage\r\n\r\nmore garbage\r\n");
    assert!(reply.is_empty() || reply.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&reply));
    // 2. Random bytes to the echo server: not HTTP, echoed back. 3. A TLS ClientHello, echoed
    // back: a TLS connection, kept from the parser, with no plaintext ever (opaque).
    let random = random_bytes(4096);
    assert_eq!(send_raw(echo_port, &random), random, "the echo server echoes");
    assert_eq!(send_raw(echo_port, CLIENT_HELLO), CLIENT_HELLO);
    // 4. A request whose head is over 64 KiB (the agent's head limit): 10 headers of 8000 bytes,
    // sent 2 KiB at a time so the server's reads stay under the capture size (a read inside a
    // head that is bigger than --capture-bytes loses bytes: that is lost_bytes_in_headers).
    let mut big = b"GET /big-head HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".to_vec();
    for i in 0..10 {
        big.extend_from_slice(format!("X-Fill-{i}: {}\r\n", "a".repeat(8000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    assert!(big.len() > 64 * 1024);
    let reply = send_in_pieces(port, &big, 2048);
    assert!(reply.starts_with(b"HTTP/1.1 404 "), "uvicorn read the big head: {:?}", String::from_utf8_lossy(&reply));
    // 5. A chunked request with an invalid chunk size.
    let bad_chunk =
        b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let reply = send_raw(port, bad_chunk);
    assert!(reply.starts_with(b"HTTP/1.1 400 "), "uvicorn refuses it: {:?}", String::from_utf8_lossy(&reply));

    let statuses = good.join().expect("good traffic");
    assert!(statuses.iter().all(|s| s == "200"), "{statuses:?}");

    // The agent's own metrics (plain curl gets Prometheus text), updated every second.
    let want = [
        ("traceo_agent_parse_errors_total{reason=\"header_too_large\"}", 1.0),
        ("traceo_agent_parse_errors_total{reason=\"bad_chunk_size\"}", 1.0),
        ("traceo_agent_non_http_connections_total", 2.0),
        ("traceo_tls_opaque_connections_total", 1.0),
    ];
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut page = curl(&[&url]);
    while want.iter().any(|(s, v)| metric(&page, s) < *v) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        page = curl(&[&url]);
    }
    // One more update: nothing is counted twice.
    std::thread::sleep(Duration::from_millis(1200));
    page = curl(&[&url]);
    for (series, value) in want {
        assert_eq!(metric(&page, series), value, "{series}; the page:\n{page}");
    }
    let other_errors: f64 = page
        .lines()
        .filter(|l| l.starts_with("traceo_agent_parse_errors_total{"))
        .filter(|l| !want.iter().any(|(s, _)| l.starts_with(s)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(other_errors, 0.0, "parse errors of other kinds:\n{page}");

    // Still alive, and it stops cleanly.
    assert_eq!(
        curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{metrics_port}/health")]),
        "200"
    );
    let log_lines = agent.stop();
    assert!(log_lines.iter().any(|l| l.contains("detached")), "no clean detach:\n{}", log_lines.join("\n"));
    assert!(!log_lines.iter().any(|l| l.contains("panicked")), "{}", log_lines.join("\n"));

    let seen = exchanges(&log);
    for i in 0..GOOD {
        let target = format!("/hello?good={i}");
        let x: Vec<&Value> = seen.iter().filter(|x| x["target"] == target.as_str()).collect();
        assert_eq!(x.len(), 1, "{target}: {x:#?}");
        assert_eq!(
            (&x[0]["method"], &x[0]["status"], &x[0]["response_bytes"]),
            (&"GET".into(), &200.into(), &5.into())
        );
        assert_eq!(x[0]["flags"], Value::from(Vec::<Value>::new()), "{}", x[0]);
    }
    assert!(seen.iter().all(|x| x["service"] == "api"), "nothing from the echo server is HTTP: {seen:#?}");
    // Both broken requests were answered (404, 400: what the client read above); each is
    // reported with that answer and marked.
    for (target, status) in [("/big-head", 404), ("/upload", 400)] {
        let x: Vec<&Value> = seen.iter().filter(|x| x["target"] == target).collect();
        assert_eq!(x.len(), 1, "{target}: {seen:#?}");
        assert_eq!(x[0]["status"], status, "{}", x[0]);
        let flags = x[0]["flags"].as_array().expect("flags");
        assert!(flags.contains(&"parse_error".into()), "{}", x[0]);
    }
    assert_eq!(seen.len(), GOOD + 2, "the good requests and the two broken ones: {seen:#?}");
}

#[test]
fn a_reader_that_stops_reading_never_freezes_the_agent() {
    if !require_root("stalled_reader") || !require_python("stalled_reader") {
        return;
    }
    let port = free_port();
    let _server = uvicorn(port, 1);
    let metrics_port = free_port();
    // `--log -` into a pipe nobody reads: once the pipe is full, every write would block.
    let mut agent = Proc::spawn(
        Command::new(agent_bin())
            .args(["run", "--service", &format!("api=port:{port}"), "--log", "-"])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let ready = format!("http://127.0.0.1:{metrics_port}/ready");
    // The endpoint listens a moment after the process starts (a loaded machine lost that race).
    wait_for_addr("127.0.0.1", metrics_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !curl(&["--max-time", "2", &ready]).starts_with("ready") {
        assert!(Instant::now() < deadline, "the agent did not get ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Far more lines than a pipe holds (64 KiB, about 150 lines).
    let mut client = Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/sized_load.py"))
            .args([&port.to_string(), "4", "250"])
            .stdout(Stdio::null()),
    );
    assert!(client.child.wait().expect("load").success());
    std::thread::sleep(Duration::from_secs(2));
    assert!(curl(&["--max-time", "5", &ready]).starts_with("ready"), "/ready stopped answering");
    let metrics = curl(&["--max-time", "5", &format!("http://127.0.0.1:{metrics_port}/metrics")]);
    assert!(metrics.contains("traceo_http_requests_total"), "/metrics stopped answering");
    // SIGTERM ends it within a few seconds although its reader never read a byte.
    let stop = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    loop {
        if agent.child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(stop.elapsed() < Duration::from_secs(5), "SIGTERM did not end the agent within 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped in {:?}", stop.elapsed());
}

#[test]
fn a_server_that_listens_after_the_agent_started_is_traced_from_its_first_request() {
    if !require_root("late_listener") || !require_python("late_listener") {
        return;
    }
    let dir = temp_dir("late-listener");
    let port = free_port();
    // The agent first: nothing listens on the port yet.
    let (mut agent, log, _) = start_agent(&dir, &[format!("api=port:{port}")]);
    let _server = uvicorn(port, 1);
    // At once, well inside the second a periodic /proc scan would take to notice.
    for i in 0..5 {
        curl(&[&format!("http://127.0.0.1:{port}/hello?n={i}")]);
    }
    std::thread::sleep(Duration::from_millis(2500));
    agent.stop();
    let x = exchanges(&log);
    let served: Vec<&str> =
        x.iter().filter(|e| e["direction"] == "server").filter_map(|e| e["target"].as_str()).collect();
    assert_eq!(served, (0..5).map(|i| format!("/hello?n={i}")).collect::<Vec<_>>(), "{x:?}");
}

/// `traceo_agent_parse_errors_total{reason}` from the agent's page, waiting (10 s at most)
/// until every wanted series reaches its value.
fn wait_metrics(metrics_port: u16, want: &[(&str, f64)]) -> String {
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut page = curl(&[&url]);
    while want.iter().any(|(s, v)| metric(&page, s) < *v) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        page = curl(&[&url]);
    }
    page
}

#[test]
fn an_overlong_request_line_and_an_unfinished_head_are_counted_and_reported() {
    if !require_root("unfinished_heads") || !require_python("unfinished_heads") {
        return;
    }
    let dir = temp_dir("unfinished-heads");
    let port = free_port();
    let _api = uvicorn(port, 1);
    let (mut agent, log, metrics_port) = start_agent(&dir, &[format!("api=port:{port}")]);

    // 1. A 20 KiB request line (over the 8 KiB the agent reads as a target; uvicorn refuses
    // it, 400, past its 16 KiB head limit).
    let long = format!("GET /{} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n", "a".repeat(20 * 1024));
    let reply = send_in_pieces(port, long.as_bytes(), 4096);
    let long_status: u64 = String::from_utf8_lossy(reply.get(9..12).unwrap_or_default()).parse().unwrap_or(0);
    assert!(long_status >= 400, "{:?}", String::from_utf8_lossy(&reply));
    // 2. Slowloris: a partial head, the connection held open a while, then closed.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET /slowloris HTTP/1.1\r\nHost: test\r\nX-Wait: 1\r\n").expect("partial head");
    std::thread::sleep(Duration::from_millis(1500));
    // Meanwhile, and after, other connections are traced.
    let during = curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/hello?n=during")]);
    drop(slow);
    let after: Vec<String> = (0..5)
        .map(|i| curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/hello?n=after{i}")]))
        .collect();
    assert_eq!(during, "200");
    assert!(after.iter().all(|s| s == "200"), "{after:?}");

    let want = [
        ("traceo_agent_parse_errors_total{reason=\"request_line_too_long\"}", 1.0),
        ("traceo_agent_parse_errors_total{reason=\"incomplete_head\"}", 1.0),
    ];
    let page = wait_metrics(metrics_port, &want);
    for (series, value) in want {
        assert_eq!(metric(&page, series), value, "{series}; the page:\n{page}");
    }
    agent.stop();

    let seen = exchanges(&log);
    // The overlong request is reported with the answer it got, its target cut, flagged.
    let long_x: Vec<&Value> =
        seen.iter().filter(|x| x["target"].as_str().is_some_and(|t| t.starts_with("/aaaa"))).collect();
    assert_eq!(long_x.len(), 1, "{seen:#?}");
    assert_eq!((&long_x[0]["method"], &long_x[0]["status"]), (&"GET".into(), &long_status.into()), "{}", long_x[0]);
    assert!(long_x[0]["target"].as_str().expect("target").len() <= 4096);
    assert!(long_x[0]["flags"].as_array().expect("flags").contains(&"parse_error".into()), "{}", long_x[0]);
    // The unfinished one: its request line was read, no answer came.
    let slow_x: Vec<&Value> = seen.iter().filter(|x| x["target"] == "/slowloris").collect();
    assert_eq!(slow_x.len(), 1, "{seen:#?}");
    let flags = slow_x[0]["flags"].as_array().expect("flags");
    assert!(flags.contains(&"parse_error".into()) && flags.contains(&"no_response".into()), "{}", slow_x[0]);
    for n in std::iter::once("during".to_owned()).chain((0..5).map(|i| format!("after{i}"))) {
        let target = format!("/hello?n={n}");
        let x: Vec<&Value> = seen.iter().filter(|x| x["target"] == target.as_str()).collect();
        assert_eq!(x.len(), 1, "{target}: {seen:#?}");
        assert_eq!(x[0]["status"], 200, "{}", x[0]);
    }
}

#[test]
fn tls_sent_to_a_plaintext_port_is_reported_as_such_not_as_an_opaque_tls_library() {
    if !require_root("tls_on_plaintext") || !require_python("tls_on_plaintext") {
        return;
    }
    let dir = temp_dir("tls-on-plaintext");
    let port = free_port();
    let _api = uvicorn(port, 1);
    let (mut agent, log, metrics_port) = start_agent(&dir, &[format!("api=port:{port}")]);

    // Three HTTPS clients (Python's ssl module: OpenSSL) on the plain HTTP port: uvicorn
    // answers each ClientHello with a plaintext 400, and the handshake fails.
    let client = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE\n\
         for _ in range(3):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n\
         \x20   try:\n\
         \x20       ctx.wrap_socket(s, server_hostname='localhost')\n\
         \x20       print('handshake succeeded')\n\
         \x20   except ssl.SSLError as e:\n\
         \x20       print('failed', e.reason)\n\
         \x20   s.close()\n"
    );
    let out = std::process::Command::new(python()).args(["-c", &client]).output().expect("python");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.matches("failed").count(), 3, "{said} {}", String::from_utf8_lossy(&out.stderr));
    let good: Vec<String> = (0..3)
        .map(|i| curl(&["-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/hello?n={i}")]))
        .collect();
    assert!(good.iter().all(|s| s == "200"), "{good:?}");

    let want = [("traceo_tls_on_plaintext_connections_total", 3.0)];
    let page = wait_metrics(metrics_port, &want);
    assert_eq!(metric(&page, want[0].0), 3.0, "the page:\n{page}");
    assert_eq!(metric(&page, "traceo_tls_opaque_connections_total"), 0.0, "the page:\n{page}");
    let lines = agent.stop();
    let text = lines.join("\n");
    assert!(!text.contains("TLS library"), "no TLS library is blamed:\n{text}");
    assert!(text.contains("got no TLS answer"), "{text}");

    let seen = exchanges(&log);
    assert_eq!(seen.len(), 3, "only the plain requests are exchanges: {seen:#?}");
    for i in 0..3 {
        let target = format!("/hello?n={i}");
        assert!(seen.iter().any(|x| x["target"] == target.as_str() && x["status"] == 200), "{target}: {seen:#?}");
    }
}
