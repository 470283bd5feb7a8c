//! `cargo xtask demo`: the agent's main job on a bundled default, the Traceo stack. Starts the
//! engine and the MCP server of tests/apps/traceo_stack, traces both with the agent, has an
//! MCP client upload a good and a malformed CSV and wait for the webhooks, then shows each
//! job's path as the agent saw it (a tree by span once spans are on) and the key metric
//! lines. The agent also joins the services' own log lines to their requests (`--log-records`):
//! each job's records are printed under its trace, and a failed job must show its log lines
//! and the engine's traceback there (checked). The engine writes the seed's audit rows to a
//! PostgreSQL server the demo starts: each job's trace must hold its INSERTs (checked).
//! Everything it starts is stopped at the end or on Ctrl-C.

use std::{
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    procs::{self, Proc, free_port},
    root,
};

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

/// One exchange as the demo prints it.
struct Row {
    x: serde_json::Value,
}

impl Row {
    fn s(&self, k: &str) -> String {
        self.x[k].as_str().map(str::to_owned).unwrap_or_else(|| self.x[k].to_string())
    }
    fn start_ms(&self) -> f64 {
        // ts is RFC 3339 with microseconds: compare within one run by its seconds part.
        let ts = self.s("ts");
        let secs = ts.rsplit(':').next().and_then(|s| s.trim_end_matches('Z').parse::<f64>().ok()).unwrap_or(0.0);
        let minutes = ts.split(':').nth(1).and_then(|m| m.parse::<f64>().ok()).unwrap_or(0.0);
        (minutes * 60.0 + secs) * 1000.0
    }
    fn is_operation(&self) -> bool {
        self.x["kind"] == "operation"
    }
    fn name(&self) -> String {
        if self.is_operation() {
            let collection = self.x["collection"].as_str().map(|c| format!(" {c}")).unwrap_or_default();
            return format!("{}{collection}", self.s("operation"));
        }
        let mcp = &self.x["mcp"]["messages"][0];
        match (mcp["method"].as_str(), mcp["tool"].as_str()) {
            (Some(m), Some(t)) => format!("{m} {t}"),
            (Some(m), None) => m.to_owned(),
            _ => format!("{} {}", self.s("method"), self.s("route")),
        }
    }
    fn line(&self, indent: usize, t0: f64) -> String {
        format!(
            "{:>9}  {}{:<7} {:<7} {:<34} {:>4} {:>8.1} ms",
            format!("+{:.1}ms", self.start_ms() - t0),
            "  ".repeat(indent),
            self.s("service"),
            self.s("direction"),
            self.name(),
            if self.is_operation() { self.s("status_code").replace("null", "ok") } else { self.s("status") },
            self.x["duration_ms"].as_f64().unwrap_or(f64::NAN),
        )
    }
}

/// Print the exchanges of one trace as a tree (parent_span_id), or as a timeline.
fn print_group(rows: &[&Row]) {
    let t0 = rows.iter().map(|r| r.start_ms()).fold(f64::INFINITY, f64::min);
    if rows.iter().all(|r| r.x["span_id"].is_null()) {
        let mut timeline = rows.to_vec();
        timeline.sort_by(|a, b| a.start_ms().total_cmp(&b.start_ms()));
        for row in timeline {
            println!("{}", row.line(0, t0));
        }
        return;
    }
    let spans: std::collections::HashSet<String> = rows.iter().map(|r| r.s("span_id")).collect();
    let roots: Vec<&&Row> = rows.iter().filter(|r| !spans.contains(&r.s("parent_span_id"))).collect();
    fn walk(row: &Row, rows: &[&Row], depth: usize, t0: f64) {
        println!("{}", row.line(depth, t0));
        let id = row.s("span_id");
        let mut children: Vec<&&Row> = rows.iter().filter(|r| r.s("parent_span_id") == id && id != "null").collect();
        children.sort_by(|a, b| a.start_ms().total_cmp(&b.start_ms()));
        for child in children {
            walk(child, rows, depth + 1, t0);
        }
    }
    let mut roots = roots;
    roots.sort_by(|a, b| a.start_ms().total_cmp(&b.start_ms()));
    for root in roots {
        walk(root, rows, 0, t0);
    }
}

pub fn run(agent: &Path, python: &Path, concurrent: Option<u32>) -> anyhow::Result<()> {
    procs::kill_children_on_interrupt();
    let dir = std::env::temp_dir().join(format!("traceo-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (engine_port, mcp_port, metrics_port) = (free_port()?, free_port()?, free_port()?);
    let exchanges = dir.join("exchanges.jsonl");
    let records_file = dir.join("records.jsonl");
    let stack = root().join("tests/apps/traceo_stack");
    let pg_port = free_port()?;
    let pg = procs::postgres(&dir.join("pg"), pg_port)?;

    println!(
        "== the Traceo stack: engine (FastAPI) on 127.0.0.1:{engine_port}, MCP server (official MCP SDK) on 127.0.0.1:{mcp_port}"
    );
    let quiet = |c: &mut Command| {
        c.current_dir(&stack).stdout(Stdio::null()).stderr(Stdio::null());
    };
    let mut engine_cmd = Command::new(python);
    engine_cmd
        .args(["-m", "uvicorn", "engine:app", "--host", "127.0.0.1", "--port", &engine_port.to_string()])
        .env("TRACEO_WEBHOOK_URL", format!("http://127.0.0.1:{mcp_port}/webhooks/job-complete"));
    match &pg {
        Ok(_) => {
            println!("== PostgreSQL on 127.0.0.1:{pg_port}: the engine writes its audit rows there (asyncpg pool)");
            engine_cmd.env("TRACEO_DATABASE_URL", format!("postgresql://postgres@127.0.0.1:{pg_port}/postgres"));
        }
        Err(why) => println!("== no audit rows: {why}"),
    }
    quiet(&mut engine_cmd);
    let _engine = Proc::spawn(&mut engine_cmd)?;
    let mut mcp_cmd = Command::new(python);
    mcp_cmd
        .arg("mcp_server.py")
        .arg(mcp_port.to_string())
        .env("TRACEO_ENGINE_URL", format!("http://127.0.0.1:{engine_port}"));
    quiet(&mut mcp_cmd);
    let _mcp = Proc::spawn(&mut mcp_cmd)?;
    for port in [engine_port, mcp_port] {
        wait_for("the stack", || TcpStream::connect(("127.0.0.1", port)).is_ok())?;
    }

    println!(
        "== traceo-agent run --service engine=port:{engine_port} --service mcp=port:{mcp_port} --route '/api/v1/jobs/{{job_id}}' --log-records FILE (metrics on 127.0.0.1:{metrics_port})"
    );
    let mut agent_cmd = Command::new(agent);
    agent_cmd
        .args(["run", "--service", &format!("engine=port:{engine_port}"), "--service", &format!("mcp=port:{mcp_port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--route", "/api/v1/jobs/{job_id}"])
        .arg("--log")
        .arg(&exchanges)
        .arg("--log-records")
        .arg(&records_file)
        .stdout(Stdio::null());
    crate::setup::as_root(&mut agent_cmd);
    let mut agent_proc = Proc::spawn(&mut agent_cmd)?;
    wait_for("the agent", || curl(&[&format!("http://127.0.0.1:{metrics_port}/ready")]).starts_with("ready"))?;

    let mut client = Command::new(python);
    client.arg(stack.join("mcp_client.py")).arg(format!("http://127.0.0.1:{mcp_port}/mcp"));
    match concurrent {
        Some(n) => {
            println!(
                "== an MCP client calls upload_csv {n} times at once (good and malformed CSVs) and waits for the webhooks"
            );
            client.arg(n.to_string());
        }
        None => {
            println!("== an MCP client calls upload_csv with a good and a malformed CSV and waits for both webhooks")
        }
    }
    let out = client.output().context("run the MCP client")?;
    if !out.status.success() {
        bail!("the MCP client failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    agent_proc.interrupt();

    let text = std::fs::read_to_string(&exchanges).unwrap_or_default();
    let rows: Vec<Row> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).map(|x| Row { x }).collect();
    if rows.is_empty() {
        bail!("the agent printed no exchange: see its log above");
    }
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&records_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut jobs: Vec<String> = rows.iter().map(|r| r.s("job_id")).filter(|j| j != "null").collect();
    jobs.dedup();
    jobs.sort();
    jobs.dedup();
    println!(
        "\n== what the agent saw, with no change to either service ({} exchanges in {})",
        rows.len(),
        exchanges.display()
    );
    /// Trees printed in full in the concurrent mode (the rest are checked, not shown).
    const SHOWN: usize = 2;
    let mut crossed = Vec::new();
    // Failed jobs whose trace lacks their log lines or the engine's traceback.
    let mut unlogged = Vec::new();
    // Jobs whose trace lacks its two audit INSERTs (created, then completed or failed).
    let mut unaudited = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        // One trace per job once spans are on; until then, the exchanges that carry the job id.
        let trace = rows.iter().find(|r| r.s("job_id") == *job).map(|r| r.s("trace_id")).filter(|t| t != "null");
        let group: Vec<&Row> = match &trace {
            Some(t) => rows.iter().filter(|r| r.s("trace_id") == *t).collect(),
            None => rows.iter().filter(|r| r.s("job_id") == *job).collect(),
        };
        let status =
            rows.iter().find(|r| r.s("job_id") == *job && r.x["job_status"].is_string()).map(|r| r.s("job_status"));
        // A job's own trace holds one tool call and one upload, and only this job's.
        let uploads = group.iter().filter(|r| r.s("service") == "engine" && r.s("route") == "/api/v1/jobs").count();
        let tool_calls = group.iter().filter(|r| r.name() == "tools/call upload_csv").count();
        let others =
            group.iter().filter(|r| !matches!(r.s("job_id").as_str(), "null") && r.s("job_id") != *job).count();
        let audits = group.iter().filter(|r| r.name() == "INSERT audit_logs" && r.s("status_code") == "null").count();
        if pg.is_ok() && audits != 2 {
            unaudited.push(format!("{job}: {audits} audit INSERTs in its trace"));
        }
        if uploads != 1 || tool_calls != 1 || others != 0 {
            crossed.push(format!(
                "{job}: {uploads} uploads, {tool_calls} upload_csv calls, {others} exchanges of other jobs"
            ));
        }
        // The services' log records in this trace: those naming this job must all be here.
        let mut logs: Vec<&serde_json::Value> = match &trace {
            Some(t) => records.iter().filter(|r| r["trace_id"].as_str() == Some(t.as_str())).collect(),
            None => vec![],
        };
        // In the order written (RFC 3339 times of one format compare as text).
        logs.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
        let names_job = |r: &serde_json::Value| r["message"].as_str().is_some_and(|m| m.contains(job.as_str()));
        let traceback = logs.iter().any(|r| r["exception"]["type"] == "ValueError" && names_job(r));
        let lines = logs.iter().filter(|r| r["exception"].is_null() && names_job(r)).count();
        // Records naming the job belong to its trace or to another trace of the job (a status
        // poll keeps its own trace): never to none, nor to another job's.
        let job_traces: std::collections::HashSet<String> =
            rows.iter().filter(|r| r.s("job_id") == *job).map(|r| r.s("trace_id")).collect();
        let outside: Vec<String> = records
            .iter()
            .filter(|r| names_job(r) && !job_traces.contains(r["trace_id"].as_str().unwrap_or("null")))
            .map(|r| {
                format!("{} {:?} (trace {})", r["service"], r["message"].as_str().unwrap_or_default(), r["trace_id"])
            })
            .collect();
        let elsewhere = outside.len();
        let failed = rows.iter().any(|r| r.s("job_id") == *job && r.x["job_status"] == "failed");
        if failed && (!traceback || lines < 2 || elsewhere > 0) {
            unlogged.push(format!(
                "{job}: traceback in its trace: {traceback}, log lines: {lines}, its records in no trace of the job: {elsewhere} {outside:?}"
            ));
        }
        if concurrent.is_some() && i >= SHOWN {
            continue;
        }
        println!(
            "\njob {job}{}{}",
            status.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(),
            trace.map(|t| format!("  trace {t}")).unwrap_or_default()
        );
        print_group(&group);
        if !logs.is_empty() {
            println!("  its services' log records (tied by the agent, no change to the code):");
        }
        for r in &logs {
            let text = r["message"].as_str().unwrap_or_default();
            let mut text_lines = text.lines();
            println!(
                "    {:<7} {:<8} {:<12} {}",
                r["service"].as_str().unwrap_or("?"),
                r["severity"].as_str().unwrap_or("?"),
                r["logger"].as_str().unwrap_or("-"),
                text_lines.next().unwrap_or_default()
            );
            for l in text_lines {
                println!("    {:<30}{l}", "");
            }
        }
    }
    if let Some(n) = concurrent {
        println!(
            "\n== {} jobs from {n} concurrent uploads ({} trees shown above); each job's trace holds its own \
             tool call, upload and webhook: {}",
            jobs.len(),
            SHOWN.min(jobs.len()),
            if crossed.is_empty() && jobs.len() == n as usize {
                "yes, none crossed".to_owned()
            } else {
                format!("NO: {crossed:?}")
            }
        );
    }
    let failed =
        jobs.iter().filter(|j| rows.iter().any(|r| r.s("job_id") == **j && r.x["job_status"] == "failed")).count();
    println!(
        "\n== failed jobs whose trace holds their log lines and the engine's traceback: {} of {failed}",
        failed - unlogged.len()
    );
    if pg.is_ok() {
        println!(
            "== jobs whose trace holds their two audit INSERTs (PostgreSQL, no change to the engine): {} of {}",
            jobs.len() - unaudited.len(),
            jobs.len()
        );
    }
    println!("\n== key metric lines (Prometheus scrapes these from /metrics)");
    for line in metrics.lines().filter(|l| {
        [
            "traceo_mcp_tool_calls_total",
            "traceo_job_joins_total",
            "traceo_jobs_finished_total",
            "traceo_job_upload_to_webhook_seconds_count",
        ]
        .iter()
        .any(|p| l.starts_with(p))
            || (l.starts_with("traceo_http_requests_total") && l.contains("direction=\"server\""))
            || l.starts_with("traceo_exceptions_total")
            || (l.starts_with("traceo_db_client_operation_duration_seconds_count") && l.contains("audit_logs"))
    }) {
        println!("{line}");
    }
    drop(pg);
    if std::env::var_os("TRACEO_DEMO_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if failed == 0 {
        bail!("no job failed: the malformed CSV should have failed its job");
    }
    if !unlogged.is_empty() {
        bail!("failed jobs without their log lines and traceback in their trace: {unlogged:?}");
    }
    if !unaudited.is_empty() {
        bail!("jobs without their audit rows in their trace: {unaudited:?}");
    }
    Ok(())
}
