//! `traceo_log_records_total`, `traceo_exceptions_total` and how records were attributed.

use std::{collections::HashSet, sync::Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::logs::LogJoinStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordLabels {
    service: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExceptionLabels {
    service: String,
    exception_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HowLabel {
    how: String,
}

/// Distinct exception types labelled at most; later ones fold into `__overflow__`.
const MAX_EXCEPTION_TYPES: usize = 200;

pub struct LogMetrics {
    records: Family<RecordLabels, Counter>,
    exceptions: Family<ExceptionLabels, Counter>,
    attribution: Family<HowLabel, Counter>,
    types: Mutex<HashSet<String>>,
    last: Mutex<LogJoinStats>,
}

impl LogMetrics {
    pub fn register(r: &mut Registry) -> LogMetrics {
        let m = LogMetrics {
            records: Family::default(),
            exceptions: Family::default(),
            attribution: Family::default(),
            types: Mutex::default(),
            last: Mutex::default(),
        };
        r.register("traceo_log_records", "Log records of the traced services (--log-records)", m.records.clone());
        r.register(
            "traceo_exceptions",
            "Exceptions reported by tracebacks in the traced services' logs",
            m.exceptions.clone(),
        );
        r.register(
            "traceo_log_records_attributed",
            "Log records by how they were tied to a request (thread, task, after_answer) or why not (outside, ambiguous, expired)",
            m.attribution.clone(),
        );
        m
    }

    pub fn record(&self, service: &str, severity: &str, exception_type: Option<&str>) {
        self.records.get_or_create(&RecordLabels { service: service.into(), severity: severity.into() }).inc();
        if let Some(t) = exception_type {
            let mut types = self.types.lock().expect("metrics lock");
            let label = if types.contains(t) || types.len() < MAX_EXCEPTION_TYPES {
                types.insert(t.to_owned());
                t
            } else {
                "__overflow__"
            };
            self.exceptions
                .get_or_create(&ExceptionLabels { service: service.into(), exception_type: label.into() })
                .inc();
        }
    }

    pub fn update(&self, now: &LogJoinStats) {
        let mut last = self.last.lock().expect("metrics lock");
        for (how, n, before) in [
            ("thread", now.by_thread, last.by_thread),
            ("task", now.by_task, last.by_task),
            ("after_answer", now.after_answer, last.after_answer),
            ("outside", now.outside, last.outside),
            ("ambiguous", now.ambiguous, last.ambiguous),
            ("expired", now.expired, last.expired),
            ("buffered", now.buffered, last.buffered),
        ] {
            self.attribution.get_or_create(&HowLabel { how: how.into() }).inc_by(n.saturating_sub(before));
        }
        *last = now.clone();
    }
}
