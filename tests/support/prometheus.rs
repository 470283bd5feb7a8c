//! A real Prometheus server (Debian's `prometheus`) scraping the agent every second, with its
//! own config, data folder and loopback port, queried through its HTTP API.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Proc, free_port, wait_for_port};

pub struct Prometheus {
    _proc: Proc,
    pub port: u16,
}

pub fn require_prometheus(test: &str) -> bool {
    let ok = Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        let why = format!("{test} needs Debian's `prometheus` package: run `cargo xtask setup`");
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    ok
}

impl Prometheus {
    /// Start Prometheus scraping `target` (host:port) every second.
    pub fn scraping(dir: &Path, target: &str) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: traceo\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let proc = Proc::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_port(port);
        Prometheus { _proc: proc, port }
    }

    /// An instant query; the `data.result` array.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-G", &format!("http://127.0.0.1:{}/api/v1/query", self.port)])
            .args(["--data-urlencode", &format!("query={promql}")])
            .output()
            .expect("curl prometheus");
        assert!(out.status.success(), "query {promql}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("prometheus JSON");
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Query until `done` accepts the result or `timeout` passes; the last result.
    pub fn query_until(&self, promql: &str, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            if done(&result) || Instant::now() > deadline {
                return result;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether the scrape of the agent is up.
    pub fn target_up(&self) -> bool {
        self.query("up{job=\"traceo\"}").first().is_some_and(|r| r["value"][1] == "1")
    }
}

/// The numeric value of an instant-vector sample.
pub fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}
