//! `cargo xtask soak`: the agent for minutes under mixed load, churn and a collector that
//! goes away and comes back (as root). Checks that its memory stays flat and that every
//! request is either seen or accounted for in a loss counter; writes `target/soak/soak.json`
//! and fails on a breach.
//!
//! Traced: uvicorn (`tests/apps/echo_app.py`), gunicorn with `--max-requests 50` (workers
//! recycled all the time; `tests/apps/soak_wsgi.py`) and a process forking short-lived
//! children in a loop that also calls uvicorn (`tests/apps/churn.py`). Load
//! (`tests/apps/soak_load.py`, not traced): valid requests with client-chosen statuses and
//! sizes, garbage bytes and half-open connections. The agent exports spans to a rotel
//! collector that is stopped at 35% of the run and started again at 55%.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::procs::{self, Proc, free_port, metric_sum, scrape, wait_for_port};
use crate::{root, run};

pub struct Settings {
    pub minutes: f64,
    /// The agent's `--ring-buffer-mib` (its default when `None`).
    pub ring_buffer_mib: Option<u32>,
}

/// Seconds between samples.
const SAMPLE_S: u64 = 5;
/// Load threads per server.
const THREADS: u32 = 2;
/// RSS (and open fds) of the last quarter's mean may exceed the second quarter's by this much.
const RSS_GROWTH: f64 = 0.15;
/// The agent must stop within this many seconds of SIGINT.
const STOP_S: f64 = 10.0;

/// gunicorn, on top of the test environment.
pub fn dependencies(python: &Path) -> anyhow::Result<()> {
    let present = Command::new(python).args(["-c", "import gunicorn"]).status().is_ok_and(|s| s.success());
    if !present {
        run(Command::new(python).args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "gunicorn==27.*",
        ]))?;
    }
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize)]
struct Sample {
    t_s: f64,
    rss_mib: f64,
    /// Open file descriptors of the agent (probe links, maps, sockets).
    fds: usize,
    exchanges: f64,
    kernel_drops: f64,
    spans_exported: f64,
    spans_dropped: f64,
    collector: &'static str,
    /// How long /metrics took to answer; `None`: no answer within 5 s.
    scrape_ms: Option<f64>,
}

/// The figures read from the agent's metrics.
fn sample(agent_pid: u32, metrics_port: u16, t_s: f64, collector: &'static str) -> (Sample, String) {
    let asked = Instant::now();
    let text = scrape(metrics_port);
    // (+ 0.0: an empty sum is -0.0)
    let metric_sum = |name: &str, filter: &str| metric_sum(&text, name, filter) + 0.0;
    let answered = text.contains("traceo_agent_build_info");
    let s = Sample {
        t_s,
        rss_mib: procs::status_bytes(agent_pid, "VmRSS:") as f64 / (1 << 20) as f64,
        fds: fs::read_dir(format!("/proc/{agent_pid}/fd")).map_or(0, |d| d.count()),
        exchanges: metric_sum("traceo_http_requests_total", ""),
        kernel_drops: metric_sum("traceo_agent_kernel_drops_total", "ring_full"),
        spans_exported: metric_sum("traceo_agent_spans_exported_total", ""),
        spans_dropped: metric_sum("traceo_agent_spans_dropped_total", ""),
        collector,
        scrape_ms: answered.then(|| asked.elapsed().as_secs_f64() * 1000.0),
    };
    (s, text)
}

fn json_line_of(mut p: Proc, what: &str) -> anyhow::Result<Value> {
    let mut out = String::new();
    p.0.stdout.take().context("piped")?.read_to_string(&mut out)?;
    let _ = p.0.wait();
    let line = out.lines().last().with_context(|| format!("{what} printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed {line}"))
}

/// What the agent's JSON lines say, per (service, direction): `/sized/` exchanges whose
/// status is the one asked for, ones with another status, and ones without a response.
#[derive(Default, Debug, serde::Serialize)]
struct Seen {
    right: u64,
    other_status: u64,
    other_status_unflagged: u64,
    no_response: u64,
    lines: u64,
}

fn read_exchanges(path: &Path) -> anyhow::Result<BTreeMap<String, Seen>> {
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        let key = format!("{} {}", v["service"].as_str().unwrap_or("?"), v["direction"].as_str().unwrap_or("?"));
        let s = seen.entry(key).or_default();
        s.lines += 1;
        let target = v["target"].as_str().unwrap_or("");
        let Some(asked) = target.strip_prefix("/sized/").and_then(|r| r.split('/').next()?.parse::<u64>().ok()) else {
            continue;
        };
        let flags: Vec<&str> =
            v["flags"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        match v["status"].as_u64() {
            Some(status) if status == asked => s.right += 1,
            Some(_) => {
                s.other_status += 1;
                if !flags.contains(&"after_loss") {
                    s.other_status_unflagged += 1;
                }
            }
            None => s.no_response += 1,
        }
    }
    Ok(seen)
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 }
}

pub fn run_soak(agent: &Path, python: &Path, settings: &Settings) -> anyhow::Result<()> {
    procs::kill_children_on_interrupt();
    let seconds = (settings.minutes * 60.0).max(30.0);
    let dir = root().join("target/soak");
    fs::create_dir_all(&dir)?;
    let apps = root().join("tests/apps");
    let log_path = dir.join("exchanges.jsonl");
    let _ = fs::remove_file(&log_path);
    let _ = fs::remove_file(dir.join("rotel.log"));
    let (up, gp, mp, op, oh) = (free_port()?, free_port()?, free_port()?, free_port()?, free_port()?);

    let _uvicorn = procs::uvicorn(python, &apps, up)?;
    let _gunicorn = Proc::spawn(
        Command::new(python)
            .args(["-m", "gunicorn", "-w", "2", "--threads", "4", "--max-requests", "50"])
            .args(["--max-requests-jitter", "0", "--log-level", "warning", "-b", &format!("127.0.0.1:{gp}")])
            .arg("soak_wsgi:app")
            .current_dir(&apps)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("gunicorn.log"))?),
    )?;
    wait_for_port(gp)?;
    let mut collector = Some(procs::rotel(python, &dir, op, oh)?);
    let mut churn = Proc::spawn(
        Command::new(python)
            .arg(apps.join("churn.py"))
            .args([&up.to_string(), &format!("{seconds}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let log_arg = log_path.display().to_string();
    let (web, wsgi, churn_sel) =
        (format!("web=port:{up}"), format!("wsgi=port:{gp}"), format!("churn=pid:{}", churn.pid()));
    let (metrics_addr, otlp) = (format!("127.0.0.1:{mp}"), format!("http://127.0.0.1:{op}"));
    let ring = settings.ring_buffer_mib.map(|m| m.to_string());
    let mut args: Vec<&str> = vec!["run", "--service", &web, "--service", &wsgi, "--service", &churn_sel];
    args.extend(["--metrics-addr", &metrics_addr, "--otlp-endpoint", &otlp, "--log", &log_arg]);
    if let Some(ring) = &ring {
        args.extend(["--ring-buffer-mib", ring]);
    }
    let (mut agent_proc, agent_log) = procs::agent_logged(agent, &args)?;
    let agent_pid = agent_proc.pid();
    eprintln!(
        "xtask: soak for {seconds:.0} s: uvicorn :{up}, gunicorn :{gp} (--max-requests 50), churn pid {}",
        churn.pid()
    );

    let load = Proc::spawn(
        Command::new(python)
            .arg(apps.join("soak_load.py"))
            .args([&up.to_string(), &gp.to_string(), &format!("{seconds}"), &THREADS.to_string()])
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.join("load.log"))?),
    )?;
    writeln!(churn.0.stdin.take().context("piped")?, "go")?;

    let started = Instant::now();
    let (down_at, up_at) = (seconds * 0.35, seconds * 0.55);
    let mut samples: Vec<Sample> = Vec::new();
    let mut exported_when_back: Option<f64> = None;
    println!(
        "{:>6} {:>9} {:>6} {:>10} {:>8} {:>10} {:>9} {:>10}  collector",
        "t (s)", "RSS MiB", "fds", "exchanges", "k.drops", "spans out", "dropped", "scrape ms"
    );
    loop {
        std::thread::sleep(Duration::from_secs(SAMPLE_S));
        let t = started.elapsed().as_secs_f64();
        if t >= down_at && t < up_at && collector.is_some() {
            collector = None;
            eprintln!("xtask: collector stopped at {t:.0} s");
        }
        if t >= up_at && collector.is_none() {
            collector = Some(procs::rotel(python, &dir, op, oh)?);
            eprintln!("xtask: collector back at {t:.0} s");
        }
        let state = if collector.is_some() { "up" } else { "down" };
        let (s, _) = sample(agent_pid, mp, t, state);
        if state == "up" && t >= up_at && exported_when_back.is_none() && s.scrape_ms.is_some() {
            exported_when_back = Some(s.spans_exported);
        }
        let scrape = s.scrape_ms.map_or("no answer".to_string(), |ms| format!("{ms:.0}"));
        println!(
            "{:>6.0} {:>9.1} {:>6} {:>10.0} {:>8.0} {:>10.0} {:>9.0} {:>10}  {}",
            s.t_s,
            s.rss_mib,
            s.fds,
            s.exchanges,
            s.kernel_drops,
            s.spans_exported,
            s.spans_dropped,
            scrape,
            s.collector
        );
        samples.push(s);
        if t >= seconds + 1.0 {
            break;
        }
    }
    let load = json_line_of(load, "the load")?;
    let churn = json_line_of(churn, "the churn process")?;
    // Let the last exchanges complete (correlation hold, span batches), then read the counters.
    std::thread::sleep(Duration::from_secs(6));
    let mut final_sample = sample(agent_pid, mp, started.elapsed().as_secs_f64(), "up");
    for _ in 0..5 {
        if final_sample.0.scrape_ms.is_some() {
            break;
        }
        final_sample = sample(agent_pid, mp, started.elapsed().as_secs_f64(), "up");
    }
    let (last, metrics) = final_sample;
    if last.scrape_ms.is_none() {
        bail!("the agent's /metrics did not answer after the load: nothing to account with");
    }
    let alive = fs::metadata(format!("/proc/{agent_pid}")).is_ok();
    let stopping = Instant::now();
    agent_proc.interrupt();
    let stop_s = stopping.elapsed().as_secs_f64();
    println!("the agent took {stop_s:.1} s to stop on SIGINT");
    drop(collector);
    let seen = read_exchanges(&log_path)?;

    // Accounting: what completed at the client, what the agent reported.
    let count = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let expected = [
        ("web server", count(&load, "uvicorn.completed") + count(&churn, "requests")),
        ("wsgi server", count(&load, "gunicorn.completed")),
        ("churn client", count(&churn, "requests")),
    ];
    let losses = BTreeMap::from([
        ("kernel_drops_ring_full", metric_sum(&metrics, "traceo_agent_kernel_drops_total", "ring_full")),
        ("output_dropped_lines", metric_sum(&metrics, "traceo_agent_output_dropped_lines_total", "")),
        ("loss_resyncs", metric_sum(&metrics, "traceo_agent_loss_resyncs_total", "")),
        ("correlation_dropped", metric_sum(&metrics, "traceo_agent_correlation_dropped_total", "")),
    ]);
    let counted_losses: f64 = losses.values().sum();
    let mut breaches = Vec::new();
    let mut rows = Vec::new();
    println!(
        "\n{:<14} {:>9} {:>9} {:>8} {:>12} {:>12}",
        "exchanges", "expected", "seen", "missing", "other status", "no response"
    );
    for (key, want) in expected {
        let s = seen.get(key);
        let got = s.map_or(0, |s| s.right);
        let missing = want.saturating_sub(got);
        println!(
            "{:<14} {:>9} {:>9} {:>8} {:>12} {:>12}",
            key,
            want,
            got,
            missing,
            s.map_or(0, |s| s.other_status),
            s.map_or(0, |s| s.no_response)
        );
        if missing > 0 && counted_losses == 0.0 {
            breaches.push(format!("{key}: {missing} of {want} requests neither seen nor counted as lost"));
        }
        if let Some(s) = s.filter(|s| s.other_status_unflagged > 0) {
            breaches.push(format!(
                "{key}: {} exchanges with another status, not flagged after_loss",
                s.other_status_unflagged
            ));
        }
        rows.push(json!({ "exchanges": key, "expected": want, "seen": got, "missing": missing, "detail": s }));
    }
    println!("losses counted: {losses:?}");

    // Memory: flat once warm (the last quarter against the second).
    let q = samples.len() / 4;
    let (q2, q4) = (
        mean(&samples.iter().skip(q).take(q).map(|s| s.rss_mib).collect::<Vec<_>>()),
        mean(&samples.iter().skip(samples.len() - q).map(|s| s.rss_mib).collect::<Vec<_>>()),
    );
    let peak = samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let fds_of = |xs: &mut dyn Iterator<Item = &Sample>| mean(&xs.map(|s| s.fds as f64).collect::<Vec<_>>());
    let (fd2, fd4) = (fds_of(&mut samples.iter().skip(q).take(q)), fds_of(&mut samples.iter().skip(samples.len() - q)));
    println!("open fds: second quarter mean {fd2:.0}, last quarter mean {fd4:.0}");
    if q > 0 && fd4 > fd2 * (1.0 + RSS_GROWTH) && fd4 - fd2 > 50.0 {
        breaches.push(format!(
            "open fds grew: last quarter {fd4:.0} vs second quarter {fd2:.0} (probe links of exited processes?)"
        ));
    }
    if stop_s > STOP_S {
        breaches.push(format!("the agent took {stop_s:.0} s to stop on SIGINT (> {STOP_S} s)"));
    }
    println!("RSS MiB: second quarter mean {q2:.1}, last quarter mean {q4:.1}, peak {peak:.1}");
    if q == 0 {
        breaches.push("too few samples to judge memory (run longer)".to_string());
    } else if q4 > q2 * (1.0 + RSS_GROWTH) {
        breaches.push(format!(
            "RSS grew: last quarter {q4:.1} MiB vs second quarter {q2:.1} MiB (> {}%)",
            RSS_GROWTH * 100.0
        ));
    }
    // The collector: exports failed while it was away (counted) and resumed once it was back.
    let dropped_export = metric_sum(&metrics, "traceo_agent_spans_dropped_total", "export_failed");
    let resumed = exported_when_back.is_some_and(|at| last.spans_exported > at);
    println!(
        "spans: exported {:.0}, dropped {:.0} (export_failed {dropped_export:.0}); exports resumed after the collector came back: {resumed}",
        last.spans_exported, last.spans_dropped
    );
    if !resumed {
        breaches.push("span export did not resume after the collector came back".to_string());
    }
    if !alive {
        breaches.push("the agent died during the soak".to_string());
    }
    let report = json!({
        "seconds": seconds,
        "load": load,
        "churn": churn,
        "accounting": rows,
        "losses": losses,
        "rss_mib": { "second_quarter_mean": q2, "last_quarter_mean": q4, "peak": peak },
        "fds": { "first": samples.first().map(|s| s.fds), "last": samples.last().map(|s| s.fds) },
        "stop_seconds": stop_s,
        "spans": { "exported": last.spans_exported, "dropped": last.spans_dropped, "dropped_export_failed": dropped_export, "resumed": resumed },
        "parse_errors": metric_sum(&metrics, "traceo_agent_parse_errors_total", ""),
        "unpaired_messages": metric_sum(&metrics, "traceo_agent_unpaired_messages_total", ""),
        "non_http_connections": metric_sum(&metrics, "traceo_agent_non_http_connections_total", ""),
        "scrapes_unanswered": samples.iter().filter(|s| s.scrape_ms.is_none()).count(),
        "samples": samples,
        "breaches": breaches,
    });
    let path = dir.join("soak.json");
    fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    let agent_lines = agent_log.lock().map(|l| l.join("\n")).unwrap_or_default();
    fs::write(dir.join("agent.log"), &agent_lines)?;
    eprintln!("xtask: wrote {} and the agent's log, agent.log", path.display());
    if !breaches.is_empty() {
        bail!("soak breaches:\n  {}", breaches.join("\n  "));
    }
    Ok(())
}
