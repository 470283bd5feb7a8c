//! Overload: the kernel's ring buffer overflows and events are lost. The agent must never
//! pair a request with another's response afterwards: every exchange it reports either
//! matches what the client asked for (status and body size chosen at random per request) or
//! says it is incomplete (`after_loss`, `no_response`). Needs root; see
//! support::require_root.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[test]
fn exchanges_after_kernel_losses_are_flagged_never_mispaired() {
    if !require_root("loss") || !require_python("loss") {
        return;
    }
    let dir = temp_dir("loss");
    let port = free_port();
    let _server = uvicorn(port, 1);
    let log = dir.join("exchanges.jsonl");
    let metrics_port = free_port();
    let (service, log_arg, metrics) =
        (format!("api=port:{port}"), log.display().to_string(), format!("127.0.0.1:{metrics_port}"));
    // The smallest ring buffer, so that pausing the agent overflows it.
    let mut agent =
        Agent::run(&["--service", &service, "--log", &log_arg, "--metrics-addr", &metrics, "--ring-buffer-mib", "1"]);
    let mut load = Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/sized_load.py"))
            .args([&port.to_string(), "8", "150"])
            .stdout(Stdio::piped()),
    );
    // Stop the agent's reads for a while, a few times: the kernel then has nowhere to put
    // events and drops them, mid-message and mid-connection.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(250));
        unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    }
    let status = load.child.wait().expect("wait for the load");
    assert!(status.success(), "the load client failed (a server answer did not match the request)");
    std::thread::sleep(Duration::from_secs(3));
    let text = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    agent.stop();

    let lost = metric_sum(&text, "traceo_agent_kernel_drops_total{reason=\"ring_full_data\"}");
    assert!(lost > 0.0, "the test provoked no loss; it proves nothing:\n{text}");
    let resyncs = metric_sum(&text, "traceo_agent_loss_resyncs_total");
    assert!(resyncs > 0.0, "losses but no connection resynchronised:\n{text}");

    let xs = json_lines(&log);
    let (mut checked, mut flagged, mut wrong) = (0, 0, Vec::new());
    for x in xs.iter().filter(|x| x["direction"] == "server") {
        let flags: Vec<&str> =
            x["flags"].as_array().map(|f| f.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
        if flags.contains(&"after_loss") || flags.contains(&"no_response") {
            flagged += 1;
            continue;
        }
        let target = x["target"].as_str().unwrap_or_default();
        let Some(rest) = target.strip_prefix("/sized/") else { continue };
        let mut parts = rest.split('/');
        let number = |p: Option<&str>| p.and_then(|v| v.parse::<u64>().ok());
        let (status, size) = (number(parts.next()), number(parts.next()));
        checked += 1;
        if x["status"].as_u64() != status || x["response_bytes"].as_u64() != size {
            wrong.push(x.to_string());
        }
    }
    println!("lost {lost} events, {resyncs} resyncs; {checked} exchanges checked, {flagged} flagged");
    assert!(
        wrong.is_empty(),
        "{} of {checked} unflagged exchanges carry another request's answer:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(5)].join("\n")
    );
    // What follows a loss is flagged or, when the connection resynchronises past it, dropped
    // (counted in the resyncs asserted above); which of the two a run sees depends on where
    // the pauses cut the streams, so either proves the point.
    eprintln!("after the losses: {flagged} exchanges flagged, {resyncs} connections resynchronised");
    assert!(checked > 100, "too few exchanges left to check ({checked})");
}
