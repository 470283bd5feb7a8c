//! The load: tests/apps/fidelity/load.py sends N requests, C in flight, request i carrying
//! the id `PREFIX-i` (plain HTTP through httpx, or one MCP client session per request).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// How the load reaches the front.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// GET a URL template with `{id}` replaced.
    Http,
    /// One MCP session per request, calling the tool `call(req=ID)`.
    Mcp,
}

/// One level of load: `requests` requests, `in_flight` at a time.
#[derive(Clone, Copy, Debug)]
pub struct Level {
    pub in_flight: u32,
    pub requests: u32,
}

impl Level {
    /// The prefix of this level's request ids (distinct per level within a scenario's run).
    pub fn prefix(&self) -> String {
        format!("c{}", self.in_flight)
    }
}

/// What the load client reported.
#[derive(Debug, Deserialize)]
pub struct Outcome {
    pub sent: u32,
    /// Ids of requests that failed (their calls are not expected).
    pub failed: Vec<String>,
    /// The first few failures' messages.
    pub errors: Vec<String>,
    pub seconds: f64,
}

impl Outcome {
    /// The ids of the requests the front answered.
    pub fn answered(&self, level: &Level) -> Vec<String> {
        (0..level.requests).map(|i| format!("{}-{i}", level.prefix())).filter(|id| !self.failed.contains(id)).collect()
    }
}

/// Run one level of load against `target` (a URL template for HTTP, the MCP endpoint for MCP).
pub fn run(python: &Path, mode: Mode, target: &str, level: &Level) -> anyhow::Result<Outcome> {
    let mode = match mode {
        Mode::Http => "http",
        Mode::Mcp => "mcp",
    };
    let out = Command::new(python)
        .arg(crate::root().join("tests/apps/fidelity/load.py"))
        .args([mode, target, &level.requests.to_string(), &level.in_flight.to_string(), &level.prefix()])
        .output()
        .context("run the load client")?;
    if !out.status.success() {
        bail!("the load client failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let outcome: Outcome = serde_json::from_str(last).with_context(|| format!("the load client printed {last:?}"))?;
    anyhow::ensure!(outcome.sent == level.requests, "the load client sent {} of {}", outcome.sent, level.requests);
    Ok(outcome)
}
