//! End to end: uvicorn traced by the agent, curl traffic with known counts per route and
//! status, a real Prometheus server scraping the agent; assertions through Prometheus's API.

mod support;

use std::{collections::HashMap, process::Command, time::Duration};

use support::prometheus::{Prometheus, require_prometheus, value};
use support::*;

/// Sends `n` requests; returns each one's latency as curl measured it (seconds).
fn send(n: usize, args: &[&str]) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let out = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", "20"])
                .args(args)
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split(' ').nth(1).and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("curl said {text:?}"))
        })
        .collect()
}

/// The OTel bucket bounds around `v` (lower exclusive, upper inclusive).
fn bucket_of(v: f64) -> (f64, f64) {
    let bounds = [0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
    let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len() - 1).max(1);
    // v == 0 belongs to the first bucket, (0, 0.005].
    (bounds[i - 1], bounds[i])
}

#[test]
fn prometheus_sees_per_route_counts_and_latencies() {
    if !require_root("prometheus_end_to_end")
        || !require_python("prometheus_end_to_end")
        || !require_prometheus("prometheus_end_to_end")
    {
        return;
    }
    let dir = temp_dir("prometheus");
    let port = free_port();
    let _server = uvicorn(port, 1);
    let metrics_port = free_port();
    let mut agent = Agent::run(&[
        "--service",
        &format!("api=port:{port}"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--log",
        dir.join("exchanges.jsonl").to_str().unwrap(),
    ]);
    let prom = Prometheus::scraping(&dir, &format!("127.0.0.1:{metrics_port}"));
    let base = format!("http://127.0.0.1:{port}");
    let mut latencies: HashMap<&str, Vec<f64>> = HashMap::new();
    latencies.insert("/hello", send(5, &[&format!("{base}/hello")]));
    latencies.insert("/slow", send(6, &[&format!("{base}/slow")]));
    send(3, &[&format!("{base}/status/404")]);
    send(2, &[&format!("{base}/status/500")]);
    send(4, &["--data-binary", "some payload", &format!("{base}/upload")]);
    // (method, route, status) -> requests sent; ids in /status/N are normalised to {id}.
    let expected = [
        ("GET", "/hello", "200", 5.0),
        ("GET", "/slow", "200", 6.0),
        // Sent before the route answered anything else: a path the server is not known to
        // serve, folded with every such 404.
        ("GET", "{unmatched}", "404", 3.0),
        ("GET", "/status/{id}", "500", 2.0),
        ("POST", "/upload", "200", 4.0),
    ];
    let total: f64 = expected.iter().map(|e| e.3).sum();
    let query = "traceo_http_requests_total{service=\"api\",direction=\"server\"}";
    let result = prom.query_until(query, Duration::from_secs(20), |r| r.iter().map(value).sum::<f64>() >= total);
    assert!(prom.target_up(), "Prometheus cannot scrape the agent");
    let seen: HashMap<(String, String, String), f64> = result
        .iter()
        .map(|r| {
            let m = &r["metric"];
            let key = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
            ((key("http_request_method"), key("http_route"), key("http_response_status_code")), value(r))
        })
        .collect();
    for (method, route, status, count) in expected {
        let got = seen.get(&(method.into(), route.into(), status.into())).copied();
        assert_eq!(got, Some(count), "{method} {route} {status}: all series {seen:?}");
    }
    assert_eq!(seen.len(), expected.len(), "unexpected series: {seen:?}");

    for (method, route, status, count) in expected {
        let q = format!(
            "traceo_http_server_request_duration_seconds_count{{service=\"api\",http_request_method=\"{method}\",http_route=\"{route}\",http_response_status_code=\"{status}\"}}"
        );
        let r = prom.query(&q);
        assert_eq!(r.iter().map(value).sum::<f64>(), count, "{q}");
    }

    // The median lies within the histogram's resolution of the truth: no lower than the bucket
    // of the server's own minimum work (the 30 ms sleep of /slow), no higher than the bucket of
    // the slowest latency the client measured (the client's time includes the server's).
    for (route, server_minimum) in [("/hello", 0.0), ("/slow", 0.03)] {
        let q = format!(
            "histogram_quantile(0.5, sum by (le) (traceo_http_server_request_duration_seconds_bucket{{service=\"api\",http_route=\"{route}\"}}))"
        );
        let p50 = value(&prom.query(&q)[0]);
        let client = &latencies[route];
        let (lo, _) = bucket_of(server_minimum);
        let (_, hi) = bucket_of(client.iter().cloned().fold(0.0, f64::max));
        assert!(lo <= p50 && p50 <= hi, "{route}: p50 {p50} outside [{lo}, {hi}] (client latencies {client:?})");
    }
    let slow_p50 = value(&prom.query("histogram_quantile(0.5, sum by (le) (traceo_http_server_request_duration_seconds_bucket{http_route=\"/slow\"}))")[0]);
    assert!(slow_p50 >= 0.025, "the 30 ms route's median is {slow_p50}");

    let body =
        Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{metrics_port}/metrics")]).output().unwrap();
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&body.stdout)?;
            c.wait_with_output()
        })
        .expect("promtool");
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    agent.stop();
}
