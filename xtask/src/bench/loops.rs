//! The loop programs' measurements: the syscall loop's cost per syscall, log writes' cost and
//! the agent's per captured record, and the OpenSSL probes' cost per SSL_write + SSL_read pair.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    Settings, median,
    prog_stats::{self, ProgRuns, StatsOn},
};
use crate::procs::{Proc, agent, cpu_seconds, free_port, metric_sum, scrape};

/// A loop program started and waiting: it has printed `ready` and times its loop, printing ns
/// per iteration, once it reads a line.
struct LoopProc {
    proc: Proc,
    out: BufReader<ChildStdout>,
}

impl LoopProc {
    fn start(cmd: &mut Command) -> anyhow::Result<LoopProc> {
        let mut proc = Proc::spawn(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()))?;
        let mut out = BufReader::new(proc.0.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line)?;
        anyhow::ensure!(line.trim() == "ready", "{cmd:?} said {line:?}");
        Ok(LoopProc { proc, out })
    }

    /// Run the timed loop; its ns per iteration.
    fn go(mut self) -> anyhow::Result<f64> {
        writeln!(self.proc.0.stdin.as_mut().expect("piped"), "go")?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        line.trim().parse().with_context(|| format!("the loop printed {line:?}"))
    }
}

/// The agent a loop measurement runs under: none, running but not selecting `pid`, tracing
/// `pid`, or only the empty programs (the floor). Metrics served on `metrics` (or `off`).
fn mode_agent(agent_bin: &Path, mode: &str, pid: u32, metrics: &str) -> anyhow::Result<Option<Proc>> {
    let run =
        |service: &str| agent(agent_bin, &["run", "--service", service, "--log", "off", "--metrics-addr", metrics]);
    Ok(match mode {
        "none" => None,
        "unselected" => Some(run("none=comm:traceo-nomatch")?),
        // Tracing another process (`traceo-holder`, started by the caller): the system's
        // libssl is then probed, for every process that calls it.
        "beside" => Some(run("holder=comm:traceo-holder")?),
        "traced" => Some(run(&format!("bench=pid:{pid}"))?),
        "floor" => Some(agent(agent_bin, &["bench-floor"])?),
        // The least capturing program in place of the real ones (see probes/floor.rs).
        "bound" => Some(agent(agent_bin, &["bench-floor", "--bound-pid", &pid.to_string()])?),
        // The least any per-process filter must do, for a process it does not select: the
        // bound program tracing pid 0 (the idle task, which makes no syscalls).
        "bound_unselected" => Some(agent(agent_bin, &["bench-floor", "--bound-pid", "0"])?),
        other => bail!("unknown mode {other}"),
    })
}

/// One timed run of the syscall loop under `mode`; ns per syscall.
fn loop_once(agent_bin: &Path, mode: &str, size: usize, iterations: u64) -> anyhow::Result<f64> {
    loop_with_programs(agent_bin, mode, size, iterations, false).map(|(ns, _)| ns)
}

/// [`loop_once`], also reading the programs the agent held when the loop ended (their run
/// statistics, when those are on) if `programs`.
fn loop_with_programs(
    agent_bin: &Path,
    mode: &str,
    size: usize,
    iterations: u64,
    programs: bool,
) -> anyhow::Result<(f64, Vec<ProgRuns>)> {
    let lp = LoopProc::start(Command::new(std::env::current_exe()?).args([
        "bench-loop",
        "--size",
        &size.to_string(),
        "--iterations",
        &iterations.to_string(),
    ]))?;
    let mut running = mode_agent(agent_bin, mode, lp.proc.pid(), "off")?;
    let ns = lp.go()?;
    let mut progs = vec![];
    if let Some(a) = running.as_mut() {
        if programs {
            progs = prog_stats::programs_of(a.pid())?;
        }
        a.interrupt();
    }
    Ok((ns, progs))
}

pub(super) fn syscall_costs(agent_bin: &Path, s: &Settings) -> anyhow::Result<Value> {
    let (rounds, iterations) = if s.quick { (1, 30_000) } else { (5, 200_000) };
    let cases = [
        ("none", 64),
        ("unselected", 64),
        ("floor", 64),
        ("traced", 64),
        ("traced", 1024),
        ("none", 1024),
        ("bound", 64),
        ("bound", 1024),
        ("bound_unselected", 64),
    ];
    let mut samples: Vec<Vec<f64>> = vec![vec![]; cases.len()];
    for round in 0..rounds {
        for (i, (mode, size)) in cases.iter().enumerate() {
            let ns = loop_once(agent_bin, mode, *size, iterations)?;
            eprintln!("bench: syscall loop round {round} {mode} {size} B: {ns:.0} ns/syscall");
            samples[i].push(ns);
        }
    }
    let m: Vec<f64> = samples.into_iter().map(median).collect();
    Ok(json!({
        "ns_per_syscall": {"none": m[0], "unselected": m[1], "floor": m[2], "traced_64b": m[3], "traced_1kib": m[4], "none_1kib": m[5],
                           "bound_64b": m[6], "bound_1kib": m[7]},
        "added_ns": {
            "unselected": m[1] - m[0],
            "floor": m[2] - m[0],
            "unselected_over_floor": m[1] - m[2],
            "traced_64b": m[3] - m[0],
            "traced_1kib": m[4] - m[5],
            "bound_64b": m[6] - m[0],
            "bound_1kib": m[7] - m[5],
            "bound_unselected": m[8] - m[0],
        },
        "ns_per_program_run": program_costs(agent_bin, s)?,
        "rounds": rounds, "iterations": iterations,
    }))
}

/// The programs' own ns per run (kernel run-time statistics) in the 64 B syscall loop: the
/// empty programs, the real ones for a process they do not select (the filter alone) and for
/// the traced loop, and the least capturing program; at syscall exit (every syscall) and at
/// the busiest entry tracepoint (the loop's sendto, every other syscall). Arms alternated,
/// medians of the rounds. From them, what the filter adds to an untraced process's syscall:
/// all the real programs' run time per syscall over the empty ones'. The loop's own arms
/// cannot resolve that: they move by ±100 ns between runs.
fn program_costs(agent_bin: &Path, s: &Settings) -> anyhow::Result<Value> {
    let (rounds, iterations) = if s.quick { (1, 30_000) } else { (3, 200_000) };
    let _stats = StatsOn::new()?;
    const MODES: [&str; 4] = ["floor", "unselected", "traced", "bound"];
    // Per mode: ns per run at exit, at entry, and all programs' ns per syscall.
    let mut samples: Vec<[Vec<f64>; 3]> = vec![Default::default(); MODES.len()];
    for _ in 0..rounds {
        for (mode, [exit, entry, per_syscall]) in MODES.iter().zip(&mut samples) {
            let (_, progs) = loop_with_programs(agent_bin, mode, 64, iterations, true)?;
            let per_run = |prog_type| prog_stats::busiest(&progs, prog_type).map_or(f64::NAN, |p| p.ns_per_run());
            exit.push(per_run(prog_stats::RAW_TRACEPOINT));
            entry.push(per_run(prog_stats::TRACEPOINT));
            per_syscall.push(prog_stats::ns_per_syscall(&progs));
        }
    }
    let mut out = json!({"rounds": rounds, "iterations": iterations});
    for (mode, [exit, entry, per_syscall]) in MODES.iter().zip(samples) {
        let (exit, entry, per_syscall) = (median(exit), median(entry), median(per_syscall));
        eprintln!("bench: program run time, {mode}: {exit:.1} ns at syscall exit, {entry:.1} ns at entry");
        out[*mode] = json!({"exit": exit, "entry": entry, "per_syscall": per_syscall});
    }
    let ns = |mode: &str, at: &str| out[mode][at].as_f64().unwrap_or(f64::NAN);
    let filter = ns("unselected", "per_syscall") - ns("floor", "per_syscall");
    // At exit alone: one test per syscall, the least a filter by process pays.
    let at_exit = ns("unselected", "exit") - ns("floor", "exit");
    out["untraced_filter_per_syscall"] = json!(filter);
    out["exit_filter_per_syscall"] = json!(at_exit);
    Ok(out)
}

/// One timed run of the write loop (`bench-loop --write TARGET`, its stderr to `stderr`)
/// under `mode`: ns per write, and with the agent tracing it with `--log-records` the records
/// it counted and the agent's CPU seconds from the loop's start until they were counted.
fn write_once(
    agent_bin: &Path,
    dir: &Path,
    mode: &str,
    target: &str,
    iterations: u64,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let stderr = std::fs::File::create(dir.join("loop-stderr.log"))?;
    let lp = LoopProc::start(
        Command::new(std::env::current_exe()?)
            .args(["bench-loop", "--size", "64", "--iterations", &iterations.to_string(), "--write", target])
            .stderr(stderr),
    )?;
    let metrics_port = free_port()?;
    let metrics = format!("127.0.0.1:{metrics_port}");
    let service = format!("bench=pid:{}", lp.proc.pid());
    let other = format!("{}/not-this-*.log", dir.display());
    let mut args = vec!["run", "--service", &service, "--log", "off", "--metrics-addr", &metrics];
    match mode {
        "none" => {}
        "traced" => {}
        "log_records" => args.extend(["--log-records", "/dev/null"]),
        "log_file" => args.extend(["--log-records", "/dev/null", "--log-file", &other]),
        other => bail!("unknown mode {other}"),
    }
    let mut running = if mode == "none" { None } else { Some(agent(agent_bin, &args)?) };
    let cpu0 = running.as_ref().map_or(0.0, |a| cpu_seconds(a.pid()));
    let ns = lp.go()?;
    let (mut records, mut lost, mut cpu) = (0.0, 0.0, 0.0);
    if let Some(a) = running.as_mut() {
        if mode != "traced" {
            // Records complete after 200 ms of quiet; counted on the agent's next tick (1 s).
            std::thread::sleep(Duration::from_millis(2500));
            let text = scrape(metrics_port);
            records = metric_sum(&text, "traceo_log_records_total", "");
            lost = metric_sum(&text, "traceo_agent_kernel_drops_total", "reason=\"ring_full");
        }
        cpu = cpu_seconds(a.pid()) - cpu0;
        a.interrupt();
    }
    Ok((ns, records, lost, cpu))
}

/// The write loop's untimed first writes (records too).
const WARM_UP_WRITES: u64 = 100;

/// What log capture costs: a traced process writing a lot to a file not selected (no agent,
/// traced without `--log-records`, with it, with `--log-file` selecting other files), and the
/// agent's CPU per captured record (the same loop writing its lines to stderr, a file).
pub(super) fn log_costs(agent_bin: &Path, dir: &Path, s: &Settings) -> anyhow::Result<Value> {
    let (rounds, iterations, records_n) = if s.quick { (1, 30_000, 20_000) } else { (3, 200_000, 100_000) };
    let bulk = dir.join("bulk.dat");
    let bulk = bulk.to_str().context("a UTF-8 path")?;
    let modes = ["none", "traced", "log_records", "log_file"];
    let mut samples: Vec<Vec<f64>> = vec![vec![]; modes.len()];
    let (mut per_record, mut lost, mut counted, mut stderr_ns) = (vec![], 0.0f64, f64::INFINITY, vec![]);
    for round in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            let (ns, _, _, _) = write_once(agent_bin, dir, mode, bulk, iterations)?;
            let _ = std::fs::remove_file(bulk);
            eprintln!("bench: file write loop round {round} {mode}: {ns:.0} ns/write");
            samples[i].push(ns);
        }
        let (ns, records, dropped, cpu) = write_once(agent_bin, dir, "log_records", "-", records_n)?;
        eprintln!(
            "bench: log records round {round}: {records} of {records_n} lines counted, {:.1} us agent CPU each, {ns:.0} ns/write",
            cpu / records.max(1.0) * 1e6
        );
        anyhow::ensure!(records > 0.0, "the agent counted no log record of the loop's stderr");
        per_record.push(cpu / records * 1e6);
        stderr_ns.push(ns);
        lost = lost.max(dropped);
        counted = counted.min(records);
    }
    let m: Vec<f64> = samples.into_iter().map(median).collect();
    Ok(json!({
        "ns_per_write_unselected_file": {"none": m[0], "traced": m[1], "log_records": m[2], "log_file": m[3]},
        "added_ns": {"traced": m[1] - m[0], "log_records": m[2] - m[0], "log_file": m[3] - m[0],
                     "log_records_over_traced": m[2] - m[1], "log_file_over_traced": m[3] - m[1]},
        "agent_cpu_us_per_record": median(per_record),
        "ns_per_captured_write": median(stderr_ns),
        "records_counted_min": counted, "records_written": records_n + WARM_UP_WRITES, "events_lost_max": lost,
        "rounds": rounds, "iterations": iterations,
    }))
}

/// A throwaway self-signed certificate and key for the SSL loop's server side, in `dir`.
fn self_signed(dir: &Path) -> anyhow::Result<[PathBuf; 2]> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", "1", "-subj", "/CN=traceo-bench", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("run openssl")?;
    anyhow::ensure!(out.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok([cert, key])
}

/// One timed run of the SSL loop under `mode`: ns per SSL_write + SSL_read pair and, traced,
/// the plaintext events the agent received and the ones the kernel lost.
fn ssl_once(
    agent_bin: &Path,
    python: &Path,
    mode: &str,
    cert_key: &[PathBuf; 2],
    iterations: u64,
    batches: u32,
) -> anyhow::Result<(f64, f64, f64)> {
    let lp = LoopProc::start(
        Command::new(python)
            .arg(crate::root().join("xtask/src/bench/ssl_loop.py"))
            .args(cert_key)
            .args([iterations.to_string(), batches.to_string()]),
    )?;
    let metrics_port = free_port()?;
    let mut running = mode_agent(agent_bin, mode, lp.proc.pid(), &format!("127.0.0.1:{metrics_port}"))?;
    let ns = lp.go()?;
    let (mut events, mut lost) = (0.0, 0.0);
    if let Some(a) = running.as_mut() {
        if mode == "traced" {
            // Over memory BIOs with no socket no chunk can be tied to a connection, so the
            // agent drops them all as unbound once their hold expires: the kernel side (probe,
            // copy, ring buffer) has still run in full, which is the cost measured. The counts
            // come on the agent's ticks, behind the loop on a loaded machine: read them until
            // every call is accounted for or they stop moving (at most 15 s).
            let calls = (2 * iterations * u64::from(batches)) as f64;
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut last = -1.0;
            loop {
                std::thread::sleep(Duration::from_millis(1500));
                let text = scrape(metrics_port);
                events = metric_sum(&text, "traceo_tls_unbound_events", "")
                    + metric_sum(&text, "traceo_tls_plaintext_events", "");
                lost = metric_sum(&text, "traceo_agent_kernel_drops_total", "reason=\"ring_full");
                if events + lost >= calls || events + lost == last || std::time::Instant::now() > deadline {
                    break;
                }
                last = events + lost;
            }
        }
        a.interrupt();
    }
    Ok((ns, events, lost))
}

/// Cost of the OpenSSL uprobes per SSL_write + SSL_read pair (64 B): no agent, the agent
/// running but selecting nothing, the agent tracing another process that uses the same
/// libssl (the probes are per file: this process takes the trap), and tracing it.
pub(super) fn ssl_costs(agent_bin: &Path, python: &Path, dir: &Path, s: &Settings) -> anyhow::Result<Value> {
    let (rounds, iterations, batches) = if s.quick { (1, 10_000, 3) } else { (3, 50_000, 5) };
    let cert_key = self_signed(dir)?;
    // The traced process of the "beside" arm: any process (the system's libssl is held for
    // every traced process, before it maps it), named for its selector.
    let holder_exe = dir.join("traceo-holder");
    std::fs::copy("/bin/sleep", &holder_exe).context("copy /bin/sleep")?;
    let _holder = Proc::spawn(Command::new(&holder_exe).arg("3600"))?;
    let modes = ["none", "unselected", "beside", "traced"];
    let mut samples: Vec<Vec<f64>> = vec![vec![]; modes.len()];
    let (mut events, mut lost) = (f64::INFINITY, 0.0f64);
    for round in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            let (ns, seen, dropped) = ssl_once(agent_bin, python, mode, &cert_key, iterations, batches)?;
            eprintln!("bench: SSL loop round {round} {mode}: {ns:.0} ns/pair");
            samples[i].push(ns);
            if *mode == "traced" {
                events = events.min(seen + dropped);
                lost = lost.max(dropped);
            }
        }
    }
    // Each timed pair is two probed calls, each an event (received or lost): fewer means the
    // probes were not hit (e.g. a Python with OpenSSL linked in statically) and the figures
    // measure nothing.
    let calls = (2 * iterations * u64::from(batches)) as f64;
    anyhow::ensure!(events >= calls, "the traced SSL loop made {calls} SSL calls but only {events} events came");
    let m: Vec<f64> = samples.into_iter().map(median).collect();
    Ok(json!({
        "ns_per_pair": {"none": m[0], "unselected": m[1], "beside": m[2], "traced": m[3]},
        "added_ns": {"unselected": m[1] - m[0], "beside": m[2] - m[0], "traced": m[3] - m[0]},
        "traced_events_min": events, "traced_events_lost_max": lost,
        "rounds": rounds, "iterations": iterations, "batches": batches,
    }))
}
