//! Job joins: `traceo_job_upload_to_webhook_seconds` and `traceo_job_joins_total{outcome}`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::joins::JoinStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// Distinct job statuses counted before new ones fold into `__overflow__`.
const MAX_STATUSES: usize = 32;

pub struct JobMetrics {
    upload_to_webhook: Histogram,
    finished: Family<StatusLabel, Counter>,
    statuses: std::sync::Mutex<std::collections::HashSet<String>>,
    joins: Family<OutcomeLabel, Counter>,
    last: std::sync::Mutex<JoinStats>,
}

impl JobMetrics {
    pub fn register(r: &mut Registry) -> JobMetrics {
        // 10 ms .. about 20 min: jobs run from milliseconds to many minutes.
        let upload_to_webhook =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.5, 14));
        let joins = Family::default();
        r.register_with_unit(
            "traceo_job_upload_to_webhook",
            "From the start of the request that issued a job key to the start of its webhook",
            Unit::Seconds,
            upload_to_webhook.clone(),
        );
        r.register(
            "traceo_job_joins",
            "Job keys: joined (webhook seen), upload_without_webhook (expired), webhook_without_upload",
            joins.clone(),
        );
        let finished = Family::default();
        r.register(
            "traceo_jobs_finished",
            "Jobs whose webhook came, by the status it reported (e.g. completed, failed)",
            finished.clone(),
        );
        JobMetrics { upload_to_webhook, finished, statuses: Default::default(), joins, last: Default::default() }
    }

    /// A job's webhook: how long after the upload, and the status it reported.
    pub fn observe_callback(&self, after_ns: u64, status: Option<&str>) {
        self.upload_to_webhook.observe(after_ns as f64 / 1e9);
        let mut known = self.statuses.lock().expect("metrics lock");
        let status = status.unwrap_or("unknown");
        let label = if known.contains(status) || known.len() < MAX_STATUSES {
            known.insert(status.to_owned());
            status
        } else {
            super::OVERFLOW_ROUTE
        };
        self.finished.get_or_create(&StatusLabel { status: label.to_owned() }).inc();
    }

    /// Follow the join stage's running totals.
    pub fn update(&self, now: &JoinStats) {
        let mut last = self.last.lock().expect("metrics lock");
        for (outcome, v, before) in [
            ("joined", now.joined, last.joined),
            ("upload_without_webhook", now.upload_without_webhook, last.upload_without_webhook),
            ("webhook_without_upload", now.webhook_without_upload, last.webhook_without_upload),
        ] {
            self.joins.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc_by(v.saturating_sub(before));
        }
        *last = now.clone();
    }
}
