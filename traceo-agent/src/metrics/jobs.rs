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

pub struct JobMetrics {
    upload_to_webhook: Histogram,
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
        JobMetrics { upload_to_webhook, joins, last: Default::default() }
    }

    pub fn observe_callback(&self, after_ns: u64) {
        self.upload_to_webhook.observe(after_ns as f64 / 1e9);
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
