//! Two hosts, one trace (root): the engine in one network namespace, the MCP server in
//! another, joined by a veth pair the test makes; one agent per side, meeting in a real
//! redis-server (`--shared-state`). 20 concurrent uploads give 20 traces from the tool call
//! through the engine's upload to the webhook's far end, each with the right parents and none
//! crossed. With Redis stopped the agents go on tracing host-locally and count the misses and
//! errors; started again, the cross-host traces resume.
//!
//! Each side calls the other through NAT, as through a Kubernetes Service: a virtual address
//! translated to the real one (DNAT) and the caller's address replaced (SNAT), so the two
//! agents see different addresses and ports for one connection and meet by the TCP sequence
//! numbers they read in the kernel.

mod support;

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// Two network namespaces joined by a veth pair (10.77.N.1 and 10.77.N.2), deleted when dropped.
struct TwoHosts {
    ns: [String; 2],
    ip: [String; 2],
    /// Each host's second address, the one its outbound calls are translated to (SNAT).
    alt: [String; 2],
    /// The virtual ("Service") address of each host, port 80, translated to a real port.
    vip: [String; 2],
    dev: [String; 2],
}

impl TwoHosts {
    fn create() -> TwoHosts {
        let id = std::process::id();
        let ns = [format!("traceo-e{id}"), format!("traceo-m{id}")];
        let net = id % 200 + 20;
        let ip = [format!("10.77.{net}.1"), format!("10.77.{net}.2")];
        let veth = [format!("tve{}", id % 100_000), format!("tvm{}", id % 100_000)];
        for n in &ns {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
        let alt = [format!("10.77.{net}.3"), format!("10.77.{net}.4")];
        let vip = [format!("10.96.{net}.10"), format!("10.96.{net}.11")];
        let hosts = TwoHosts { ns, ip, alt, vip, dev: veth.clone() };
        let run = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().expect("ip").success();
            assert!(ok, "ip {args:?} failed");
        };
        for n in &hosts.ns {
            run(&["netns", "add", n]);
            run(&["-n", n, "link", "set", "lo", "up"]);
        }
        run(&["link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1]]);
        for ((dev, ns), ip) in veth.iter().zip(&hosts.ns).zip(&hosts.ip) {
            run(&["link", "set", dev, "netns", ns]);
            run(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev]);
            run(&["-n", ns, "link", "set", dev, "up"]);
        }
        for h in 0..2 {
            let (ns, dev) = (&hosts.ns[h], &hosts.dev[h]);
            run(&["-n", ns, "addr", "add", &format!("{}/24", hosts.alt[h]), "dev", dev]);
            run(&["-n", ns, "route", "add", &format!("{}/32", hosts.vip[1 - h]), "dev", dev]);
        }
        hosts
    }

    /// Host `from` reaches `to_port` on the other host as `vip:80` (DNAT), its calls leaving
    /// from its second address (SNAT), as a pod calling a Service through kube-proxy.
    fn service(&self, from: usize, to_port: u16) -> String {
        let (to_ip, vip) = (&self.ip[1 - from], &self.vip[1 - from]);
        let rules = format!(
            "table ip traceo_nat {{\n\
             chain out {{ type nat hook output priority -100; ip daddr {vip} tcp dport 80 dnat to {to_ip}:{to_port}; }}\n\
             chain post {{ type nat hook postrouting priority 100; ip daddr {to_ip} tcp dport {to_port} snat to {}; }}\n}}\n",
            self.alt[from]
        );
        let mut nft = self.exec(from, &["nft", "-f", "-"]).stdin(Stdio::piped()).spawn().expect("nft");
        use std::io::Write;
        nft.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules in {}: {rules}", self.ns[from]);
        format!("http://{vip}:80")
    }

    fn exec(&self, host: usize, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[host]]).args(args);
        c
    }

    fn wait_for(&self, host: usize, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
        while !self.exec(host, &["bash", "-c", &probe]).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            assert!(Instant::now() < deadline, "nothing listens on port {port} in {}", self.ns[host]);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

const ENGINE: usize = 0;
const MCP: usize = 1;

fn redis_server(port: u16) -> Proc {
    let p = Proc::spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    p
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn drive(hosts: &TwoHosts, mcp_port: u16, n: usize) -> Vec<String> {
    let py = python();
    let client = repo().join("tests/apps/traceo_stack/mcp_client.py");
    let url = format!("http://127.0.0.1:{mcp_port}/mcp");
    let out = hosts
        .exec(MCP, &[py.to_str().unwrap(), client.to_str().unwrap(), &url, &n.to_string()])
        .output()
        .expect("run the MCP client");
    assert!(out.status.success(), "MCP client failed: {}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("client JSON")).collect();
    assert!(results.iter().all(|r| r["source"] == "webhook"), "every webhook came back: {results:?}");
    let jobs: Vec<String> = results.iter().filter_map(|r| Some(r["job_id"].as_str()?.to_owned())).collect();
    assert_eq!(jobs.len(), n, "{results:?}");
    jobs
}

/// The five spans of one job across the two agents' lines.
struct Job<'a> {
    tool: Option<&'a Value>,
    call: &'a Value,
    upload: &'a Value,
    hook_out: &'a Value,
    hook_in: &'a Value,
}

fn job<'a>(job: &str, engine: &'a [Value], mcp: &'a [Value]) -> Job<'a> {
    let one = |xs: &'a [Value], service: &str, direction: &str, route: &str| -> &'a Value {
        let found: Vec<&Value> = xs
            .iter()
            .filter(|x| x["service"] == service && x["direction"] == direction && x["route"] == route)
            .filter(|x| x["job_id"] == job)
            .collect();
        assert_eq!(found.len(), 1, "{job}: {service} {direction} {route}: {found:?}");
        found[0]
    };
    let call = one(mcp, "mcp", "client", "/api/v1/jobs");
    Job {
        tool: mcp.iter().find(|x| x["span_id"] == call["parent_span_id"]),
        call,
        upload: one(engine, "engine", "server", "/api/v1/jobs"),
        hook_out: one(engine, "engine", "client", "/webhooks/job-complete"),
        hook_in: one(mcp, "mcp", "server", "/webhooks/job-complete"),
    }
}

/// One trace from the tool call to the webhook's far end, parents across the two agents.
fn assert_one_trace(id: &str, j: &Job) {
    let trace = &j.call["trace_id"];
    let tool = j.tool.unwrap_or_else(|| panic!("{id}: the call's tool call: {}", j.call));
    assert_eq!(tool["mcp"]["messages"][0]["tool"], "upload_csv", "{id}: {tool}");
    assert!(tool["parent_span_id"].is_null(), "{id}: the tool call starts the trace: {tool}");
    assert_eq!(&tool["trace_id"], trace);
    for (child, parent, link) in
        // The webhook leaves from the upload's own task after its 202 (a background task).
        [
            (j.upload, j.call, "connection"),
            (j.hook_out, j.upload, "task"),
            (j.hook_in, j.hook_out, "connection"),
        ]
    {
        assert_eq!(&child["trace_id"], trace, "{id}: {child}");
        assert_eq!(child["parent_span_id"], parent["span_id"], "{id}: {child}");
        // The correlator keeps an answered upload as a task parent for 2 s (`hold_ns`); on a
        // loaded machine the job can finish later than that, and then the job join (the
        // engine's own upload issued the id) gives the same parent. Either is evidence.
        let by_job = link == "task" && child["link"] == "job";
        assert!(child["link"] == link || by_job, "{id}: {child}");
    }
    // The webhook's far end joined the job the other host issued (a join says how it ended).
    assert!(j.hook_in["job_status"].is_string(), "{id}: {}", j.hook_in);
}

fn counters(port: u16) -> HashMap<&'static str, f64> {
    let text = scrape(port);
    ["lookups", "hits", "misses", "errors", "dropped"]
        .into_iter()
        .map(|k| (k, metric_sum(&text, &format!("traceo_shared_state_{k}_total"))))
        .collect()
}

/// Both agents' counters once no lookup is in flight (every one counted as begun has ended in
/// a hit or a miss), or after 15 s.
fn settled_counters(e: u16, m: u16) -> (HashMap<&'static str, f64>, HashMap<&'static str, f64>) {
    let settled = |c: &HashMap<&'static str, f64>| c["hits"] + c["misses"] >= c["lookups"];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ec, mc) = (counters(e), counters(m));
        if (settled(&ec) && settled(&mc)) || Instant::now() > deadline {
            return (ec, mc);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lines of both agents once `n` webhooks' far ends of `jobs` are written.
fn wait_lines(elog: &std::path::Path, mlog: &std::path::Path, jobs: &[String]) -> (Vec<Value>, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (e, m) = (json_lines(elog), json_lines(mlog));
        let has = |xs: &[Value], service: &str, direction: &str, j: &str| {
            xs.iter().any(|x| {
                x["service"] == service
                    && x["direction"] == direction
                    && x["route"] == "/webhooks/job-complete"
                    && x["job_id"] == j
            })
        };
        let done = jobs.iter().all(|j| has(&e, "engine", "client", j) && has(&m, "mcp", "server", j));
        if done || Instant::now() > deadline {
            return (e, m);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn two_hosts_one_trace_through_redis() {
    if !require_root("multihost") || !require_python("multihost") {
        return;
    }
    for (tool, flag) in [("redis-server", "--version"), ("nft", "--version")] {
        if Command::new(tool).arg(flag).output().is_err() {
            let why = format!("multihost: no {tool} (cargo xtask setup installs it)");
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
    }
    let started = Instant::now();
    let dir = temp_dir("multihost");
    let hosts = TwoHosts::create();
    let redis_port = free_port();
    let mut redis = Some(redis_server(redis_port));
    let (engine_port, mcp_port) = (free_port(), free_port());
    let py = python();
    let stack = repo().join("tests/apps/traceo_stack");
    // Through NAT both ways: neither agent sees the addresses the other does.
    let engine_url = hosts.service(MCP, engine_port);
    let webhook_url = format!("{}/webhooks/job-complete", hosts.service(ENGINE, mcp_port));
    let _engine = Proc::spawn(
        hosts
            .exec(ENGINE, &[py.to_str().unwrap(), "-m", "uvicorn", "engine:app", "--host", "0.0.0.0"])
            .args(["--port", &engine_port.to_string(), "--log-level", "warning"])
            .env("TRACEO_WEBHOOK_URL", &webhook_url)
            .current_dir(&stack)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let _mcp = Proc::spawn(
        hosts
            .exec(MCP, &[py.to_str().unwrap(), "mcp_server.py", &mcp_port.to_string()])
            .env("TRACEO_ENGINE_URL", &engine_url)
            .env("TRACEO_MCP_HOST", "0.0.0.0")
            .current_dir(&stack)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    hosts.wait_for(ENGINE, engine_port);
    hosts.wait_for(MCP, mcp_port);

    let shared = format!("redis://127.0.0.1:{redis_port}/0");
    // The MCP side's agent takes --shared-state, the engine's the config file's `shared-state`.
    let agent = |name: &str, service: String, by_flag: bool| {
        let log = dir.join(format!("{name}.jsonl"));
        let metrics_port = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("shared-state = \"{shared}\"\n")).unwrap();
        let mut args = vec!["--service".to_owned(), service];
        if by_flag {
            args.extend(["--shared-state".to_owned(), shared.clone()]);
        } else {
            args.extend(["--config".to_owned(), config.to_str().unwrap().to_owned()]);
        }
        args.extend(["--log".to_owned(), log.to_str().unwrap().to_owned()]);
        args.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{metrics_port}")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (Agent::run(&args), log, metrics_port)
    };
    let (mut eagent, elog, emetrics) = agent("engine", format!("engine=port:{engine_port}"), false);
    let (mut magent, mlog, mmetrics) = agent("mcp", format!("mcp=port:{mcp_port}"), true);

    // 1. Redis up: 20 concurrent uploads, 20 whole traces across the two agents.
    let t = Instant::now();
    let jobs = drive(&hosts, mcp_port, 20);
    let (e, m) = wait_lines(&elog, &mlog, &jobs);
    eprintln!("phase 1: 20 uploads driven and written in {:.1} s", t.elapsed().as_secs_f64());
    let mut traces = std::collections::HashSet::new();
    for id in &jobs {
        let j = job(id, &e, &m);
        // NAT: the caller saw the Service address, the callee the caller's translated one.
        assert_eq!(j.call["peer"], format!("{}:80", hosts.vip[ENGINE]), "{id}");
        assert!(j.upload["peer"].as_str().is_some_and(|p| p.starts_with(&format!("{}:", hosts.alt[MCP]))), "{id}");
        assert_eq!(j.hook_out["peer"], format!("{}:80", hosts.vip[MCP]), "{id}");
        assert_one_trace(id, &j);
        assert!(traces.insert(j.call["trace_id"].clone()), "{id}: trace shared with another job (crossed)");
    }
    let up = counters(mmetrics);
    let eup = counters(emetrics);
    eprintln!("phase 1 counters: engine agent {eup:?}, mcp agent {up:?}");
    assert!(eup["hits"] >= 20.0, "each upload found its MCP call: {eup:?}");
    assert!(up["hits"] >= 40.0, "each webhook found its sender and its job: {up:?}");
    assert_eq!(eup["errors"] + up["errors"], 0.0);
    let without = "traceo_job_joins_total{outcome=\"webhook_without_upload\"}";
    assert_eq!(metric_sum(&scrape(mmetrics), without), 0.0, "every far end found its job");

    // 2. Redis stopped while 10 uploads are under way: each span has its right parent or,
    // where the far side's key was not found, none (never another's).
    let t = Instant::now();
    let jobs_cut = std::thread::scope(|scope| {
        let uploads = scope.spawn(|| drive(&hosts, mcp_port, 10));
        // Cut once the first of them is written on the engine's side.
        let uploads_seen = || {
            let lines = json_lines(&elog);
            lines.iter().filter(|x| x["direction"] == "server" && x["route"] == "/api/v1/jobs").count()
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while uploads_seen() <= jobs.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(redis.take());
        uploads.join().expect("the uploads")
    });
    let (e, m) = wait_lines(&elog, &mlog, &jobs_cut);
    let mut whole = 0;
    for id in &jobs_cut {
        let j = job(id, &e, &m);
        assert!([&Value::Null, &j.call["span_id"]].contains(&&j.upload["parent_span_id"]), "{id}: {}", j.upload);
        assert_eq!(j.hook_out["parent_span_id"], j.upload["span_id"], "{id}");
        assert!([&Value::Null, &j.hook_out["span_id"]].contains(&&j.hook_in["parent_span_id"]), "{id}: {}", j.hook_in);
        // Whole: both far ends stitched and the webhook's far end joined its job (Redis may
        // go between its connection's lookup and its job's: then it stays unjoined, with
        // its right parent, as asserted above).
        let stitched = [j.upload, j.hook_in].iter().all(|x| !x["parent_span_id"].is_null());
        if stitched && j.hook_in["job_status"].is_string() {
            assert_one_trace(id, &j);
            whole += 1;
        }
    }
    eprintln!("phase 2: Redis stopped during 10 uploads: {whole} whole traces, {:.1} s", t.elapsed().as_secs_f64());

    // 3. Redis down: host-local tracing goes on; the cross-host lookups miss and fail, counted.
    let jobs_down = drive(&hosts, mcp_port, 5);
    let (e, m) = wait_lines(&elog, &mlog, &jobs_down);
    for id in &jobs_down {
        let j = job(id, &e, &m);
        // On the engine's host: the upload starts its own trace, the webhook joins it locally.
        assert!(j.upload["parent_span_id"].is_null(), "{id}: no guessed parent: {}", j.upload);
        assert_eq!(j.hook_out["trace_id"], j.upload["trace_id"], "{id}");
        assert_eq!(j.hook_out["parent_span_id"], j.upload["span_id"], "{id}");
        // On the MCP server's host: the tool call and its upload call; the webhook alone.
        assert_eq!(j.call["trace_id"], j.tool.expect("tool call")["trace_id"], "{id}");
        assert!(j.hook_in["parent_span_id"].is_null(), "{id}: {}", j.hook_in);
        assert_ne!(j.hook_in["trace_id"], j.call["trace_id"], "{id}");
        assert!(j.hook_in["job_status"].is_null(), "{id}: no job known there: {}", j.hook_in);
    }
    let (edown, mdown) = (counters(emetrics), counters(mmetrics));
    eprintln!("phase 3 (Redis down) counters: engine agent {edown:?}, mcp agent {mdown:?}");
    assert!(edown["misses"] - eup["misses"] >= 5.0, "{edown:?}");
    assert!(mdown["misses"] - up["misses"] >= 5.0, "{mdown:?}");
    assert!(edown["errors"] > 0.0 && mdown["errors"] > 0.0, "{edown:?} {mdown:?}");
    let warned = |a: &Agent| a.log.iter().filter(|l| l.contains("shared state:") && l.contains("WARN")).count();
    // Wait for the late job lookups of phases 2 and 3 to end (each ends in a hit or a miss,
    // at most its hold after it began, and the agents begin them as they read the events),
    // so that phase 4 counts only its own.
    let (edown, mdown) = settled_counters(emetrics, mmetrics);

    // 4. Redis back: cross-host traces resume.
    redis = Some(redis_server(redis_port));
    std::thread::sleep(Duration::from_millis(1500));
    let jobs_back = drive(&hosts, mcp_port, 5);
    let (e, m) = wait_lines(&elog, &mlog, &jobs_back);
    for id in &jobs_back {
        assert_one_trace(id, &job(id, &e, &m));
    }
    let (eback, mback) = (counters(emetrics), counters(mmetrics));
    eprintln!("phase 4 (Redis back) counters: engine agent {eback:?}, mcp agent {mback:?}");
    assert!(eback["hits"] - edown["hits"] >= 5.0 && mback["hits"] - mdown["hits"] >= 10.0, "{eback:?} {mback:?}");
    assert_eq!(mback["misses"], mdown["misses"], "{mback:?}");
    // Nothing but ids and service names went to Redis.
    let keys = redis_cli(redis_port, &["--scan"]);
    assert!(!keys.is_empty());
    let id = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    for key in keys.lines() {
        let value = redis_cli(redis_port, &["GET", key]);
        let value = value.trim();
        let ok = match key.split(':').nth(1) {
            // Connections meet by TCP sequence numbers (addresses differ through NAT).
            Some("conn") => key.starts_with("traceo:conn:tcp:") && id(value),
            Some("trace") => id(value),
            Some("job") => value.split_once(' ').is_some_and(|(ids, svc)| id(ids) && svc == "engine"),
            _ => false,
        };
        assert!(ok, "unexpected in Redis: {key} = {value}");
    }
    eagent.stop();
    magent.stop();
    // Failures are logged once per outage, not once per lookup.
    for a in [&eagent, &magent] {
        let n = warned(a);
        assert!((1..=2).contains(&n), "{n} warnings: {:?}", a.log);
    }
    drop(redis);
    eprintln!("multihost: {:.1} s", started.elapsed().as_secs_f64());
}
