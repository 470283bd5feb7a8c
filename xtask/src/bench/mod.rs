//! `cargo xtask bench`: the cost of tracing, measured side by side in one run.
//!
//! 1. Per-syscall cost of a send/recv loop (the loop thread's own CPU time): no agent, agent
//!    not selecting it, traced (64 B and 1 KiB), and only empty programs on the same hooks
//!    (the floor).
//! 2. OpenSSL probe cost per SSL_write + SSL_read pair (a Python loop over memory BIOs): no
//!    agent, agent running (probes on every libssl) but not selecting it, traced.
//! 3. Server overhead: nginx (static file) and uvicorn under wrk, untraced, with only the
//!    floor's empty programs, with the least capturing program on the server's syscalls (its
//!    records read by a thread, nothing else: the bound), traced, and traced with OTLP export
//!    (gRPC, then HTTP) to a rotel collector, alternated,
//!    with the server's own CPU per request (nginx's worker, uvicorn).
//!    Then the runtime options (issue #12): uvicorn with calls on a thread pool (uvloop,
//!    asyncio) without and with `--thread-pools`, a Node.js front without and with
//!    `--node-inject`, with the agent's CPU per exchange and the front's per request.
//! 4. Agent cost at that load, OTLP export off and on: CPU per exchange in steady state (a
//!    fresh agent warmed up under the load first) and over the whole arm, peak RSS, kernel
//!    losses, missed exchanges (and spans exported or dropped).
//! 5. Capacity: the highest exchange rate (over a few wrk loads) with nothing lost or missed.
//! 6. Memory at scale: agent RSS with 10,000 idle keep-alive connections to a traced nginx.
//! 7. Log records: a loop of 64-byte `write`s to a file the agent does not select, with no
//!    agent, traced without and with `--log-records` (and with `--log-file` selecting other
//!    files); and the agent's CPU per captured log record (the loop writing lines to stderr).
//!
//! `--only SECTION` runs part of it. Prints a table and writes `target/bench/bench.json`.

pub mod syscall_loop;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::procs::{
    self, Proc, ThreadCpu, WrkResult, agent, cpu_seconds, free_port, metric_sum, scrape, status_bytes, wrk, wrk_with,
};
use anyhow::bail;
use serde_json::{Value, json};

mod loops;
mod options;
mod prog_stats;
mod table;

pub struct Settings {
    pub quick: bool,
    /// Run only these sections (`SECTIONS`); all when empty.
    pub only: Vec<String>,
}

/// The bench's sections, for `--only`.
pub const SECTIONS: &[&str] = &["syscall", "ssl", "nginx", "memory", "uvicorn", "options", "logs"];

impl Settings {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

/// The median of the figures that are numbers (NaN stands for one not measured).
fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// The agent tracing the processes `selector` matches (`port:N`, `pid:N`) as `service`, with
/// its metrics on a free port and `extra` options. With the process's `pid`, also waited for
/// until its runtime is planned (on the attach worker, after the agent is ready: a CPython
/// measured, `--node-inject`'s script injected), so that one-time work is not counted as the
/// arm's cost.
fn traced_agent(
    agent_bin: &Path,
    service: &str,
    selector: &str,
    pid: Option<u32>,
    extra: &[&str],
) -> anyhow::Result<(Proc, u16)> {
    let metrics_port = free_port()?;
    let service = format!("{service}={selector}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut args = vec!["run", "--service", &service, "--log", "off", "--metrics-addr", &metrics];
    args.extend_from_slice(extra);
    let (a, log) = procs::agent_logged(agent_bin, &args)?;
    // `--no-runtime` plans nothing, so there is no line to wait for.
    let Some(pid) = pid.filter(|_| !extra.contains(&"--no-runtime")) else { return Ok((a, metrics_port)) };
    // The runtime's line: `pid N (COMM): DESCRIPTION` (other findings name the pid too).
    let at = format!("pid {pid} (");
    let planned = |l: &String| {
        l.split_once(&at).is_some_and(|(_, r)| r.split_once(')').is_some_and(|(_, r)| r.starts_with(": ")))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = log.lock().expect("log lock");
        if let Some(line) = lines.iter().find(|l| planned(l)) {
            let injected = line.contains("script injected through the inspector");
            anyhow::ensure!(injected || !extra.contains(&"--node-inject"), "--node-inject: {line}");
            break;
        }
        if Instant::now() > deadline {
            eprintln!("bench: pid {pid}'s runtime not planned after 20 s; measuring anyway");
            break;
        }
        drop(lines);
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((a, metrics_port))
}

/// A server as one arm loads it.
struct Target<'a> {
    /// The service name the agent gives it.
    name: &'a str,
    url: String,
    /// How the agent selects it.
    selector: String,
    /// Its pid, when its own CPU is measured.
    pid: Option<u32>,
    /// wrk's script (each request its own query), if any.
    script: Option<&'a Path>,
}

/// A wrk run against `target` with (connections, seconds), and the server's CPU seconds over
/// it (0 when not measured).
fn load(target: &Target, (conns, secs): (u32, u32)) -> anyhow::Result<(WrkResult, f64)> {
    let cpu0 = target.pid.map_or(0.0, cpu_seconds);
    let r = wrk_with(&target.url, conns, secs, target.script)?;
    Ok((r, target.pid.map_or(0.0, cpu_seconds) - cpu0))
}

/// What the agent paid over the traced wrk runs of one arm.
///
/// Each run starts a fresh agent, loads the server for `WARM_UP` seconds, then measures: the
/// steady cost (`cpu`, `exchanges`, `served`) is the agent's CPU over the measured wrk run
/// against the exchanges it counted meanwhile, the load running before and after (in steady
/// state the spans exported in the window stand for those held at its end). The whole arm's
/// (`whole_*`) runs from the warm-up's start until the last span is exported: it adds the
/// one-time costs of an agent's first seconds under load (its tables' first growth, the first
/// touches of its correlation window) and its idle cost while the last spans wait.
#[derive(Default)]
struct AgentCost {
    cpu: f64,
    /// `cpu` by thread name.
    cpu_by_thread: std::collections::BTreeMap<String, f64>,
    /// Exchanges seen, server and client side (a front's call to its backend is one).
    exchanges: f64,
    /// Server-side exchanges seen (one per request served).
    served: f64,
    whole_cpu: f64,
    whole_exchanges: f64,
    /// Server-side exchanges over the whole arm, for `missed` and the tasks per request.
    whole_served: f64,
    /// The warm-up's seconds.
    warm_up: u32,
    lost: f64,
    missed: f64,
    peak_rss: u64,
    spans_exported: f64,
    spans_dropped: f64,
    /// asyncio task creations the probes reported (each one `Task.__init__` entry + return).
    tasks: f64,
}

impl AgentCost {
    /// A wrk run against `target` traced with `extra` options, its cost added; the server's
    /// CPU seconds over the run.
    fn traced_wrk(
        &mut self,
        agent_bin: &Path,
        target: &Target,
        shape: (u32, u32),
        warm_up: u32,
        extra: &[&str],
    ) -> anyhow::Result<(WrkResult, f64)> {
        let name = target.name;
        let (mut a, metrics_port) = traced_agent(agent_bin, name, &target.selector, target.pid, extra)?;
        let cpu0 = cpu_seconds(a.pid());
        let requests = |text: &str, side: &str| {
            metric_sum(text, "traceo_http_requests_total", &format!("service=\"{name}\"{side}"))
        };
        let spans = |text: &str| {
            (
                metric_sum(text, "traceo_agent_spans_exported_total", ""),
                metric_sum(text, "traceo_agent_spans_dropped_total", ""),
            )
        };
        let server = ",direction=\"server\"";
        let tasks = |text: &str| metric_sum(text, "traceo_agent_events_read_total", "kind=\"task\"");
        let text = scrape(metrics_port);
        let (before, served0, spans0, tasks0) =
            (requests(&text, ""), requests(&text, server), spans(&text), tasks(&text));
        self.warm_up = warm_up;
        let warm = wrk_with(&target.url, shape.0, warm_up, target.script)?;
        // Scraped before the CPU is read at the start and after it at the end, so that the
        // scrapes' own cost stays out of the window.
        let text = scrape(metrics_port);
        let (steady0, served_steady0) = (requests(&text, ""), requests(&text, server));
        let threads0 = ThreadCpu::read(a.pid());
        let (r, server_cpu) = load(target, shape)?;
        let threads1 = ThreadCpu::read(a.pid());
        let text = scrape(metrics_port);
        self.cpu += threads1.since(&threads0);
        for (name, cpu) in threads1.by_name_since(&threads0) {
            *self.cpu_by_thread.entry(name).or_insert(0.0) += cpu;
        }
        self.exchanges += requests(&text, "") - steady0;
        self.served += requests(&text, server) - served_steady0;
        std::thread::sleep(Duration::from_millis(1500));
        let mut text = scrape(metrics_port);
        // With export on, spans leave after their correlation hold and the exporter's batch
        // interval: wait until each exchange's span is exported or dropped (or the counts stop
        // moving, at most 10 s more) so the CPU of exporting them is counted.
        let exporting = extra.contains(&"--otlp-endpoint");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = -1.0;
        while exporting && Instant::now() < deadline {
            let (out, dropped) = spans(&text);
            let done = out + dropped - spans0.0 - spans0.1;
            if done >= requests(&text, "") - before || done == last {
                break;
            }
            last = done;
            std::thread::sleep(Duration::from_millis(500));
            text = scrape(metrics_port);
        }
        let seen = requests(&text, "") - before;
        let served = requests(&text, server) - served0;
        let (out, dropped) = spans(&text);
        self.whole_cpu += cpu_seconds(a.pid()) - cpu0;
        self.peak_rss = self.peak_rss.max(status_bytes(a.pid(), "VmHWM:"));
        self.lost += metric_sum(&text, "traceo_agent_kernel_drops_total", "reason=\"ring_full");
        self.whole_exchanges += seen;
        self.whole_served += served;
        self.missed += ((warm.requests + r.requests) as f64 - served).max(0.0);
        self.spans_exported += out - spans0.0;
        self.spans_dropped += dropped - spans0.1;
        self.tasks += tasks(&text) - tasks0;
        a.interrupt();
        Ok((r, server_cpu))
    }

    fn json(&self) -> Value {
        let per = |cpu: f64, n: f64, scale: f64| if n > 0.0 { cpu / n * scale } else { f64::NAN };
        json!({
            "agent_cpu_us_per_exchange": per(self.cpu, self.exchanges, 1e6),
            "agent_cpu_us_per_request": per(self.cpu, self.served, 1e6),
            "agent_cpu_s_per_1000_exchanges": per(self.cpu, self.exchanges, 1000.0),
            "agent_cpu_us_per_exchange_whole_arm": per(self.whole_cpu, self.whole_exchanges, 1e6),
            "agent_cpu_us_per_exchange_by_thread": self.cpu_by_thread.iter()
                .map(|(name, cpu)| (name.clone(), json!(per(*cpu, self.exchanges, 1e6))))
                .collect::<serde_json::Map<_, _>>(),
            "warm_up_seconds": self.warm_up,
            "agent_peak_rss_mib": self.peak_rss as f64 / (1 << 20) as f64,
            "events_lost": self.lost, "exchanges_missed": self.missed, "exchanges_seen": self.exchanges,
            "spans_exported": self.spans_exported, "spans_dropped": self.spans_dropped,
            "tasks_per_request": if self.whole_served > 0.0 { self.tasks / self.whole_served } else { 0.0 },
        })
    }
}

/// One arm's runs over the rounds: wrk's results, the server's CPU and, traced, the agent's.
#[derive(Default)]
struct ArmRuns {
    wrk: Vec<WrkResult>,
    server_cpu: f64,
    cost: AgentCost,
}

impl ArmRuns {
    /// One run's result added; its rate.
    fn add(&mut self, (r, server_cpu): (WrkResult, f64)) -> f64 {
        self.server_cpu += server_cpu;
        self.wrk.push(r);
        self.wrk[self.wrk.len() - 1].rps
    }

    fn median(&self, f: fn(&WrkResult) -> f64) -> f64 {
        median(self.wrk.iter().map(f).collect())
    }

    fn rps(&self) -> f64 {
        self.median(|r| r.rps)
    }

    /// The server's CPU per request (us).
    fn server_cpu_us(&self) -> f64 {
        self.server_cpu / self.wrk.iter().map(|r| r.requests).sum::<u64>() as f64 * 1e6
    }
}

/// The arms of a server's measurement besides untraced.
struct Arms<'a> {
    /// Only the floor's empty programs attached (`bench-floor`): what any syscall-tracepoint
    /// design costs the server on this kernel, the base issue #16's throughput target is set on.
    floor: bool,
    /// Also the least capturing program at syscall exit for the server's process, its
    /// records drained and read by a thread and nothing else (`bench-floor --bound-pid`):
    /// what any design that captures the bytes at the syscall costs the server at best.
    bound: bool,
    /// The traced arms: a name and the agent's options. The server's top-level figures
    /// (`traced_rps`, `throughput_ratio`, the agent's cost) are the first's; each other is an
    /// object of its own under its name, compared with untraced and with the first.
    traced: &'a [(&'a str, &'a [&'a str])],
}

/// How every arm reaches the server.
enum Serving<'a> {
    /// One process for every arm, selected by its port (`pid`: its CPU is measured).
    Shared { url: String, port: u16, pid: Option<u32> },
    /// A new process for each arm (`start`: it and its port; `path`: the URL's), warmed up
    /// untraced for a second, selected by its pid and its CPU measured: for an option that
    /// leaves something in the process for its life (`--node-inject`'s script).
    Fresh { start: &'a dyn Fn() -> anyhow::Result<(Proc, u16)>, path: &'a str },
}

/// A server the arms load: its service name, how it is reached, wrk's script if any.
struct Server<'a> {
    name: &'a str,
    serving: Serving<'a>,
    script: Option<&'a Path>,
}

impl Server<'_> {
    /// The server for one arm, and its process when fresh (to keep until the arm is done).
    fn arm(&self, conns: u32) -> anyhow::Result<(Target<'_>, Option<Proc>)> {
        let target =
            |url: String, selector: String, pid| Target { name: self.name, url, selector, pid, script: self.script };
        match &self.serving {
            Serving::Shared { url, port, pid } => Ok((target(url.clone(), format!("port:{port}"), *pid), None)),
            Serving::Fresh { start, path } => {
                let (p, port) = start()?;
                let url = format!("http://127.0.0.1:{port}{path}");
                wrk_with(&url, conns, 1, self.script)?;
                Ok((target(url, format!("pid:{}", p.pid()), Some(p.pid())), Some(p)))
            }
        }
    }

    fn measures_cpu(&self) -> bool {
        !matches!(self.serving, Serving::Shared { pid: None, .. })
    }
}

/// Untraced, floor-only and the traced arms' wrk runs alternated (one of each a round, so
/// drift on a shared machine hits every arm alike); agent cost from the traced ones. Five
/// rounds (throughput and latency their medians, CPU per exchange pooled over them): with
/// three, the agent's CPU per exchange moved by ±0.3 us between runs.
fn server_overhead(agent_bin: &Path, server: &Server, s: &Settings, arms: &Arms) -> anyhow::Result<Value> {
    let (rounds, secs, conns, warm_up) = if s.quick { (1, 2, 16, 1) } else { (5, 5, 32, 3) };
    let shape = (conns, secs);
    let (mut plain, mut floor, mut bound) = (ArmRuns::default(), ArmRuns::default(), ArmRuns::default());
    // The bound's reader thread: its CPU seconds and the requests of its runs.
    let (mut reader_cpu, mut reader_requests) = (0.0, 0u64);
    let mut traced: Vec<ArmRuns> = arms.traced.iter().map(|_| ArmRuns::default()).collect();
    for round in 0..rounds {
        let mut line = format!("bench: {} round {round}:", server.name);
        // A fresh server lives until the end of its arm's block.
        {
            let (target, _fresh) = server.arm(conns)?;
            line.push_str(&format!(" untraced {:.0} req/s,", plain.add(load(&target, shape)?)));
        }
        if arms.floor {
            let (target, _fresh) = server.arm(conns)?;
            let mut a = agent(agent_bin, &["bench-floor"])?;
            let rps = floor.add(load(&target, shape)?);
            a.interrupt();
            line.push_str(&format!(" floor-only {rps:.0} req/s,"));
        }
        if arms.bound {
            let (target, _fresh) = server.arm(conns)?;
            let pid = target.pid.ok_or_else(|| anyhow::anyhow!("the bound arm needs the server's pid"))?;
            let mut a = agent(agent_bin, &["bench-floor", "--bound-pid", &pid.to_string()])?;
            let cpu0 = cpu_seconds(a.pid());
            let rps = bound.add(load(&target, shape)?);
            reader_cpu += cpu_seconds(a.pid()) - cpu0;
            reader_requests += bound.wrk[round].requests;
            a.interrupt();
            line.push_str(&format!(" least capturing {rps:.0} req/s,"));
        }
        for ((key, extra), runs) in arms.traced.iter().zip(&mut traced) {
            let (target, _fresh) = server.arm(conns)?;
            let served = runs.cost.served;
            let run = runs.cost.traced_wrk(agent_bin, &target, shape, warm_up, extra)?;
            let rps = runs.add(run);
            let label = if *key == "traced" { "traced".to_owned() } else { format!("traced with {key}") };
            let requests = runs.wrk[round].requests;
            line.push_str(&format!(" {label} {rps:.0} req/s (agent saw {} of {requests}),", runs.cost.served - served));
        }
        eprintln!("{}", line.trim_end_matches(','));
    }
    let first = &traced[0];
    let p50: fn(&WrkResult) -> f64 = |r| r.p50_ms;
    let p99: fn(&WrkResult) -> f64 = |r| r.p99_ms;
    let mut out = json!({
        "untraced_rps": plain.rps(), "traced_rps": first.rps(),
        "throughput_ratio": first.rps() / plain.rps(),
        "p50_ms": {"untraced": plain.median(p50), "traced": first.median(p50)},
        "p99_ms": {"untraced": plain.median(p99), "traced": first.median(p99)},
        "connections": conns, "seconds": secs, "rounds": rounds,
    });
    merge(&mut out, first.cost.json());
    if server.measures_cpu() {
        out["server_cpu_us_per_request"] = json!({"untraced": plain.server_cpu_us(), "traced": first.server_cpu_us()});
        if arms.floor {
            out["server_cpu_us_per_request"]["floor"] = json!(floor.server_cpu_us());
        }
    }
    if arms.floor {
        merge(
            &mut out,
            json!({
                "floor_rps": floor.rps(),
                "floor_over_untraced": floor.rps() / plain.rps(),
                "traced_over_floor": first.rps() / floor.rps(),
                "floor_p50_ms": floor.median(p50), "floor_p99_ms": floor.median(p99),
            }),
        );
    }
    if arms.bound {
        merge(
            &mut out,
            json!({
                "bound_rps": bound.rps(),
                "bound_over_floor": bound.rps() / floor.rps(),
                "bound_over_untraced": bound.rps() / plain.rps(),
                "bound_reader_cpu_us_per_request": reader_cpu / reader_requests.max(1) as f64 * 1e6,
            }),
        );
        if server.measures_cpu() {
            out["server_cpu_us_per_request"]["bound"] = json!(bound.server_cpu_us());
        }
    }
    for ((key, _), runs) in arms.traced.iter().zip(&traced).skip(1) {
        let mut o = json!({
            "traced_rps": runs.rps(), "throughput_ratio": runs.rps() / plain.rps(),
            "over_traced": runs.rps() / first.rps(),
            "p50_ms": runs.median(p50), "p99_ms": runs.median(p99),
        });
        merge(&mut o, runs.cost.json());
        if server.measures_cpu() {
            o["server_cpu_us_per_request"] = json!(runs.server_cpu_us());
        }
        out[*key] = o;
    }
    Ok(out)
}

/// `extra`'s fields added to the object `into`.
fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// The highest exchange rate over a few loads at which nothing was lost or missed.
fn capacity(agent_bin: &Path, url: &str, port: u16, s: &Settings) -> anyhow::Result<Value> {
    let loads: &[u32] = if s.quick { &[4, 16] } else { &[2, 8, 32, 128] };
    let secs = if s.quick { 2 } else { 5 };
    let mut steps = vec![];
    let mut best = 0.0f64;
    for &conns in loads {
        let (mut a, metrics_port) = traced_agent(agent_bin, "cap", &format!("port:{port}"), None, &[])?;
        let r = wrk(url, conns, secs)?;
        std::thread::sleep(Duration::from_millis(1500));
        let text = scrape(metrics_port);
        let seen = metric_sum(&text, "traceo_http_requests_total", "service=\"cap\"");
        let lost = metric_sum(&text, "traceo_agent_kernel_drops_total", "reason=\"ring_full");
        a.interrupt();
        let clean = lost == 0.0 && seen >= r.requests as f64;
        if clean {
            best = best.max(seen / secs as f64);
        }
        eprintln!(
            "bench: capacity with {conns} connections: {:.0} exchanges/s, lost {lost}, seen {seen} of {}",
            r.rps, r.requests
        );
        steps.push(json!({"connections": conns, "rps": r.rps, "seen": seen, "requests": r.requests, "lost": lost, "clean": clean}));
    }
    Ok(json!({"max_clean_exchanges_per_s": best, "steps": steps}))
}

/// Agent RSS with many idle keep-alive connections open to a traced nginx.
fn memory_at_scale(agent_bin: &Path, python: &Path, port: u16, s: &Settings) -> anyhow::Result<Value> {
    let n = if s.quick { 1000 } else { 10_000 };
    let (a, metrics_port) = traced_agent(agent_bin, "scale", &format!("port:{port}"), None, &[])?;
    let rss_before = status_bytes(a.pid(), "VmRSS:");
    let mut clients = Proc::spawn(
        Command::new(python)
            .arg(crate::root().join("tests/apps/idle_clients.py"))
            .args(["127.0.0.1", &port.to_string(), &n.to_string(), "/hello.txt"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )?;
    let mut line = String::new();
    BufReader::new(clients.0.stdout.take().expect("piped")).read_line(&mut line)?;
    anyhow::ensure!(line.starts_with("held"), "idle clients said {line:?}");
    // Idle means settled: past the correlation holds (2 s) and the agent's heap trim (10 s).
    std::thread::sleep(Duration::from_secs(if s.quick { 2 } else { 12 }));
    let text = scrape(metrics_port);
    let rss = status_bytes(a.pid(), "VmRSS:");
    let hwm = status_bytes(a.pid(), "VmHWM:");
    let active = metric_sum(&text, "traceo_agent_active_connections", "");
    eprintln!(
        "bench: {n} idle connections: agent RSS {:.1} MiB (peak {:.1}), tracking {active}",
        rss as f64 / 1048576.0,
        hwm as f64 / 1048576.0
    );
    drop(clients);
    Ok(json!({
        "connections": n, "agent_rss_mib": rss as f64 / 1048576.0, "agent_peak_rss_mib": hwm as f64 / 1048576.0,
        "agent_rss_before_mib": rss_before as f64 / 1048576.0, "tracked_connections": active,
    }))
}

pub fn run(agent_bin: &Path, python: &Path, s: &Settings) -> anyhow::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs: run it as root (sudo cargo xtask bench)");
    }
    procs::kill_children_on_interrupt();
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("traceo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut report = json!({
        "quick": s.quick,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    });
    if s.runs("syscall") {
        report["syscall"] = loops::syscall_costs(agent_bin, s)?;
    }
    if s.runs("ssl") {
        report["ssl"] = loops::ssl_costs(agent_bin, python, &dir, s)?;
    }

    if s.runs("nginx") || s.runs("uvicorn") {
        // A real OTLP receiver for the export arms, up through both servers' runs.
        let (grpc_port, http_port) = (free_port()?, free_port()?);
        let collector = procs::rotel(python, &dir, grpc_port, http_port)?;
        let (otlp, otlp_http) = (format!("http://127.0.0.1:{grpc_port}"), format!("http://127.0.0.1:{http_port}"));
        let with_otlp: &[&str] = &["--otlp-endpoint", &otlp];
        let with_otlp_http: &[&str] = &["--otlp-endpoint", &otlp_http, "--otlp-protocol", "http/protobuf"];
        let arms = Arms {
            floor: true,
            bound: true,
            traced: &[("traced", &[]), ("otlp", with_otlp), ("otlp_http", with_otlp_http)],
        };
        let shared = |name, url: &str, port, pid| Server {
            name,
            serving: Serving::Shared { url: url.to_owned(), port, pid },
            script: None,
        };
        if s.runs("nginx") {
            let nginx_port = free_port()?;
            let nginx = procs::nginx(&dir, nginx_port)?;
            let nginx_url = format!("http://127.0.0.1:{nginx_port}/hello.txt");
            // The worker's own CPU: what the probes cost the server apart from the agent's
            // competing for the same CPUs.
            let worker = (0..40).find_map(|_| {
                std::thread::sleep(Duration::from_millis(50));
                procs::only_child(nginx.pid())
            });
            report["nginx"] = server_overhead(agent_bin, &shared("nginx", &nginx_url, nginx_port, worker), s, &arms)?;
            report["capacity"] = capacity(agent_bin, &nginx_url, nginx_port, s)?;
            report["memory_at_scale"] = memory_at_scale(agent_bin, python, nginx_port, s)?;
            drop(nginx);
        }
        if s.runs("uvicorn") {
            let uv_port = free_port()?;
            let uv = procs::uvicorn(python, &crate::root().join("tests/apps"), uv_port)?;
            let uv_url = format!("http://127.0.0.1:{uv_port}/hello");
            let pid = Some(uv.pid());
            report["uvicorn"] = server_overhead(agent_bin, &shared("uvicorn", &uv_url, uv_port, pid), s, &arms)?;
            // The same with runtime tracking off: what the asyncio task contexts and lineage cost.
            let no_runtime = Arms { floor: false, bound: false, traced: &[("traced", &["--no-runtime"])] };
            report["uvicorn_no_runtime"] =
                server_overhead(agent_bin, &shared("uvicorn", &uv_url, uv_port, pid), s, &no_runtime)?;
            drop(uv);
        }
        drop(collector);
    } else if s.runs("memory") {
        // Memory at scale alone (`nginx` runs it too), without the throughput arms.
        let nginx_port = free_port()?;
        let nginx = procs::nginx(&dir, nginx_port)?;
        report["memory_at_scale"] = memory_at_scale(agent_bin, python, nginx_port, s)?;
        drop(nginx);
    }
    if s.runs("options") {
        let [uvloop, asyncio, node] = options::runtime_options(agent_bin, python, &dir, s)?;
        report["uvicorn_pools_uvloop"] = uvloop;
        report["uvicorn_pools_asyncio"] = asyncio;
        report["node"] = node;
    }
    if s.runs("logs") {
        report["logs"] = loops::log_costs(agent_bin, &dir, s)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    report["seconds"] = json!(started.elapsed().as_secs_f64());
    table::print_table(&report);
    let out = crate::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&report)?)?;
    println!("\nwrote {}", out.join("bench.json").display());
    Ok(())
}
