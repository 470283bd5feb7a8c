//! `traceo_sentry_events_total{service,outcome}`: Sentry error events the traced processes
//! reported, tied to their request's span (`matched`) or not (`unmatched`, see `sentry::join`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    service: String,
    outcome: &'static str,
}

pub struct SentryMetrics {
    events: Family<Labels, Counter>,
}

impl SentryMetrics {
    pub fn register(r: &mut Registry) -> SentryMetrics {
        let m = SentryMetrics { events: Family::default() };
        r.register(
            "traceo_sentry_events",
            "Sentry error events sent by traced processes, by outcome (matched: tied to the failed request's span; unmatched)",
            m.events.clone(),
        );
        m
    }

    pub fn event(&self, service: &str, matched: bool) {
        let outcome = if matched { "matched" } else { "unmatched" };
        self.events.get_or_create(&Labels { service: service.to_owned(), outcome }).inc();
    }
}
