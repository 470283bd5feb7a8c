//! Slow per-process attach work (a CPython layout measurement, big ELF parses) never holds
//! the thread that drains the ring, and never holds the agent's end. Needs root and a C
//! compiler; see support::require_root.
//!
//! The slow process is a tiny C program named `python3`: the agent takes it for a CPython it
//! has not measured and runs it on the layout script; given arguments, it sleeps 6 s (the
//! agent gives up on it after 5 s), as a wedged or very slow interpreter would. Meanwhile another service's requests
//! keep flowing: the agent's count of data events read (incremented by the ring's thread as
//! it drains) must never stand still for long, and a SIGINT must end the agent at once.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use support::*;

const SLOW_C: &str = r#"
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1) { sleep(6); return 1; }
    for (;;) pause();
}
"#;

fn get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn data_events(metrics_port: u16) -> f64 {
    get(metrics_port, "/metrics")
        .lines()
        .filter(|l| l.starts_with("traceo_agent_events_read_total{") && l.contains("kind=\"data\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A copy of the slow program at `dir/python3` (a new file: the agent measures it anew).
fn slow_python(src: &Path, dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let exe = dir.join("python3");
    std::fs::copy(src, &exe).expect("copy the slow program");
    exe
}

#[test]
fn a_slow_attach_plan_does_not_hold_the_ring_nor_the_agents_end() {
    if !require_root("attach") || !require_python("attach") {
        return;
    }
    let dir = temp_dir("attach");
    let src = dir.join("slow.c");
    std::fs::write(&src, SLOW_C).expect("write slow.c");
    let built = dir.join("slow");
    match Command::new("cc").arg("-O1").arg("-o").arg(&built).arg(&src).status() {
        Ok(s) if s.success() => {}
        other => return eprintln!("SKIPPED: attach: no working C compiler ({other:?})"),
    }
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello").expect("index");
    let port = free_port();
    let _server = http_server(&www, port);
    let slow_glob = format!("slow=exe:{}/*/python3", dir.display());
    let (mut agent, _log, metrics_port) = start_agent(&dir, &[format!("fast=port:{port}"), slow_glob]);

    // The fast service's traffic: a request every 20 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                get(port, "/index.html");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while data_events(metrics_port) == 0.0 {
        assert!(Instant::now() < deadline, "no data events read within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A process whose plan takes 5 s, started under the traced selection.
    let _slow1 = Proc::spawn(Command::new(slow_python(&built, &dir.join("a"))).stdout(Stdio::null()));
    let started = Instant::now();
    let mut last = (Instant::now(), data_events(metrics_port));
    let mut longest_still = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
        let now = (Instant::now(), data_events(metrics_port));
        if now.1 != last.1 {
            last = now;
        }
        longest_still = longest_still.max(now.0 - last.0);
    }

    // Another one (a new file, measured anew), and Ctrl-C while its measurement runs.
    let _slow2 = Proc::spawn(Command::new(slow_python(&built, &dir.join("b"))).stdout(Stdio::null()));
    std::thread::sleep(Duration::from_millis(700));
    let asked = Instant::now();
    let log = agent.stop();
    let took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    client.join().expect("client thread");

    let log = log.join("\n");
    eprintln!("longest time the ring's data count stood still: {longest_still:?}; the agent ended in {took:?}");
    // The end is the loop's exit, then the probes' detach, which waits on the kernel (RCU
    // grace periods: seconds on a loaded VM, whatever this change does): the loop's part is
    // the time to the end less the detach's, as the agent logs it.
    let detach = log
        .lines()
        .find_map(|l| l.split(" programs in ").nth(1)?.strip_suffix(" s")?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no detach time in the agent's log:\n{log}"));
    let loop_end = took.as_secs_f64() - detach;
    eprintln!("the loop ended {loop_end:.2} s after SIGINT, then the detach took {detach:.1} s");
    assert!(
        log.contains("could not measure itself") || log.contains("did not answer"),
        "the slow program was never measured (the test proves nothing); the agent's log:\n{log}"
    );
    assert!(
        longest_still < Duration::from_millis(2000),
        "the ring's thread stood still for {longest_still:?} while another process's plan was made \
         (requests every 20 ms); the agent's log:\n{log}"
    );
    assert!(loop_end < 2.0, "the loop took {loop_end:.2} s to end during a measurement; its log:\n{log}");
    assert!(took < Duration::from_secs(10), "the agent took {took:?} to end; its log:\n{log}");
}
