//! `traceo-agent check --service ...` lists the protocols each selected process spoke while
//! it watched (`--observe`): a Python process calling an HTTP server and Redis in a loop, and
//! the HTTP server it calls.

mod support;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use support::*;

/// The report line about `pid`'s protocols.
fn protocols_of(report: &str, pid: u32) -> &str {
    let tag = format!(" pid {pid} ");
    report
        .lines()
        .find(|l| l.contains("protocols of") && l.contains(&tag))
        .unwrap_or_else(|| panic!("no protocols line for pid {pid}:\n{report}"))
}

#[test]
fn check_lists_the_protocols_each_process_speaks() {
    if !(require_root("check_protocols") && require_python("check_protocols")) {
        return;
    }
    let redis_ok = Command::new(python()).args(["-c", "import redis"]).output().is_ok_and(|o| o.status.success());
    if !(redis_ok && Path::new("/usr/bin/redis-server").exists()) {
        let why = "check_protocols needs redis-server and redis-py: run `cargo xtask setup`";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = temp_dir("check");
    let (http_port, redis_port) = (free_port(), free_port());
    let web = http_server(&dir, http_port);
    let _redis = Proc::spawn(
        Command::new("/usr/bin/redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null()),
    );
    wait_for_port(redis_port);
    let mixed = Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/http_redis_client.py"))
            .args([http_port.to_string(), redis_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );

    let out = Command::new(AGENT)
        .args(["check", "--observe", "3"])
        .args(["--service", &format!("mixed=pid:{}", mixed.pid())])
        .args(["--service", &format!("web=pid:{}", web.pid())])
        .output()
        .expect("run check");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));

    let line = protocols_of(&report, mixed.pid());
    assert!(line.contains("mixed") && line.ends_with(": http, redis"), "{line}");
    let line = protocols_of(&report, web.pid());
    assert!(line.contains("web") && line.ends_with(": http"), "the server only spoke HTTP: {line}");

    // Without --observe nothing is watched.
    let out = Command::new(AGENT)
        .args(["check", "--observe", "0", "--service", &format!("mixed=pid:{}", mixed.pid())])
        .output()
        .expect("run check");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("protocols of"));
}
