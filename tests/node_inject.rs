//! `runtime::node::inject` on real processes: the fidelity front on Node.js gets the marker
//! script through an inspector opened by SIGUSR1 and closed again, then announces each
//! outbound write made for an inbound request to the sink; processes that are not Node.js,
//! or whose JavaScript handles SIGUSR1, are never signalled.

mod support;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;
use traceo_agent::runtime::node;

/// TCP sockets of this network namespace: inode -> (state, local port, remote port).
fn tcp_sockets() -> HashMap<u64, (String, u16, u16)> {
    let mut out = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let port = |c: &str| u16::from_str_radix(c.rsplit(':').next().unwrap_or(""), 16).unwrap_or(0);
            if let (Some(inode), true) = (cols.get(9).and_then(|i| i.parse().ok()), cols.len() > 9) {
                out.insert(inode, (cols[3].to_owned(), port(cols[1]), port(cols[2])));
            }
        }
    }
    out
}

fn socket_inode(pid: u32, fd: u32) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether `pid` holds a socket listening on `port`.
fn listens_on(pid: u32, port: u16) -> bool {
    let listening: HashSet<u64> = tcp_sockets()
        .into_iter()
        .filter(|(_, (state, local, _))| state == "0A" && *local == port)
        .map(|(inode, _)| inode)
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .any(|fd| socket_inode(pid, fd).is_some_and(|i| listening.contains(&i)))
        })
        .unwrap_or(false)
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')').is_some_and(|at| !matches!(stat[at + 1..].trim_start().chars().next(), Some('Z' | 'X') | None))
}

/// One keep-alive GET on `stream`; the body (sized or chunked).
fn get(stream: &mut TcpStream, path: &str) -> String {
    // A front that stops answering fails the test instead of hanging it.
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: front\r\n\r\n").expect("send request");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let (mut length, mut chunked) = (0, false);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "GET {path}: {status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("content-length");
            }
            chunked |= name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked";
        }
    }
    if !chunked {
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        return String::from_utf8(body).expect("utf-8");
    }
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).expect("chunk");
        if size == 0 {
            return String::from_utf8(body).expect("utf-8");
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// The backend: 200 to everything, keep-alive for a minute.
const BACKEND: &str = "const s = require('http').createServer((q, r) => r.end('leaf'));\
                       s.keepAliveTimeout = 60000; s.listen(Number(process.argv[1]), '127.0.0.1');";

/// The fidelity front on Node.js and its backend, both listening.
struct NodeFront {
    _backend: Proc,
    front: Proc,
    backend_port: u16,
    front_port: u16,
    /// The front's stderr, where Node notes each opening of its inspector.
    stderr: std::path::PathBuf,
}

impl NodeFront {
    fn start() -> NodeFront {
        let (backend_port, front_port) = (free_port(), free_port());
        let stderr = temp_dir("node-front").join("stderr");
        let backend = Proc::spawn(Command::new("node").args(["-e", BACKEND, &backend_port.to_string()]));
        let front = Proc::spawn(
            Command::new("node")
                .arg(repo().join("tests/apps/fidelity/front_node.js"))
                .arg(front_port.to_string())
                .env("FIDELITY_BACKEND", format!("http://127.0.0.1:{backend_port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).expect("front stderr")),
        );
        wait_for_port(backend_port);
        wait_for_port(front_port);
        NodeFront { _backend: backend, front, backend_port, front_port, stderr }
    }
}

/// The tests that use 127.0.0.1:9229 take turns; `None` (skip) when it is not free.
fn inspector_port() -> Option<std::sync::MutexGuard<'static, ()>> {
    static PORT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = PORT.lock().unwrap_or_else(|e| e.into_inner());
    if TcpStream::connect(("127.0.0.1", node::INSPECTOR_PORT)).is_ok() {
        let why = "node_inject needs 127.0.0.1:9229 free (something listens there)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return None;
    }
    Some(guard)
}

/// The connection the injected script opens to the sink.
fn accept_sink(sink: &TcpListener) -> TcpStream {
    sink.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match sink.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the script never connected to the sink");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream
}

#[test]
fn markers_flow_after_injection_and_the_inspector_closes() {
    if !(require_root("node_inject") && require_node("node_inject")) {
        return;
    }
    let Some(_port) = inspector_port() else { return };
    let NodeFront { _backend, front, backend_port, front_port, .. } = NodeFront::start();
    let pid = front.pid();
    let sink = TcpListener::bind("127.0.0.1:0").expect("sink");
    let sink_port = sink.local_addr().expect("sink addr").port();

    assert_eq!(node::identify(pid).map(|p| p.ends_with("node")), Ok(true));
    node::inject(pid, sink_port).expect("inject");
    assert!(!listens_on(pid, node::INSPECTOR_PORT), "the inspector must be closed after the injection");

    let mut markers = accept_sink(&sink);

    // Two rounds of 4 concurrent requests on kept-alive client connections (the fds stay
    // valid while the markers are checked); round 2 reuses the front's backend connections.
    let mut clients: Vec<TcpStream> =
        (0..4).map(|_| TcpStream::connect(("127.0.0.1", front_port)).expect("connect front")).collect();
    let client_ports: HashSet<u16> = clients.iter().map(|c| c.local_addr().expect("addr").port()).collect();
    for round in 0..2 {
        std::thread::scope(|s| {
            for (i, client) in clients.iter_mut().enumerate() {
                s.spawn(move || {
                    let req = format!("r{round}c{i}");
                    assert_eq!(get(client, &format!("/call?req={req}")), format!("called {req}"));
                });
            }
        });
    }

    let mut seen = Vec::new();
    markers.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut buf = [0u8; 16];
    while seen.len() < 8 {
        match markers.read_exact(&mut buf) {
            Ok(()) => seen.push(buf),
            Err(_) => break,
        }
    }
    assert!(seen.len() >= 6, "only {} of the 8 outbound requests were marked", seen.len());
    let sockets = tcp_sockets();
    let mut inbound = HashSet::new();
    for marker in &seen {
        assert_eq!(&marker[..4], b"TRCN");
        let in_fd = u32::from_le_bytes(marker[4..8].try_into().expect("4 bytes"));
        let out_fd = u32::from_le_bytes(marker[8..12].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(marker[12..16].try_into().expect("4 bytes"));
        assert!(len > 30 && len < 1000, "marked length {len} is not a GET request's");
        assert_ne!(in_fd, out_fd);
        let conn = |fd| {
            let inode = socket_inode(pid, fd).unwrap_or_else(|| panic!("fd {fd} of the front is not a socket"));
            sockets.get(&inode).cloned().unwrap_or_else(|| panic!("fd {fd}: socket {inode} is not TCP"))
        };
        let (_, local, remote) = conn(in_fd);
        assert!(local == front_port && client_ports.contains(&remote), "inbound fd {in_fd} is not a client's");
        let (_, _, remote) = conn(out_fd);
        assert_eq!(remote, backend_port, "outbound fd {out_fd} is not a backend connection");
        inbound.insert(in_fd);
    }
    assert!(inbound.len() >= 3, "markers name {} distinct inbound connections of 4", inbound.len());

    // Again (a restarted agent, a new sink): the script is there already and reconnects; the
    // inspector opens and closes once more.
    let sink2 = TcpListener::bind("127.0.0.1:0").expect("sink");
    node::inject(pid, sink2.local_addr().expect("addr").port()).expect("second inject");
    drop(accept_sink(&sink2));
    assert!(!listens_on(pid, node::INSPECTOR_PORT), "the inspector must be closed after the second injection");
    assert_eq!(get(&mut clients[0], "/call?req=after"), "called after");
    assert!(alive(pid));
}

/// The whole path: `traceo-agent run --node-inject` on the fidelity front, 40 requests at 20
/// in flight, each calling the backend on a kept-alive connection after a random sleep. Every
/// call's parent is its own request's server span (ground truth: `from=` carries the id).
#[test]
fn the_agent_ties_each_node_call_to_its_own_request() {
    if !(require_root("node_inject") && require_node("node_inject")) {
        return;
    }
    let Some(_port) = inspector_port() else { return };
    let NodeFront { _backend, front, front_port, stderr, .. } = NodeFront::start();
    let dir = temp_dir("node-inject-agent");
    let log = dir.join("exchanges.jsonl");
    let service = format!("front=pid:{}", front.pid());
    let mut agent = Agent::run(&[
        "--service",
        &service,
        "--node-inject",
        "--log",
        log.to_str().expect("utf-8"),
        "--metrics-addr",
        "off",
    ]);
    assert!(
        agent.log.iter().any(|l| l.contains("script injected through the inspector")),
        "not injected; agent log:\n{}",
        agent.log.join("\n")
    );
    assert!(!listens_on(front.pid(), node::INSPECTOR_PORT), "the inspector must be closed");
    const N: usize = 40;
    std::thread::scope(|s| {
        for worker in 0..20 {
            s.spawn(move || {
                let mut client = TcpStream::connect(("127.0.0.1", front_port)).expect("connect front");
                for i in (worker..N).step_by(20) {
                    assert_eq!(get(&mut client, &format!("/call?req=n{i}")), format!("called n{i}"));
                }
            });
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    agent.stop();
    // Injected once: the inspector's own listen must not make the agent inject again.
    let opened = std::fs::read_to_string(&stderr).unwrap_or_default().matches("Debugger listening on").count();
    assert_eq!(opened, 1, "the inspector was opened {opened} times");
    let exchanges = json_lines(&log);
    let server: HashMap<String, &serde_json::Value> = exchanges
        .iter()
        .filter(|e| e["direction"] == "server")
        .filter_map(|e| Some((e["target"].as_str()?.strip_prefix("/call?req=")?.to_owned(), e)))
        .collect();
    assert_eq!(server.len(), N, "server exchanges");
    let (mut right, mut wrong) = (0, Vec::new());
    for call in exchanges.iter().filter(|e| e["direction"] == "client") {
        let Some(id) = call["target"].as_str().and_then(|t| t.split("from=").nth(1)).and_then(|t| t.split('&').next())
        else {
            continue;
        };
        if call["parent_span_id"].is_null() {
            continue;
        }
        match server.get(id) {
            Some(s) if s["span_id"] == call["parent_span_id"] && s["trace_id"] == call["trace_id"] => right += 1,
            _ => wrong.push(call.to_string()),
        }
    }
    assert!(wrong.is_empty(), "calls with another request's parent:\n{}", wrong.join("\n"));
    assert!(right * 100 >= N * 90, "only {right} of {N} calls got their request as parent");
}

#[test]
fn a_process_that_is_not_node_is_never_signalled() {
    let mut sleep = Proc::spawn(Command::new("sleep").arg("30"));
    let pid = sleep.pid();
    std::thread::sleep(Duration::from_millis(100));
    let why = node::inject(pid, 1).expect_err("sleep is not node");
    assert!(why.contains("not node"), "{why}");
    assert!(node::identify(pid).is_err());
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid) && sleep.child.try_wait().expect("wait").is_none(), "sleep must still run");
}

#[test]
fn a_javascript_sigusr1_handler_is_a_refusal_without_a_signal() {
    if !(require_root("node_inject") && require_node("node_inject")) {
        return;
    }
    let script = "process.on('SIGUSR1', () => console.log('GOT SIGUSR1')); \
                  setInterval(() => {}, 1000); console.log('ready');";
    let mut app = Proc::spawn(Command::new("node").args(["-e", script]).stdout(Stdio::piped()));
    let mut out = None;
    assert_eq!(app.read_line(&mut out), "ready");
    let pid = app.pid();
    let why = node::inject(pid, 1).expect_err("a JavaScript SIGUSR1 handler");
    assert!(why.contains("application handler"), "{why}");
    // The handler would print at once had the signal been sent: nothing comes.
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid));
    // SAFETY: signalling our own child's process group.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    let mut rest = String::new();
    out.take().expect("stdout").read_to_string(&mut rest).expect("read rest");
    assert!(!rest.contains("GOT SIGUSR1"), "the application's handler ran: a signal was sent");
}

#[test]
fn an_inspector_the_operator_opened_is_used_and_left_open() {
    if !(require_root("node_inject") && require_node("node_inject")) {
        return;
    }
    let Some(_port) = inspector_port() else { return };
    let script = "setInterval(() => {}, 1000); console.log('ready');";
    let mut app = Proc::spawn(
        Command::new("node")
            .args(["--inspect=127.0.0.1:9229", "-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut out = None;
    assert_eq!(app.read_line(&mut out), "ready");
    let pid = app.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listens_on(pid, node::INSPECTOR_PORT) {
        assert!(Instant::now() < deadline, "node --inspect never listened on 9229");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sink = TcpListener::bind("127.0.0.1:0").expect("sink");
    node::inject(pid, sink.local_addr().expect("addr").port()).expect("inject through the open inspector");
    drop(accept_sink(&sink));
    assert!(listens_on(pid, node::INSPECTOR_PORT), "the operator's inspector must stay open");
}

#[test]
fn an_inspector_moved_elsewhere_is_a_refusal_without_a_signal() {
    if !(require_root("node_inject") && require_node("node_inject")) {
        return;
    }
    let inspect = format!("--inspect=127.0.0.1:{}", free_port());
    let script = "setInterval(() => {}, 1000); console.log('ready');";
    let mut app =
        Proc::spawn(Command::new("node").args([&inspect, "-e", script]).stdout(Stdio::piped()).stderr(Stdio::null()));
    let mut out = None;
    assert_eq!(app.read_line(&mut out), "ready");
    let why = node::inject(app.pid(), 1).expect_err("inspector on another port");
    assert!(why.contains(&inspect) && why.contains("9229"), "{why}");
    assert!(alive(app.pid()));
}

#[test]
fn another_network_namespace_is_a_refusal_without_a_signal() {
    if !(require_root("node_inject") && require_node("node_inject")) {
        return;
    }
    let script = "setInterval(() => {}, 1000); console.log('ready');";
    let mut app = Proc::spawn(Command::new("unshare").args(["--net", "node", "-e", script]).stdout(Stdio::piped()));
    let mut out = None;
    assert_eq!(app.read_line(&mut out), "ready");
    // unshare execs node: same pid.
    let why = node::inject(app.pid(), 1).expect_err("another network namespace");
    assert!(why.contains("another network namespace"), "{why}");
    assert!(alive(app.pid()));
}
