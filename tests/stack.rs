//! The Traceo stack end to end (root): a FastAPI engine and an MCP server on the official SDK,
//! driven by an MCP client that uploads a good and a malformed CSV and waits for both webhooks;
//! the agent traces both services with no change to them.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// The stack, and the agent tracing both of its services.
struct Traced {
    stack: Stack,
    agent: Agent,
    metrics_port: u16,
    /// The agent's exchange lines.
    log: std::path::PathBuf,
}

fn traced_stack(dir: &std::path::Path) -> Traced {
    let stack = Stack::start();
    let metrics_port = free_port();
    let log = dir.join("exchanges.jsonl");
    let agent = Agent::run(&[
        "--service",
        &format!("engine=port:{}", stack.engine_port),
        "--service",
        &format!("mcp=port:{}", stack.mcp_port),
        "--log",
        log.to_str().unwrap(),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    Traced { stack, agent, metrics_port, log }
}

#[test]
fn uploads_tool_calls_and_webhooks_are_traced_and_joined_by_job_id() {
    if !require_root("traceo_stack") || !require_python("traceo_stack") {
        return;
    }
    let dir = temp_dir("stack");
    let Traced { stack, mut agent, metrics_port, log } = traced_stack(&dir);
    let results = stack.drive(&[]);
    let jobs: Vec<(&str, &str)> =
        results.iter().filter_map(|r| Some((r["job_id"].as_str()?, r["status"].as_str()?))).collect();
    assert_eq!(jobs.len(), 2, "{results:?}");
    assert_eq!((jobs[0].1, jobs[1].1), ("completed", "failed"), "the malformed CSV fails its job");
    assert_eq!(results[2]["missing_job_is_error"], true);
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    agent.stop();
    let xs = json_lines(&log);

    let find = |service: &str, direction: &str, method: &str, route: &str| -> Vec<&Value> {
        xs.iter()
            .filter(|x| {
                x["service"] == service && x["direction"] == direction && x["method"] == method && x["route"] == route
            })
            .collect()
    };
    for (job_id, _) in &jobs {
        let with_job = |v: &Vec<&Value>| v.iter().filter(|x| x["job_id"] == *job_id).count();
        // The upload, seen by the engine (server) and by the MCP server (client), issues the key...
        assert_eq!(with_job(&find("engine", "server", "POST", "/api/v1/jobs")), 1, "engine upload of {job_id}");
        assert_eq!(with_job(&find("mcp", "client", "POST", "/api/v1/jobs")), 1, "MCP's upload call for {job_id}");
        // ...and the webhook back, from both ends, carries it.
        assert_eq!(
            with_job(&find("engine", "client", "POST", "/webhooks/job-complete")),
            1,
            "webhook out of the engine"
        );
        assert_eq!(
            with_job(&find("mcp", "server", "POST", "/webhooks/job-complete")),
            1,
            "webhook into the MCP server"
        );
    }
    // One trace per job, from the MCP tool call to the webhook, parents by how they were found.
    for (job_id, _) in &jobs {
        let one = |v: Vec<&Value>| -> Value {
            let with: Vec<&&Value> = v.iter().filter(|x| x["job_id"] == *job_id).collect();
            assert_eq!(with.len(), 1, "{job_id}: {with:?}");
            (*with[0]).clone()
        };
        let upload = one(find("engine", "server", "POST", "/api/v1/jobs"));
        let call = one(find("mcp", "client", "POST", "/api/v1/jobs"));
        let webhook_out = one(find("engine", "client", "POST", "/webhooks/job-complete"));
        let webhook_in = one(find("mcp", "server", "POST", "/webhooks/job-complete"));
        let trace = upload["trace_id"].clone();
        assert!(trace.is_string(), "{upload}");
        let tool = xs
            .iter()
            .find(|x| x["span_id"] == call["parent_span_id"])
            .unwrap_or_else(|| panic!("the MCP client call's parent: {call}"));
        assert_eq!(tool["mcp"]["messages"][0]["tool"], "upload_csv", "the call is made inside the tool call");
        assert!(tool["parent_span_id"].is_null(), "the tool call starts the trace");
        // The tool's task descends from the task that answers the tools/call request: `task`.
        assert_eq!(call["link"], "task", "{call}");
        assert_eq!(call["trace_id"], trace, "{call}");
        // The engine sends the webhook from a background task of the upload's own request task,
        // after its 202: the task rule finds the upload (the job join agrees, by job id).
        assert_eq!(webhook_out["job_id"], *job_id, "{webhook_out}");
        for (child, parent, link) in
            [(&upload, &call, "connection"), (&webhook_out, &upload, "task"), (&webhook_in, &webhook_out, "connection")]
        {
            assert_eq!(child["trace_id"], trace, "{child}");
            assert_eq!(child["parent_span_id"], parent["span_id"], "{child}");
            assert_eq!(child["link"], link, "{child}");
        }
        // A job_status poll only refers to the job: it keeps its own trace (its tool call's)
        // and links to the upload, never a parent in the job's trace.
        let polls: Vec<&Value> = xs
            .iter()
            .filter(|x| x["service"] == "mcp" && x["direction"] == "server" && x["job_id"] == *job_id)
            .filter(|x| x["mcp"]["messages"][0]["tool"] == "job_status")
            .collect();
        assert!(!polls.is_empty(), "{job_id} was polled");
        for poll in polls {
            assert_ne!(poll["trace_id"], trace, "a poll is not part of the job's trace: {poll}");
            assert_ne!(poll["link"], "job", "{poll}");
        }
    }

    let uploads: Vec<&Value> = find("engine", "server", "POST", "/api/v1/jobs");
    assert!(uploads.iter().all(|x| x["status"] == 202));

    // MCP awareness: tool names and outcomes from the JSON-RPC bodies.
    let tool_calls: Vec<(&str, &str)> = xs
        .iter()
        .filter(|x| x["service"] == "mcp" && x["direction"] == "server")
        .flat_map(|x| x["mcp"]["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["method"] == "tools/call")
        .map(|m| (m["tool"].as_str().unwrap_or("?").to_owned(), m["outcome"].as_str().unwrap_or("?").to_owned()))
        .map(|(t, o)| {
            (if t == "upload_csv" { "upload_csv" } else { "job_status" }, if o == "ok" { "ok" } else { "not ok" })
        })
        .collect();
    assert_eq!(tool_calls.iter().filter(|c| **c == ("upload_csv", "ok")).count(), 2, "{tool_calls:?}");
    assert_eq!(
        tool_calls.iter().filter(|c| **c == ("job_status", "not ok")).count(),
        1,
        "the missing job is a tool error"
    );

    assert_eq!(
        metric_sum(&metrics, "traceo_mcp_tool_calls_total{service=\"mcp\",tool=\"upload_csv\",outcome=\"ok\"}"),
        2.0
    );
    assert_eq!(
        metric_sum(&metrics, "traceo_mcp_tool_calls_total{service=\"mcp\",tool=\"job_status\",outcome=\"tool_error\"}"),
        1.0
    );
    assert_eq!(metric_sum(&metrics, "traceo_job_joins_total{outcome=\"joined\"}"), 2.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "traceo_job_upload_to_webhook_seconds_count"), 2.0);
    // The malformed CSV's job failed: visible in the metrics and on both ends of its webhook.
    assert_eq!(metric_sum(&metrics, "traceo_jobs_finished_total{status=\"completed\"}"), 1.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "traceo_jobs_finished_total{status=\"failed\"}"), 1.0, "{metrics}");
    for (job_id, status) in &jobs {
        for (service, direction) in [("engine", "client"), ("mcp", "server")] {
            let webhook = find(service, direction, "POST", "/webhooks/job-complete");
            let hook = webhook.iter().find(|x| x["job_id"] == *job_id).expect("its webhook");
            assert_eq!(hook["job_status"], *status, "{hook}");
        }
    }
    assert_eq!(metric_sum(&metrics, "traceo_job_joins_total{outcome=\"webhook_without_upload\"}"), 0.0);
}

#[test]
fn twenty_concurrent_uploads_each_join_their_own_webhook() {
    if !require_root("traceo_stack_concurrent") || !require_python("traceo_stack_concurrent") {
        return;
    }
    let dir = temp_dir("stack-concurrent");
    let Traced { stack, mut agent, metrics_port, log } = traced_stack(&dir);
    let results = stack.drive(&["20"]);
    let jobs: Vec<&str> = results.iter().filter_map(|r| r["job_id"].as_str()).collect();
    assert_eq!(jobs.len(), 20, "{results:?}");
    assert!(results.iter().all(|r| r["source"] == "webhook"), "every webhook came back: {results:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    agent.stop();
    let xs = json_lines(&log);

    for job in &jobs {
        let of = |service: &str, direction: &str, route: &str| -> Vec<&Value> {
            xs.iter()
                .filter(|x| x["service"] == service && x["direction"] == direction && x["route"] == route)
                .filter(|x| x["job_id"] == *job)
                .collect()
        };
        let uploads = of("engine", "server", "/api/v1/jobs");
        let out = of("engine", "client", "/webhooks/job-complete");
        let into = of("mcp", "server", "/webhooks/job-complete");
        assert_eq!((uploads.len(), out.len(), into.len()), (1, 1, 1), "job {job}: no miss, no double");
        let trace = &uploads[0]["trace_id"];
        // No cross-join: the webhook joined the trace of its own upload, not another's.
        assert_eq!(&out[0]["trace_id"], trace, "{}", out[0]);
        assert_eq!(out[0]["parent_span_id"], uploads[0]["span_id"], "{}", out[0]);
        assert_eq!(&into[0]["trace_id"], trace, "{}", into[0]);
    }
    assert_eq!(metric_sum(&metrics, "traceo_job_joins_total{outcome=\"joined\"}"), 20.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "traceo_job_joins_total{outcome=\"webhook_without_upload\"}"), 0.0);
    assert_eq!(metric_sum(&metrics, "traceo_jobs_finished_total{status=\"failed\"}"), 10.0);
}
