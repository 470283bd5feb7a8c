//! `traceo_agent_*`: what the agent itself read, lost, failed to parse, and costs.

use std::sync::atomic::AtomicU64;

use crate::correlate::CorrelateStats;
use crate::http::Link;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabel {
    pub link: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Running totals the pipeline keeps; the metrics follow them by deltas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineCounts {
    /// Kernel drop counters by reason (monotonic).
    pub kernel_drops: Vec<(&'static str, u64)>,
    /// HTTP parse errors by reason (monotonic).
    pub parse_errors: Vec<(&'static str, u64)>,
    pub unpaired_requests: u64,
    pub unpaired_responses: u64,
    pub non_http_connections: u64,
    /// Connections read as PostgreSQL or Redis.
    pub db_connections: u64,
    /// Connections resynchronised after the kernel lost some of their bytes.
    pub loss_resyncs: u64,
    /// Output lines dropped because their reader (or disk) did not keep up.
    pub output_dropped: u64,
    pub active_connections: u64,
    /// Uprobe links held (OpenSSL and runtime probes, per file).
    pub uprobe_links: u64,
    pub decode_errors: u64,
    /// The correlation stage's totals (links by kind, what it dropped).
    pub correlation: Option<CorrelateStats>,
    pub spans_exported: u64,
    /// Spans dropped by reason (monotonic).
    pub spans_dropped: Vec<(&'static str, u64)>,
    /// `--node-inject` markers by outcome (monotonic).
    pub node_markers: Vec<(&'static str, u64)>,
    /// The TLS stage's totals (plaintext bound, ciphertext kept out, opaque connections).
    pub tls: crate::tls::TlsStats,
    /// Where the OpenSSL probes are attached (set by the live loop).
    pub tls_probes: crate::tls::probes::TlsProbeStats,
}

pub struct AgentMetrics {
    events_read: Family<KindLabel, Counter>,
    kernel_drops: Family<ReasonLabel, Counter>,
    parse_errors: Family<ReasonLabel, Counter>,
    unpaired: Family<KindLabel, Counter>,
    non_http: Counter,
    db_connections: Counter,
    loss_resyncs: Counter,
    output_dropped: Counter,
    decode_errors: Counter,
    active_connections: Gauge,
    uprobe_links: Gauge,
    pub series_overflow: Counter,
    scrapes_cut: Family<ReasonLabel, Counter>,
    worker_dropped: Family<TaskLabel, Counter>,
    span_links: Family<LinkLabel, Counter>,
    correlation_dropped: Family<ReasonLabel, Counter>,
    spans_exported: Counter,
    spans_dropped: Family<ReasonLabel, Counter>,
    node_markers: Family<ReasonLabel, Counter>,
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
    last: std::sync::Mutex<(PipelineCounts, f64)>,
}

fn follow<S: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug>(
    family: &Family<S, Counter>,
    labels: S,
    now: u64,
    before: u64,
) {
    family.get_or_create(&labels).inc_by(now.saturating_sub(before));
}

impl AgentMetrics {
    /// The drop counter of a worker thread's queue.
    pub fn worker_dropped(&self, task: &str) -> Counter {
        self.worker_dropped.get_or_create(&TaskLabel { task: task.to_owned() }).clone()
    }

    /// A scrape connection cut (`busy`, `deadline`).
    pub fn scrape_cut(&self, reason: &str) {
        self.scrape_cut_by(reason, 1);
    }

    fn scrape_cut_by(&self, reason: &str, n: u64) {
        self.scrapes_cut.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc_by(n);
    }

    pub fn register(r: &mut Registry) -> AgentMetrics {
        let m = AgentMetrics {
            events_read: Family::default(),
            kernel_drops: Family::default(),
            parse_errors: Family::default(),
            unpaired: Family::default(),
            non_http: Counter::default(),
            db_connections: Counter::default(),
            loss_resyncs: Counter::default(),
            output_dropped: Counter::default(),
            decode_errors: Counter::default(),
            active_connections: Gauge::default(),
            uprobe_links: Gauge::default(),
            series_overflow: Counter::default(),
            scrapes_cut: Family::default(),
            worker_dropped: Family::default(),
            span_links: Family::default(),
            correlation_dropped: Family::default(),
            spans_exported: Counter::default(),
            spans_dropped: Family::default(),
            node_markers: Family::default(),
            cpu_seconds: Counter::default(),
            resident_bytes: Gauge::default(),
            last: Default::default(),
        };
        r.register(
            "traceo_agent_events_read",
            "Kernel events read from the ring buffer, by kind",
            m.events_read.clone(),
        );
        r.register(
            "traceo_agent_kernel_drops",
            "What the kernel programs dropped or could not read, by reason (ring_full_* are lost events)",
            m.kernel_drops.clone(),
        );
        r.register("traceo_agent_parse_errors", "HTTP parse errors, by reason", m.parse_errors.clone());
        r.register(
            "traceo_agent_unpaired_messages",
            "Requests without response and responses without request",
            m.unpaired.clone(),
        );
        r.register(
            "traceo_agent_non_http_connections",
            "Connections recognised as not HTTP and ignored",
            m.non_http.clone(),
        );
        r.register(
            "traceo_agent_db_connections",
            "Connections recognised as a database protocol (PostgreSQL, Redis) and read as operations",
            m.db_connections.clone(),
        );
        r.register(
            "traceo_agent_loss_resyncs",
            "Connections resynchronised because the kernel lost some of their bytes (their exchanges \
             around the loss are flagged after_loss and kept out of latency histograms)",
            m.loss_resyncs.clone(),
        );
        r.register(
            "traceo_agent_output_dropped_lines",
            "Output lines (--log) dropped because their reader or disk did not keep up",
            m.output_dropped.clone(),
        );
        r.register("traceo_agent_decode_errors", "Kernel events the agent could not decode", m.decode_errors.clone());
        r.register(
            "traceo_agent_active_connections",
            "Connections the agent is following",
            m.active_connections.clone(),
        );
        r.register(
            "traceo_agent_uprobe_links",
            "Uprobe links held (OpenSSL and runtime probes: one set per probed file, shared by the traced processes \
             that use it)",
            m.uprobe_links.clone(),
        );
        r.register(
            "traceo_agent_metric_series_overflow",
            "HTTP label sets folded into http_route=\"__overflow__\" by the series cap",
            m.series_overflow.clone(),
        );
        for reason in ["busy", "deadline"] {
            m.scrape_cut_by(reason, 0);
        }
        r.register(
            "traceo_agent_worker_requests_dropped",
            "Requests to the agent's worker threads dropped because the previous one still ran (its \
             bounded queue was full), by task (proc_scan: the slow port: rescan)",
            m.worker_dropped.clone(),
        );
        r.register(
            "traceo_agent_scrapes_cut",
            "Connections to /metrics (/health, /ready) cut: busy (more than 4 at once, closed unanswered), \
             deadline (not done in 10 s: a scraper that does not read)",
            m.scrapes_cut.clone(),
        );
        r.register(
            "traceo_agent_span_links",
            "Spans given a parent, by how it was found (none: the span starts a trace)",
            m.span_links.clone(),
        );
        r.register(
            "traceo_agent_correlation_dropped",
            "Correlation state given up: evicted (request cap), connection_evicted (connection index cap), \
             hold_expired (best answer taken when the hold ran out), orphaned (parent forgotten), unannounced",
            m.correlation_dropped.clone(),
        );
        r.register("traceo_agent_spans_exported", "Spans the OTLP endpoint accepted", m.spans_exported.clone());
        r.register(
            "traceo_agent_spans_dropped",
            "Spans not exported, by reason (queue_full, export_failed, rejected)",
            m.spans_dropped.clone(),
        );
        r.register(
            "traceo_agent_node_markers",
            "Markers of the script --node-inject puts in Node.js processes, by outcome: applied (a \
             write tied to its inbound request), late (its write was not the next on its fd and \
             thread, in time), unknown_inbound, malformed",
            m.node_markers.clone(),
        );
        r.register_with_unit("traceo_agent_cpu", "CPU time used by the agent", Unit::Seconds, m.cpu_seconds.clone());
        r.register_with_unit(
            "traceo_agent_resident_memory",
            "Resident memory of the agent",
            Unit::Bytes,
            m.resident_bytes.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register("traceo_agent_build_info", "The agent's version", build);
        m
    }

    /// The counter of events read for `kind`: resolve once, then `inc()` per event without
    /// allocating.
    pub fn events_read(&self, kind: &str) -> Counter {
        self.events_read.get_or_create(&KindLabel { kind: kind.to_owned() }).clone()
    }

    /// Bring the counters up to the pipeline's running totals, and sample CPU and memory.
    pub fn update(&self, now: &PipelineCounts) {
        let mut last = self.last.lock().expect("metrics lock");
        let (before, cpu_before) = &mut *last;
        let prior =
            |list: &Vec<(&'static str, u64)>, name: &str| list.iter().find(|(n, _)| *n == name).map_or(0, |v| v.1);
        for (name, value) in &now.kernel_drops {
            follow(
                &self.kernel_drops,
                ReasonLabel { reason: (*name).into() },
                *value,
                prior(&before.kernel_drops, name),
            );
        }
        for (name, value) in &now.parse_errors {
            follow(
                &self.parse_errors,
                ReasonLabel { reason: (*name).into() },
                *value,
                prior(&before.parse_errors, name),
            );
        }
        follow(&self.unpaired, KindLabel { kind: "request".into() }, now.unpaired_requests, before.unpaired_requests);
        follow(
            &self.unpaired,
            KindLabel { kind: "response".into() },
            now.unpaired_responses,
            before.unpaired_responses,
        );
        self.non_http.inc_by(now.non_http_connections.saturating_sub(before.non_http_connections));
        self.db_connections.inc_by(now.db_connections.saturating_sub(before.db_connections));
        self.loss_resyncs.inc_by(now.loss_resyncs.saturating_sub(before.loss_resyncs));
        self.output_dropped.inc_by(now.output_dropped.saturating_sub(before.output_dropped));
        self.decode_errors.inc_by(now.decode_errors.saturating_sub(before.decode_errors));
        self.active_connections.set(now.active_connections as i64);
        self.uprobe_links.set(now.uprobe_links as i64);
        if let Some(c) = &now.correlation {
            let was = before.correlation.clone().unwrap_or_default();
            for link in Link::ALL {
                let label = LinkLabel { link: link.as_str().into() };
                follow(&self.span_links, label, c.link(link), was.link(link));
            }
            follow(&self.span_links, LinkLabel { link: "none".into() }, c.roots, was.roots);
            for (reason, value, prior) in [
                ("evicted", c.evicted, was.evicted),
                ("connection_evicted", c.connections_evicted, was.connections_evicted),
                ("hold_expired", c.expired, was.expired),
                ("orphaned", c.orphaned, was.orphaned),
                ("unannounced", c.unannounced, was.unannounced),
            ] {
                follow(&self.correlation_dropped, ReasonLabel { reason: reason.into() }, value, prior);
            }
        }
        self.spans_exported.inc_by(now.spans_exported.saturating_sub(before.spans_exported));
        for (family, now, before) in [
            (&self.spans_dropped, &now.spans_dropped, &before.spans_dropped),
            (&self.node_markers, &now.node_markers, &before.node_markers),
        ] {
            for (name, value) in now {
                follow(family, ReasonLabel { reason: (*name).into() }, *value, prior(before, name));
            }
        }
        *before = now.clone();
        if let Some((cpu, rss)) = own_usage() {
            self.cpu_seconds.inc_by((cpu - *cpu_before).max(0.0));
            *cpu_before = cpu;
            self.resident_bytes.set(rss as i64);
        }
    }
}

/// (CPU seconds, resident bytes) of this process, from /proc/self.
fn own_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // After the comm: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some((ticks as f64 / hz, pages * page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_running_totals_by_deltas() {
        let mut r = Registry::default();
        let m = AgentMetrics::register(&mut r);
        let mut counts =
            PipelineCounts { kernel_drops: vec![("ring_full_data", 3)], unpaired_requests: 2, ..Default::default() };
        m.update(&counts);
        counts.kernel_drops[0].1 = 5;
        counts.unpaired_requests = 2;
        counts.active_connections = 7;
        m.update(&counts);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("traceo_agent_kernel_drops_total{reason=\"ring_full_data\"} 5"), "{text}");
        assert!(text.contains("traceo_agent_unpaired_messages_total{kind=\"request\"} 2"), "{text}");
        assert!(text.contains("traceo_agent_active_connections 7"), "{text}");
        assert!(text.contains("traceo_agent_build_info{version=\"0.1.0\"} 1"), "{text}");
        let rss_line = text.lines().find(|l| l.starts_with("traceo_agent_resident_memory_bytes ")).expect("rss");
        assert!(rss_line.split(' ').nth(1).unwrap().parse::<f64>().unwrap() > 1e6, "{rss_line}");
    }
}
