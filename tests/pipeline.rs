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
