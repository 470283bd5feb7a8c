//! deploy/: every file checked by the tool that consumes it. The systemd unit by
//! `systemd-analyze verify`, the Kubernetes manifest against the Kubernetes schema
//! (kubernetes-validate, from PyPI), the alerting rules by `promtool check rules` and
//! `promtool test rules`, and every PromQL query of the Grafana dashboard run against a real
//! Prometheus scraping a real agent that traces the Traceo stack (engine in a pod-shaped
//! cgroup, so the container panel has data too).

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::cgroup::{CONTAINER_ID, PodCgroup, cgroup2_root};
use support::prometheus::{Prometheus, require_prometheus};
use support::*;

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: {test}: {tool} is not installed (cargo xtask test installs it)");
    }
    ok
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze", "systemd_unit") {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at this build's agent.
    let unit = std::fs::read_to_string(deploy("systemd/traceo-agent.service")).expect("read the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/traceo-agent run --config /etc/traceo/traceo.toml"));
    let dir = temp_dir("systemd");
    let path = dir.join("traceo-agent.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/traceo-agent", AGENT)).expect("write the unit");
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are warnings with exit code 0: none may name our unit.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("traceo-agent.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {}\n{stderr}", out.status);
    // The example configuration the unit reads is one the agent accepts.
    valid_config(&deploy("systemd/traceo.toml"));
}

/// The agent's own config loader accepts `path`, and its selectors parse.
fn valid_config(path: &Path) -> traceo_agent::cli::ConfigFile {
    let config = traceo_agent::cli::ConfigFile::load(path).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!config.service.is_empty(), "no services in {}", path.display());
    for s in &config.service {
        s.parse::<traceo_agent::selector::ServiceSpec>().unwrap_or_else(|e| panic!("service {s:?}: {e:#}"));
    }
    config
}

/// The manifest's documents as JSON (PyYAML comes with kubernetes-validate).
fn manifest() -> Vec<Value> {
    let out = Command::new(python())
        .args(["-c", "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(deploy("kubernetes/daemonset.yaml"))
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("manifest JSON")
}

#[test]
fn kubernetes_daemonset_validates_against_the_schema() {
    let validator = python().with_file_name("kubernetes-validate");
    if !validator.exists() {
        eprintln!("SKIPPED: kubernetes_manifest: {} missing (cargo xtask test installs it)", validator.display());
        return;
    }
    let out = Command::new(&validator)
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(deploy("kubernetes/daemonset.yaml"))
        .output()
        .expect("kubernetes-validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert!(text.contains("passed for resource daemonset/traceo-agent"), "{text}");
    // What the agent needs, beyond what the schema can say.
    let docs = manifest();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    let mounts: Vec<&str> =
        c["volumeMounts"].as_array().unwrap().iter().filter_map(|m| m["mountPath"].as_str()).collect();
    for needed in ["/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/bpf", "/sys/kernel/btf"] {
        assert!(mounts.contains(&needed), "{needed} not mounted: {mounts:?}");
    }
    // The ConfigMap's configuration listens where the port says and is valid for the agent.
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("a ConfigMap");
    let toml = cm["data"]["traceo.toml"].as_str().expect("traceo.toml");
    let dir = temp_dir("k8s-config");
    std::fs::write(dir.join("traceo.toml"), toml).unwrap();
    let config = valid_config(&dir.join("traceo.toml"));
    assert_eq!(config.metrics_addr.as_deref(), Some("0.0.0.0:9464"));
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    if !have("promtool", "alert_rules") {
        return;
    }
    let dir = deploy("prometheus");
    let check =
        Command::new("promtool").args(["check", "rules", "traceo-alerts.yml"]).current_dir(&dir).output().unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test =
        Command::new("promtool").args(["test", "rules", "traceo-alerts.test.yml"]).current_dir(&dir).output().unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Each alert is exercised by the unit tests.
    let rules = std::fs::read_to_string(dir.join("traceo-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("traceo-alerts.test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}")), "{alert} has no promtool test");
    }
}

/// Every PromQL expression of the dashboard's panels, with Grafana's variables as a user's
/// first view has them (all services, the rate window Grafana picks for a 1 s scrape).
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("dashboard JSON");
    let mut out = vec![];
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr.replace("$__rate_interval", "1m").replace("$service", ".*");
            out.push((format!("{} / {}", p["title"], t["refId"]), expr));
        }
    }
    out
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_agent() {
    if !require_root("dashboard") || !require_python("dashboard") || !require_prometheus("dashboard") {
        return;
    }
    let queries = dashboard_queries(&deploy("grafana/traceo-dashboard.json"));
    assert!(queries.len() >= 10, "{queries:?}");
    let dir = temp_dir("dashboard");
    let stack = Stack::start();
    // The engine in a pod-shaped cgroup: the containers panel has a row.
    let _cgroup = cgroup2_root().map(|root| PodCgroup::create(&root, stack.engine.pid()));
    let metrics_port = free_port();
    let mut agent = Agent::run(&[
        "--service",
        &format!("engine=port:{}", stack.engine_port),
        "--service",
        &format!("mcp=port:{}", stack.mcp_port),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--log",
        dir.join("exchanges.jsonl").to_str().unwrap(),
    ]);
    let prom = Prometheus::scraping(&dir, &format!("127.0.0.1:{metrics_port}"));
    // Rates need two scrapes that see a counter change, and the histogram quantiles need
    // every rate non-zero: drive rounds a few seconds apart (Prometheus scrapes each second)
    // until every query answers, at most eight rounds.
    let has_data = |r: &[Value]| r.iter().any(|s| s["value"][1].as_str().is_some_and(|v| v != "NaN"));
    let mut empty = vec![];
    for _ in 0..8 {
        stack.drive(&["3"]);
        std::thread::sleep(Duration::from_secs(3));
        empty =
            queries.iter().filter(|(_, expr)| !has_data(&prom.query(expr))).map(|(n, e)| format!("{n}: {e}")).collect();
        if empty.is_empty() {
            break;
        }
    }
    if _cgroup.is_some() {
        let rows = prom.query("traceo_container_info{service=\"engine\"}");
        assert!(rows.iter().any(|r| r["metric"]["container_id"] == CONTAINER_ID), "{rows:?}");
    }
    agent.stop();
    drop(stack);
    assert!(empty.is_empty(), "dashboard queries without data:\n{}", empty.join("\n"));
}
