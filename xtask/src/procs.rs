//! Starting, measuring and stopping the processes the demo, the benchmark, the soak and the
//! fidelity harness need: the agent, nginx, uvicorn, wrk, an OTLP collector. Every child runs
//! in its own process group, killed with it when dropped or on Ctrl-C.

use std::{
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

// Shared with the live database tests.
#[path = "../../tests/support/pg.rs"]
mod pg;

/// Process groups still running, for the Ctrl-C handler (0 = free slot).
static GROUPS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

extern "C" fn on_interrupt(_: libc::c_int) {
    for g in &GROUPS {
        let pgid = g.load(Ordering::SeqCst);
        if pgid > 0 {
            // SAFETY: async-signal-safe calls only.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
    // SAFETY: async-signal-safe.
    unsafe { libc::_exit(130) };
}

/// On Ctrl-C, kill every child process group still running, then exit.
pub fn kill_children_on_interrupt() {
    // SAFETY: the handler only makes async-signal-safe calls.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };
}

/// A child in its own process group, killed with it on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
        use std::os::unix::process::CommandExt;
        let child = cmd.process_group(0).spawn().with_context(|| format!("cannot start {cmd:?}"))?;
        let pgid = child.id() as i32;
        // Remember it for the Ctrl-C handler (past 16 children, drop still cleans up).
        for g in &GROUPS {
            if g.compare_exchange(0, pgid, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                break;
            }
        }
        Ok(Proc(child))
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    /// SIGINT and wait (the agent detaches and exits cleanly on it).
    pub fn interrupt(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
        for g in &GROUPS {
            let _ = g.compare_exchange(pgid, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port} after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The agent, started with `args` and waited for until its probes are attached.
pub fn agent(binary: &Path, args: &[&str]) -> anyhow::Result<Proc> {
    agent_logged(binary, args).map(|(p, _)| p)
}

/// [`agent`], also keeping every line it logs (stderr) for the caller.
pub fn agent_logged(binary: &Path, args: &[&str]) -> anyhow::Result<(Proc, Arc<Mutex<Vec<String>>>)> {
    let mut p = Proc::spawn(Command::new(binary).args(args).stdout(Stdio::null()).stderr(Stdio::piped()))?;
    let stderr = p.0.stderr.take().expect("piped");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let kept = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready: probes attached") {
                let _ = tx.send(());
            }
            kept.lock().expect("log lock").push(line);
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        bail!("the agent did not get ready; it logged:\n{}", log.lock().expect("log lock").join("\n"));
    }
    Ok((p, log))
}

/// The one child process of `pid` (nginx's worker), if it has exactly one.
pub fn only_child(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    match children.split_whitespace().map(str::parse).collect::<Result<Vec<u32>, _>>().ok()?[..] {
        [child] => Some(child),
        _ => None,
    }
}

/// CPU seconds (user + system) of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(close) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A process's CPU time, thread by thread (`/proc/PID/task/*/schedstat`, nanoseconds) and in
/// all (`/proc/PID/stat`, clock ticks, which also keeps the time of threads that exited).
pub struct ThreadCpu {
    /// (tid, nanoseconds, the thread's name).
    threads: Vec<(u32, u64, String)>,
    seconds: f64,
}

impl ThreadCpu {
    pub fn read(pid: u32) -> ThreadCpu {
        let mut threads = Vec::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for e in dir.flatten() {
                let tid = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok());
                let ns = std::fs::read_to_string(e.path().join("schedstat"))
                    .ok()
                    .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()));
                let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_owned();
                if let (Some(tid), Some(ns)) = (tid, ns) {
                    threads.push((tid, ns, name));
                }
            }
        }
        ThreadCpu { threads, seconds: cpu_seconds(pid) }
    }

    /// CPU seconds from `before` to this reading: to the nanosecond when every thread read then
    /// still runs (a thread started since counts whole), else from the clock ticks (a 10 ms
    /// grain), since an exited thread's time is no longer listed by thread.
    pub fn since(&self, before: &ThreadCpu) -> f64 {
        if !self.by_thread_since(before) {
            return self.seconds - before.seconds;
        }
        self.by_name_since(before).values().sum()
    }

    /// Whether every thread read in `before` is still listed, so the difference is exact.
    fn by_thread_since(&self, before: &ThreadCpu) -> bool {
        let now = |tid: u32| self.threads.iter().find(|t| t.0 == tid).map(|t| t.1);
        !before.threads.is_empty() && before.threads.iter().all(|&(tid, ns, _)| now(tid).is_some_and(|n| n >= ns))
    }

    /// CPU seconds from `before` to this reading by thread name (the agent names its threads:
    /// `traceo-otlp` exports, the main thread runs the pipeline); empty when a thread exited.
    pub fn by_name_since(&self, before: &ThreadCpu) -> std::collections::BTreeMap<String, f64> {
        let mut names = std::collections::BTreeMap::new();
        if !self.by_thread_since(before) {
            return names;
        }
        for (tid, ns, name) in &self.threads {
            let then = before.threads.iter().find(|t| t.0 == *tid).map_or(0, |t| t.1);
            *names.entry(name.clone()).or_insert(0.0) += ns.saturating_sub(then) as f64 / 1e9;
        }
        names
    }
}

/// A `VmRSS` / `VmHWM`-style field of /proc/PID/status, in bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field).map(|v| v.trim().trim_end_matches(" kB").to_owned()))
        })
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Sum of the samples of `metric` (with optional label filter text) in a Prometheus exposition.
pub fn metric_sum(exposition: &str, metric: &str, filter: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn scrape(port: u16) -> String {
    Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// nginx serving `dir/www` on `port` with one worker (sendfile on, as deployments run it).
pub fn nginx(dir: &Path, port: u16) -> anyhow::Result<Proc> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("hello.txt"), "hello from nginx\n")?;
    let http = format!(
        "access_log off; sendfile on; keepalive_requests 1000000; keepalive_timeout 300s;\n\
         server {{ listen 127.0.0.1:{port}; location / {{ root {w}; }} }}",
        w = www.display()
    );
    nginx_with(dir, port, &http)
}

/// nginx (a master and one worker, in the foreground) with its files in `dir` and `http` as
/// its `http { }` block, waited for until `port` answers.
pub fn nginx_with(dir: &Path, port: u16, http: &str) -> anyhow::Result<Proc> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nworker_rlimit_nofile 40000;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 30000; }}\nhttp {{ {http} }}\n",
            d = dir.display()
        ),
    )?;
    let p = Proc::spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_for_port(port)?;
    Ok(p)
}

pub fn uvicorn(python: &Path, apps: &Path, port: u16) -> anyhow::Result<Proc> {
    uvicorn_app(python, apps, "echo_app:app", port, &[], &[])
}

/// uvicorn serving `app` from the folder `apps` on `port`, with more `args` (`--loop uvloop`)
/// and `env`.
pub fn uvicorn_app(
    python: &Path,
    apps: &Path,
    app: &str,
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let p = Proc::spawn(
        Command::new(python)
            .args(["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--no-access-log")
            .args(args)
            .envs(env.iter().copied())
            .current_dir(apps)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_for_port(port)?;
    Ok(p)
}

/// A rotel collector (the `rotel` Python package's binary) receiving OTLP on 127.0.0.1:`grpc`
/// (gRPC) and `http`, discarding what it receives; it logs to `dir/rotel.log`.
pub fn rotel(python: &Path, dir: &Path, grpc: u16, http: u16) -> anyhow::Result<Proc> {
    let out = Command::new(python)
        .args(["-c", "import pathlib, rotel; print(pathlib.Path(rotel.__file__).parent / 'rotel-agent')"])
        .output()?;
    let binary = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("rotel.log"))?;
    let p = Proc::spawn(
        Command::new(binary)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--exporter", "blackhole"])
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    wait_for_port(grpc)?;
    Ok(p)
}

/// What wrk reported.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn wrk(url: &str, connections: u32, seconds: u32) -> anyhow::Result<WrkResult> {
    wrk_with(url, connections, seconds, None)
}

/// [`wrk`] with a Lua `script` (`-s`) shaping the requests.
pub fn wrk_with(url: &str, connections: u32, seconds: u32, script: Option<&Path>) -> anyhow::Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", url])
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |label: &str| {
        text.lines().find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix(label)?.trim();
            let (num, unit) = rest.split_at(rest.find(|c: char| c.is_alphabetic())?);
            let v: f64 = num.parse().ok()?;
            Some(match unit {
                "us" => v / 1000.0,
                "ms" => v,
                "s" => v * 1000.0,
                _ => return None,
            })
        })
    };
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .context("wrk printed no request count")?;
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
        .context("wrk printed no rate")?;
    Ok(WrkResult { requests, rps, p50_ms: ms("50%").unwrap_or(f64::NAN), p99_ms: ms("99%").unwrap_or(f64::NAN) })
}

/// A throwaway PostgreSQL cluster in `dir` (trust authentication, user `postgres`) on
/// 127.0.0.1:`port`, run as the `postgres` user (initdb refuses root). `None`, with the
/// reason, when the Debian package is not installed or this is not root.
pub fn postgres(dir: &Path, port: u16) -> anyhow::Result<Result<Proc, String>> {
    let Some(bin) = pg::bin() else { return Ok(Err("no PostgreSQL (apt install postgresql)".into())) };
    // SAFETY: a plain query.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Err("not root (PostgreSQL is run as its own user)".into()));
    }
    let server = Proc::spawn(&mut pg::cluster(&bin, dir, port, &[]).map_err(anyhow::Error::msg)?)?;
    wait_for_port(port)?;
    Ok(Ok(server))
}

#[cfg(test)]
mod tests {
    use super::ThreadCpu;

    fn reading(threads: &[(u32, u64)], seconds: f64) -> ThreadCpu {
        let named = |&(tid, ns): &(u32, u64)| (tid, ns, if tid == 1 { "main" } else { "worker" }.to_owned());
        ThreadCpu { threads: threads.iter().map(named).collect(), seconds }
    }

    #[test]
    fn cpu_since_counts_by_thread_unless_a_thread_left() {
        let before = reading(&[(1, 1_000_000_000), (2, 500_000_000)], 1.5);
        // Both still there, a third started since: every nanosecond since, the new thread's all.
        let now = reading(&[(1, 1_250_000_000), (2, 600_000_000), (3, 50_000_000)], 1.9);
        assert!((now.since(&before) - 0.4).abs() < 1e-9, "{}", now.since(&before));
        // By name: thread 1 is "main", 2 and 3 "worker".
        let names = now.by_name_since(&before);
        assert_eq!(names.len(), 2);
        assert!((names["main"] - 0.25).abs() < 1e-9 && (names["worker"] - 0.15).abs() < 1e-9, "{names:?}");
        // Thread 2 exited: its time is only in the process's ticks.
        let now = reading(&[(1, 1_250_000_000)], 1.93);
        assert!((now.since(&before) - 0.43).abs() < 1e-9, "{}", now.since(&before));
        assert!(now.by_name_since(&before).is_empty(), "no split by thread when one left");
        // A tid reused by a new thread reads lower than before: the ticks again.
        let now = reading(&[(1, 1_250_000_000), (2, 10)], 1.8);
        assert!((now.since(&before) - 0.3).abs() < 1e-9, "{}", now.since(&before));
    }

    #[test]
    fn cpu_of_this_process_moves_forward() {
        let pid = std::process::id();
        let before = ThreadCpu::read(pid);
        assert!(!before.threads.is_empty(), "no thread read from /proc/{pid}/task");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(ThreadCpu::read(pid).since(&before) > 0.0);
    }
}
