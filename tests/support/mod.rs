//! Shared pieces of the live tests: privilege checks, real servers and clients, and the agent
//! driven through its command line exactly as a user runs it.
#![allow(dead_code)] // each test binary uses a different part

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod cgroup;
pub mod otlp;
pub mod pg;
pub mod prometheus;
pub mod tls;

pub const AGENT: &str = env!("CARGO_BIN_EXE_traceo-agent");

/// The agent `Agent::run` starts: this build, or `TRACEO_TEST_AGENT` (to show that a test
/// fails on an older build).
pub fn agent_bin() -> String {
    std::env::var("TRACEO_TEST_AGENT").unwrap_or_else(|_| AGENT.to_owned())
}
/// What the agent logs once its probes are attached.
pub const READY: &str = "ready: probes attached";

/// Live tests need root. In CI that is a failure with the reason; elsewhere a visible skip.
pub fn require_root(test: &str) -> bool {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = format!("{test} loads eBPF programs and needs root: run `sudo cargo xtask test`");
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// The Python with the test dependencies (set up by `cargo xtask test`).
pub fn python() -> PathBuf {
    std::env::var_os("TRACEO_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo().join("target/pyenv/bin/python"))
}

pub fn require_python(test: &str) -> bool {
    let ok = Command::new(python()).args(["-c", "import uvicorn, httpx"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        let why = format!("{test} needs uvicorn and httpx in {}: run `cargo xtask setup`", python().display());
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    ok
}

pub fn require_node(test: &str) -> bool {
    if Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    let why = format!("{test} needs node (Node.js) on PATH: run `cargo xtask setup`");
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("traceo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A child process killed (whole process group) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt;
        let child = cmd.process_group(0).spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc { child }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("piped stdin")
    }
    pub fn send_line(&mut self, line: &str) {
        writeln!(self.stdin(), "{line}").expect("write to child");
    }
    /// Read one stdout line (the child must have piped stdout).
    pub fn read_line(&mut self, out: &mut Option<BufReader<ChildStdout>>) -> String {
        let reader = out.get_or_insert_with(|| BufReader::new(self.child.stdout.take().expect("piped stdout")));
        let mut line = String::new();
        reader.read_line(&mut line).expect("read child stdout");
        line.trim().to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

pub fn wait_for_port(port: u16) {
    wait_for_addr("127.0.0.1", port);
}

pub fn wait_for_addr(host: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect((host, port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port} after 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `python -m http.server` serving `dir`.
pub fn http_server(dir: &Path, port: u16) -> Proc {
    let p = Proc::spawn(
        Command::new(python())
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    p
}

/// uvicorn serving tests/apps/echo_app.py.
pub fn uvicorn(port: u16, workers: u32) -> Proc {
    uvicorn_app("echo_app:app", port, workers, &[])
}

/// uvicorn serving tests/apps/echo_app.py on `host` (e.g. `::1`).
pub fn uvicorn_on(host: &str, port: u16, workers: u32) -> Proc {
    uvicorn_at("echo_app:app", host, port, workers, &[])
}

/// uvicorn serving `app` (`module:attribute` from tests/apps) with extra environment.
pub fn uvicorn_app(app: &str, port: u16, workers: u32, env: &[(&str, &str)]) -> Proc {
    uvicorn_at(app, "127.0.0.1", port, workers, env)
}

fn uvicorn_at(app: &str, host: &str, port: u16, workers: u32, env: &[(&str, &str)]) -> Proc {
    let p = Proc::spawn(
        Command::new(python())
            .args(["-m", "uvicorn", app, "--host", host, "--port", &port.to_string()])
            .args(["--workers", &workers.to_string(), "--no-access-log"])
            .envs(env.iter().copied())
            .current_dir(repo().join("tests/apps"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_addr(host, port);
    p
}

/// A mode of tests/apps/clients.py against 127.0.0.1:`port`, with piped stdin and stdout.
pub fn python_client(mode: &str, port: u16) -> Proc {
    Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/clients.py"))
            .args([mode, "127.0.0.1", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )
}

pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("run curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent recording to a file, as `traceo-agent record --out FILE ARGS...`.
pub struct Recording {
    proc: Proc,
    pub file: PathBuf,
    stderr: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Recording {
    pub fn start(dir: &Path, args: &[&str]) -> Recording {
        let file = dir.join("capture.trec");
        let mut proc = Proc::spawn(
            Command::new(AGENT)
                .arg("record")
                .arg("--out")
                .arg(&file)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = proc.child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut rec = Recording { proc, file, stderr: rx, log: vec![] };
        rec.wait_log(READY, Duration::from_secs(30));
        rec
    }

    /// Wait until the agent logs a line containing `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => {
                    panic!("the agent did not log {needle:?} within {timeout:?}; its log:\n{}", self.log.join("\n"))
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGINT, wait for a clean exit, then replay the file: one JSON value per event.
    pub fn stop(mut self) -> Vec<Value> {
        // Let the last syscalls' events reach the ring buffer reader.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGINT) };
        let status = self.proc.child.wait().expect("wait for the agent");
        drain_log(&self.stderr, &mut self.log);
        assert!(status.success(), "the agent exited with {status}; its log:\n{}", self.log.join("\n"));
        assert!(self.log.iter().any(|l| l.contains("detached")), "no clean detach:\n{}", self.log.join("\n"));
        replay_events(&self.file)
    }
}

/// The agent as `traceo-agent run ARGS...`, started and ready.
pub struct Agent {
    proc: Proc,
    stderr: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Agent {
    pub fn run(args: &[&str]) -> Agent {
        let mut proc =
            Proc::spawn(Command::new(agent_bin()).arg("run").args(args).stdout(Stdio::null()).stderr(Stdio::piped()));
        let stderr = proc.child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut agent = Agent { proc, stderr: rx, log: vec![] };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.log.iter().any(|l| l.contains(READY)) {
            match agent.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => agent.log.push(line),
                Err(_) => panic!("the agent did not get ready; its log:\n{}", agent.log.join("\n")),
            }
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGINT and a clean exit; returns the agent's log.
    pub fn stop(&mut self) -> Vec<String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGINT) };
        let status = self.proc.child.wait().expect("wait for the agent");
        drain_log(&self.stderr, &mut self.log);
        assert!(status.success(), "the agent exited with {status}; its log:\n{}", self.log.join("\n"));
        self.log.clone()
    }
}

/// The rest of a finished process's stderr: up to the reader thread's end (EOF).
fn drain_log(rx: &mpsc::Receiver<String>, log: &mut Vec<String>) {
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
}

pub fn replay_events(file: &Path) -> Vec<Value> {
    let out = Command::new(AGENT).args(["replay", "--events"]).arg(file).output().expect("run replay");
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Data events of one connection and direction, concatenated in order.
pub fn stream(events: &[Value], conn_id: &Value, direction: &str) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["kind"] == "data" && &e["conn_id"] == conn_id && e["direction"] == direction)
        .flat_map(|e| e["data"].as_str().expect("data text").as_bytes().to_vec())
        .collect()
}

pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// The Traceo stack of tests/apps/traceo_stack: engine and MCP server on loopback ports.
pub struct Stack {
    pub engine: Proc,
    _mcp: Proc,
    pub engine_port: u16,
    pub mcp_port: u16,
}

impl Stack {
    pub fn start() -> Stack {
        let (engine_port, mcp_port) = (free_port(), free_port());
        let dir = repo().join("tests/apps/traceo_stack");
        let engine = Proc::spawn(
            Command::new(python())
                .args(["-m", "uvicorn", "engine:app", "--host", "127.0.0.1", "--port", &engine_port.to_string()])
                .args(["--log-level", "warning"])
                .env("TRACEO_WEBHOOK_URL", format!("http://127.0.0.1:{mcp_port}/webhooks/job-complete"))
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let mcp = Proc::spawn(
            Command::new(python())
                .arg("mcp_server.py")
                .arg(mcp_port.to_string())
                .env("TRACEO_ENGINE_URL", format!("http://127.0.0.1:{engine_port}"))
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_port(engine_port);
        wait_for_port(mcp_port);
        Stack { engine, _mcp: mcp, engine_port, mcp_port }
    }

    /// Run the MCP client driver (with `args`, e.g. a number of concurrent uploads); its
    /// JSON lines.
    pub fn drive(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new(python())
            .arg(repo().join("tests/apps/traceo_stack/mcp_client.py"))
            .arg(format!("http://127.0.0.1:{}/mcp", self.mcp_port))
            .args(args)
            .output()
            .expect("run the MCP client");
        assert!(out.status.success(), "MCP client failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("client JSON")).collect()
    }
}

/// The agent tracing `services`, writing JSON lines to a file and serving metrics on a free
/// port: (agent, JSON lines file, metrics port).
pub fn start_agent(dir: &Path, services: &[String]) -> (Agent, PathBuf, u16) {
    let log = dir.join("exchanges.jsonl");
    let metrics_port = free_port();
    let mut args: Vec<String> = services.iter().flat_map(|s| ["--service".to_owned(), s.clone()]).collect();
    args.extend(["--log".into(), log.to_str().expect("UTF-8 path").into()]);
    args.extend(["--metrics-addr".into(), format!("127.0.0.1:{metrics_port}")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Agent::run(&args), log, metrics_port)
}

/// JSON lines of a file the agent wrote with `--log`.
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The agent's `/metrics` page on `port` (empty when it does not answer).
pub fn scrape(port: u16) -> String {
    curl(&[&format!("http://127.0.0.1:{port}/metrics")])
}

/// The sum of the samples whose line starts with `prefix` (a family, or a family and some
/// of its labels).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}
