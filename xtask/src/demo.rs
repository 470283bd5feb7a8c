//! `cargo xtask demo`: the agent's main job on a bundled default. Starts the test app (a small
//! uvicorn service), traces it with the agent, sends a mix of requests, then shows the HTTP
//! exchanges the agent rebuilt and the metric lines Prometheus would scrape. Everything it
//! starts is stopped at the end or on Ctrl-C.

use std::{
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::root;

/// Process groups to kill on Ctrl-C.
static GROUPS: [AtomicI32; 2] = [AtomicI32::new(0), AtomicI32::new(0)];

/// A child in its own process group, killed with it on drop.
struct Started(Child);

impl Started {
    fn spawn(cmd: &mut Command, slot: usize) -> anyhow::Result<Started> {
        use std::os::unix::process::CommandExt;
        let child = cmd.process_group(0).spawn().with_context(|| format!("cannot start {cmd:?}"))?;
        GROUPS[slot].store(child.id() as i32, Ordering::SeqCst);
        Ok(Started(child))
    }
    fn interrupt(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

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

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for(what: &str, ok: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        if Instant::now() > deadline {
            bail!("{what} did not come up within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn curl(args: &[&str]) -> String {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn run(agent: &Path, python: &Path) -> anyhow::Result<()> {
    // SAFETY: installing a handler that only makes async-signal-safe calls.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };
    let dir = std::env::temp_dir().join(format!("traceo-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (app_port, metrics_port) = (free_port()?, free_port()?);
    let exchanges = dir.join("exchanges.jsonl");

    println!("== starting the demo service (uvicorn, tests/apps/echo_app.py) on 127.0.0.1:{app_port}");
    let _app = Started::spawn(
        Command::new(python)
            .args(["-m", "uvicorn", "echo_app:app", "--host", "127.0.0.1", "--port", &app_port.to_string()])
            .arg("--no-access-log")
            .current_dir(root().join("tests/apps"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        0,
    )?;
    wait_for("the demo service", || TcpStream::connect(("127.0.0.1", app_port)).is_ok())?;

    println!("== starting traceo-agent run --service demo=port:{app_port} (metrics on 127.0.0.1:{metrics_port})");
    let mut agent_cmd = Command::new(agent);
    agent_cmd
        .args(["run", "--service", &format!("demo=port:{app_port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .arg("--log")
        .arg(&exchanges)
        .stdout(Stdio::null());
    crate::setup::as_root(&mut agent_cmd);
    let mut agent_proc = Started::spawn(&mut agent_cmd, 1)?;
    wait_for("the agent", || curl(&[&format!("http://127.0.0.1:{metrics_port}/ready")]).starts_with("ready"))?;

    println!("== sending requests: 5 x GET /hello, 3 x GET /slow, GET /status/404, GET /status/500, POST /upload");
    let base = format!("http://127.0.0.1:{app_port}");
    for _ in 0..5 {
        curl(&[&format!("{base}/hello")]);
    }
    for _ in 0..3 {
        curl(&[&format!("{base}/slow")]);
    }
    curl(&[&format!("{base}/status/404")]);
    curl(&[&format!("{base}/status/500")]);
    curl(&["--data-binary", "a,b,c\n1,2,3\n", &format!("{base}/upload")]);
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    agent_proc.interrupt();

    println!("\n== HTTP exchanges the agent rebuilt from the socket syscalls ({})", exchanges.display());
    println!(
        "{:<8} {:<8} {:<7} {:<14} {:>6} {:>10} {:>9}  peer",
        "service", "side", "method", "route", "status", "ms", "resp B"
    );
    let text = std::fs::read_to_string(&exchanges).unwrap_or_default();
    for line in text.lines() {
        let Ok(x) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let s = |k: &str| x[k].as_str().map(str::to_owned).unwrap_or_else(|| x[k].to_string());
        println!(
            "{:<8} {:<8} {:<7} {:<14} {:>6} {:>10.3} {:>9}  {}",
            s("service"),
            s("direction"),
            s("method"),
            s("route"),
            s("status"),
            x["duration_ms"].as_f64().unwrap_or(f64::NAN),
            s("response_bytes"),
            s("peer")
        );
    }
    if let Some(first) = text.lines().next() {
        println!("\none exchange as JSON:\n{first}");
    }
    println!("\n== key metric lines (Prometheus scrapes these from /metrics)");
    for line in metrics.lines().filter(|l| {
        l.starts_with("traceo_http_requests_total")
            || (l.starts_with("traceo_http_server_request_duration_seconds_count"))
            || l.starts_with("traceo_agent_events_read_total")
            || l.starts_with("traceo_agent_kernel_drops_total{reason=\"ring_full_data\"}")
    }) {
        println!("{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    if text.lines().count() == 0 {
        bail!("the agent printed no exchange: see its log above");
    }
    Ok(())
}
