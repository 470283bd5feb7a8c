//! Prometheus metrics (through `prometheus-client`: OpenMetrics with exemplars): HTTP request
//! metrics from exchanges, and the agent's own health. Served by `server`.

mod agent;
mod container;
mod http;
mod jobs;
mod logs;
mod mcp;
mod sentry;
pub mod server;
mod shared_state;
mod text_format;
mod tls;

use std::time::Duration;

use prometheus_client::registry::Registry;

pub use agent::{AgentMetrics, PipelineCounts};
pub use container::ContainerMetrics;
pub use http::{HttpMetrics, OVERFLOW_ROUTE, Observation};
pub use jobs::JobMetrics;
pub use mcp::McpMetrics;
pub use sentry::SentryMetrics;
pub use shared_state::SharedStateMetrics;
pub use tls::TlsMetrics;

/// Limits of the HTTP families.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Distinct label sets per family before new ones fold into `http_route="__overflow__"`.
    pub max_series: usize,
    /// A label set not updated for this long is dropped.
    pub series_ttl: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { max_series: 1_000, series_ttl: Duration::from_secs(3600) }
    }
}

pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub mcp: McpMetrics,
    pub jobs: JobMetrics,
    pub tls: TlsMetrics,
    pub db: crate::db::DbMetrics,
    pub logs: logs::LogMetrics,
    pub containers: ContainerMetrics,
    pub shared_state: SharedStateMetrics,
    pub sentry: SentryMetrics,
    pub agent: AgentMetrics,
}

impl Metrics {
    pub fn new(config: MetricsConfig) -> Metrics {
        let mut registry = Registry::default();
        let agent = AgentMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry, config, agent.series_overflow.clone());
        let mcp = McpMetrics::register(&mut registry);
        let jobs = JobMetrics::register(&mut registry);
        let tls = TlsMetrics::register(&mut registry);
        let db = crate::db::DbMetrics::register(&mut registry);
        let logs = logs::LogMetrics::register(&mut registry);
        let containers = ContainerMetrics::register(&mut registry);
        let shared_state = SharedStateMetrics::register(&mut registry);
        let sentry = SentryMetrics::register(&mut registry);
        Metrics { registry, http, mcp, jobs, tls, db, logs, containers, shared_state, sentry, agent }
    }

    /// The Prometheus text format (0.0.4) exposition, without exemplars.
    pub fn encode_prometheus_text(&self) -> String {
        text_format::openmetrics_to_prometheus(&self.encode())
    }

    /// The OpenMetrics exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
