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
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// The idle test measures the agent's CPU while nothing it traces moves: the other tests here
/// drive load (their execs, listens and sockets reach every agent), so they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn an_idle_agent_costs_almost_nothing() {
    if !require_root("idle_agent") || !require_python("idle_agent") {
        return;
    }
    let _alone = alone();
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
    // 1% of a core for a release build (about 0.25% measured); a debug build (what `cargo
    // test` runs) does the same work several times slower: about 0.5% alone, 1.25% once in CI.
    let limit = if cfg!(debug_assertions) { 0.025 } else { 0.01 };
    assert!(share < limit, "{:.2}% of a core while idle (limit {:.1}%)", share * 100.0, limit * 100.0);
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
    let _alone = alone();
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
        samples(page, "traceo_http_requests_total")
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
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

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Whether the process has ended (gone, or a zombie waiting for its parent).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Scrapers that ask for /metrics and never read: each connection sends its request and
/// sits, with a small receive buffer.
fn stalled_scrapers(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|_| {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let size: libc::c_int = 4096;
            // SAFETY: a valid socket and an int option of the right size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let mut s2 = &s;
            s2.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
            s
        })
        .collect()
}

#[test]
fn scrapers_that_do_not_read_never_stall_tracing_nor_the_agents_end() {
    if !require_root("stalled_scrapers") || !require_python("stalled_scrapers") {
        return;
    }
    let _alone = alone();
    let dir = temp_dir("stalled-scrapers");
    let port = free_port();
    let _spa = uvicorn_app("catchall_app:app", port, 1, &[]);
    let (mut agent, log, metrics_port) = start_agent(&dir, &[format!("spa=port:{port}")]);
    let pid = agent.pid();
    // A big page: a scanner's 1,500 routes (about 13 MiB of exposition).
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/apps/scanner.py"))
        .args(["127.0.0.1", &port.to_string(), "1500", "3"])
        .output()
        .expect("scanner");
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(1500));
    let base_rss = rss(pid);

    // 40 scrapers that never read, then traffic to trace while they sit.
    let scrapers = stalled_scrapers(metrics_port, 40);
    let started = Instant::now();
    let statuses: Vec<String> = (0..50)
        .map(|i| {
            curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/traffic?n={i}")])
        })
        .collect();
    assert!(statuses.iter().all(|s| s == "200"), "{statuses:?}");
    // Every exchange reaches the log promptly, scrapers or not.
    let wanted = |lines: &[serde_json::Value]| {
        (0..50).all(|i| lines.iter().any(|x| x["target"] == format!("/traffic?n={i}").as_str()))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !wanted(&json_lines(&log)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(wanted(&json_lines(&log)), "exchanges missing while scrapers stall, after {:?}", started.elapsed());
    // The pages the stalled scrapers hold are bounded (4 at once), not one each.
    let grown = rss(pid).saturating_sub(base_rss);
    eprintln!("RSS grew by {} MiB with 40 stalled scrapers", grown >> 20);
    assert!(grown < 96 << 20, "RSS grew by {} MiB", grown >> 20);

    // Past the deadline the held connections are cut; all of it counted.
    std::thread::sleep(Duration::from_secs(11));
    let page = curl(&["-s", &format!("http://127.0.0.1:{metrics_port}/metrics")]);
    let busy = value(&page, "traceo_agent_scrapes_cut_total{reason=\"busy\"}");
    let cut = value(&page, "traceo_agent_scrapes_cut_total{reason=\"deadline\"}");
    assert!(busy >= 36.0 && cut >= 1.0, "busy {busy}, deadline {cut}");
    drop(scrapers);

    // SIGTERM with stalled scrapers connected ends the agent within a few seconds.
    let _more = stalled_scrapers(metrics_port, 8);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t = Instant::now();
    while !ended(pid) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.elapsed() < Duration::from_secs(3), "the agent took {:?} to end after SIGTERM", t.elapsed());
    agent.stop();
}
