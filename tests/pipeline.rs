//! The agent's own pipeline under adversity: what it costs when idle, scrapers that do not
//! read, scanners that invent paths. They need root; see support::require_root.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = stat.rsplit_once(')').expect("comm").1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Field 3 (state) is fields[0]: utime (14) and stime (15) are fields[11] and [12].
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Voluntary context switches of all the process's threads: how often it woke up.
fn wakeups(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|s| {
            s.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")).and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn an_idle_agent_costs_almost_nothing() {
    if !require_root("idle_agent") || !require_python("idle_agent") {
        return;
    }
    let dir = temp_dir("idle-agent");
    let port = free_port();
    let _api = uvicorn(port, 1);
    let (mut agent, _log, _metrics) = start_agent(&dir, &[format!("x=port:{port}")]);
    std::thread::sleep(Duration::from_secs(3));
    let pid = agent.pid();
    let (t0, w0, start) = (cpu_ticks(pid), wakeups(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(20));
    let (t1, w1, secs) = (cpu_ticks(pid), wakeups(pid), start.elapsed().as_secs_f64());
    agent.stop();
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = (t1 - t0) as f64 / hz / secs;
    let per_sec = (w1 - w0) as f64 / secs;
    eprintln!("idle agent: {:.2}% of a core, {per_sec:.0} wake-ups/s", share * 100.0);
    // Other processes' execs on a busy host wake it too (it must see them): a margin.
    assert!(per_sec < 60.0, "{per_sec:.0} wake-ups/s while idle");
    assert!(share < 0.01, "{:.2}% of a core while idle", share * 100.0);
}

/// The lines of `page` that are samples of `family` (its name, then `{` or ` `).
fn samples<'a>(page: &'a str, family: &str) -> Vec<&'a str> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(family).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
        .collect()
}

/// Distinct label sets of a family (histograms: of their `_count` samples).
fn label_sets(page: &str, family: &str) -> usize {
    samples(page, family).len()
}

/// `NAME VALUE` from a Prometheus text page (0 when absent).
fn value(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_path_scanner_keeps_series_and_the_metrics_page_bounded() {
    if !require_root("scanner") || !require_python("scanner") {
        return;
    }
    let dir = temp_dir("scanner");
    // One app that answers 404 to unknown paths, one that answers 200 to everything.
    let (p404, p200) = (free_port(), free_port());
    let _api = uvicorn(p404, 1);
    let _spa = uvicorn_app("catchall_app:app", p200, 1, &[]);
    let (mut agent, _log, metrics_port) = start_agent(&dir, &[format!("api=port:{p404}"), format!("spa=port:{p200}")]);

    const N: usize = 3000;
    let scan = |port: u16, seed: u32, extra: &[&str]| {
        let out = std::process::Command::new(python())
            .arg(repo().join("tests/apps/scanner.py"))
            .args(["127.0.0.1", &port.to_string(), &N.to_string(), &seed.to_string()])
            .args(extra)
            .output()
            .expect("scanner");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| scan(p404, 1, &[]));
        let b = s.spawn(|| scan(p200, 2, &["--methods"]));
        (a.join().expect("scan 404"), b.join().expect("scan 200"))
    });
    assert!(a.contains(&format!("{{404: {N}}}")), "{a}");
    assert!(b.contains(&format!("{{200: {N}}}")), "{b}");

    // Everything the scanners did is counted (metrics follow every second).
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let total = |page: &str| -> f64 {
        samples(page, "traceo_http_requests_total").iter().filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut page = curl(&["-s", &url]);
    while total(&page) < (2 * N) as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        page = curl(&["-s", &url]);
    }
    assert_eq!(total(&page), (2 * N) as f64, "every request is counted");
    // The 404 scanner's paths are one route.
    let api: Vec<&str> =
        samples(&page, "traceo_http_requests_total").into_iter().filter(|l| l.contains("service=\"api\"")).collect();
    assert_eq!(api.len(), 1, "{api:#?}");
    assert!(api[0].contains("http_route=\"{unmatched}\""), "{}", api[0]);
    // The catch-all's are capped: at most --max-series label sets (default 1,000), plus the
    // overflow sets (one per service, method and status), and counted.
    let cap = 1000 + 2 * 6;
    for family in [
        "traceo_http_requests_total",
        "traceo_http_server_request_duration_seconds_count",
        "traceo_http_server_request_body_size_bytes_count",
        "traceo_http_server_response_body_size_bytes_count",
    ] {
        let n = label_sets(&page, family);
        assert!(n <= cap, "{family}: {n} label sets");
    }
    assert!(value(&page, "traceo_agent_metric_series_overflow_total") > 0.0, "overflow counted");
    // The page stays small: the bound the README states.
    const MAX_PAGE: usize = 12 * 1024 * 1024;
    let om = std::process::Command::new("curl")
        .args(["-s", "-H", "Accept: application/openmetrics-text;version=1.0.0", &url])
        .output()
        .expect("curl");
    eprintln!("/metrics under a scanner: {} bytes (Prometheus text), {} (OpenMetrics)", page.len(), om.stdout.len());
    assert!(page.len() <= MAX_PAGE && om.stdout.len() <= MAX_PAGE, "{} bytes", page.len().max(om.stdout.len()));
    agent.stop();
}
