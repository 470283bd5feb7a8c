//! Process churn: a traced service whose children come and go fast is traced whole, and
//! costs the agent nothing that grows. Needs root; see support::require_root.
//!
//! - Every forked child is traced from its first syscall, even while the agent untraces its
//!   exited siblings (their flags share a block of the kernel's pid map with the newborn's).
//! - Children that load OpenSSL (each a traced process, covered by the system libssl's
//!   probes) cost the agent no links of their own, and a SIGINT ends it within seconds.

mod support;

use std::{
    collections::HashSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

/// Listens on the port given (the `port:` selector finds it), waits for a line on stdin,
/// then forks CHILDREN children, at most 8 alive at a time; each makes one request,
/// `GET /c{i}`, to the server port given, and exits. Prints how many got an answer.
const FORKER: &str = r#"
import os, socket, sys, time
port, server, children = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen()
sys.stdin.readline()
def child(i):
    c = socket.create_connection(("127.0.0.1", server), timeout=10)
    c.sendall(b"GET /c%d HTTP/1.0\r\nHost: x\r\n\r\n" % i)
    answer = b""
    while chunk := c.recv(65536):
        answer += chunk
    return answer.startswith(b"HTTP/1.")
alive, ok = set(), 0
for i in range(children):
    while len(alive) >= 8:
        pid, status = os.wait()
        alive.discard(pid)
        ok += os.waitstatus_to_exitcode(status) == 0
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if child(i) else 1)
        except BaseException:
            os._exit(2)
    alive.add(pid)
for pid in alive:
    ok += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
print(ok, flush=True)
time.sleep(3600)
"#;

const CHILDREN: usize = 600;

#[test]
fn every_forked_childs_request_is_seen_while_siblings_exit() {
    if !require_root("churn") || !require_python("churn") {
        return;
    }
    let dir = temp_dir("churn-fork");
    let script = dir.join("forker.py");
    std::fs::write(&script, FORKER).expect("write forker.py");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    let server_port = free_port();
    let _server = http_server(&www, server_port);
    let port = free_port();
    let mut service = Proc::spawn(
        Command::new(python())
            .arg(&script)
            .args([port.to_string(), server_port.to_string(), CHILDREN.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    wait_for_port(port);
    let (mut agent, log, metrics_port) = start_agent(&dir, &[format!("forker=port:{port}")]);
    std::thread::sleep(Duration::from_secs(1));

    service.send_line("go");
    let mut out = None;
    let answered: usize = service.read_line(&mut out).trim().parse().expect("the forker's count");
    let wanted: HashSet<String> = (0..CHILDREN).map(|i| format!("/c{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let seen = loop {
        let seen: HashSet<String> = json_lines(&log)
            .iter()
            .filter(|x| x["service"] == "forker" && x["direction"] == "client")
            .filter_map(|x| x["target"].as_str().map(str::to_owned))
            .filter(|t| wanted.contains(t))
            .collect();
        if seen.len() == wanted.len() || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let drops = metric_sum(&scrape(metrics_port), "traceo_agent_kernel_drops_total{");
    let agent_log = agent.stop().join("\n");
    let mut missing: Vec<&String> = wanted.difference(&seen).collect();
    missing.sort();
    eprintln!("{answered} of {CHILDREN} children answered; {} seen by the agent; kernel drops {drops}", seen.len());
    assert_eq!(answered, CHILDREN, "children failed their request: the test proves nothing");
    assert_eq!(drops, 0.0, "the kernel dropped events: this test needs a quiet ring; the agent's log:\n{agent_log}");
    assert!(
        missing.is_empty(),
        "{} children's requests were never seen (first: {:?}): a child forked while the agent untraced an \
         exited sibling lost its flag; the agent's log:\n{agent_log}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Listens on the port given, waits for a line on stdin, then for SECONDS runs short-lived
/// Python children that load libssl (each lives 1 s, 8 at a time). Prints how many ran.
const SSL_CHILDREN: &str = r#"
import socket, subprocess, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen()
sys.stdin.readline()
deadline, n, alive = time.monotonic() + seconds, 0, []
while time.monotonic() < deadline:
    alive = [c for c in alive if c.poll() is None]
    if len(alive) < 8:
        alive.append(subprocess.Popen([sys.executable, "-c", "import ssl, asyncio, time; time.sleep(1)"]))
        n += 1
    time.sleep(0.05)
for c in alive:
    c.wait()
print(n, flush=True)
time.sleep(3600)
"#;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Whether `pid` has ended: gone, or a zombie whose every thread is gone (a zombie leader
/// whose other threads still wait in the kernel has not ended).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
            zombie && threads <= 1
        }
        Err(_) => true,
    }
}

#[test]
fn short_lived_openssl_children_leave_no_links_and_sigint_ends_the_agent_at_once() {
    if !require_root("churn") || !require_python("churn") {
        return;
    }
    let dir = temp_dir("churn-ssl");
    let script = dir.join("ssl_children.py");
    std::fs::write(&script, SSL_CHILDREN).expect("write ssl_children.py");
    let port = free_port();
    let mut service = Proc::spawn(
        Command::new(python())
            .arg(&script)
            .args([port.to_string(), "20".into()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    wait_for_port(port);
    let (mut agent, _log, metrics_port) = start_agent(&dir, &[format!("churn=port:{port}")]);
    std::thread::sleep(Duration::from_secs(1));
    let baseline = fds(agent.pid());

    // 20 s of children, the agent's fds sampled meanwhile.
    service.send_line("go");
    let started = Instant::now();
    let (mut peak, mut libssl_held) = (baseline, 0.0f64);
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(250));
        peak = peak.max(fds(agent.pid()));
        if started.elapsed() > Duration::from_secs(3) {
            libssl_held = libssl_held.max(metric_sum(&scrape(metrics_port), "traceo_tls_probed_libraries "));
        }
    }
    let mut out = None;
    let children: usize = service.read_line(&mut out).trim().parse().expect("the child count");
    let after = fds(agent.pid());

    // SIGINT, and the time to the agent's end (not waited for beyond 30 s).
    let pid = agent.pid();
    let asked = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    while !ended(pid) && asked.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = asked.elapsed();
    let log = if ended(pid) { agent.stop().join("\n") } else { String::from("(still running)") };
    eprintln!(
        "{children} children in 20 s; agent fds: {baseline} before, peak {peak}, {after} after; \
         ended {took:?} after SIGINT"
    );
    assert!(children >= 50, "only {children} children ran: the test proves little");
    assert!(
        libssl_held >= 1.0,
        "the system's libssl was never probed for the children: the test proves nothing; the agent's log:\n{log}"
    );
    assert!(
        peak <= baseline + 20 && after <= baseline + 20,
        "the agent's fds went from {baseline} to a peak of {peak} ({after} after {children} short-lived \
         children): probe links grow with the processes; its log:\n{log}"
    );
    assert!(took < Duration::from_secs(5), "the agent took {took:?} to end after SIGINT; its log:\n{log}");
}
