//! Log records as OTLP logs, to the span endpoint: the same resources as the spans
//! (`service.name`, `process.pid`, ...), trace and span ids set so backends link each record
//! to its request's span, severity per the OTel data model.

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::LogRecord as OtlpRecord,
};

use crate::http::WallClock;
use crate::spans::{ExportConfig, ExportCounts, Exporter, HostFacts, Logs, OtlpTarget, SpanBuilder};

use super::{LogRecord, Owner};

pub struct LogExport {
    clock: WallClock,
    resources: SpanBuilder,
    exporter: Exporter<Logs>,
}

impl LogExport {
    pub fn start(target: &OtlpTarget, clock: WallClock, host: HostFacts) -> anyhow::Result<LogExport> {
        Ok(LogExport {
            clock,
            resources: SpanBuilder::new(clock, host),
            exporter: Exporter::start(ExportConfig::new(target))?,
        })
    }

    pub fn send(&mut self, r: &LogRecord, owner: Option<&Owner>) {
        let resource = self.resources.resource(&r.service, r.pid);
        self.exporter.send(resource, otlp_record(r, owner, &self.clock));
    }

    pub fn counts(&self) -> &std::sync::Arc<ExportCounts> {
        self.exporter.counts()
    }

    pub fn finish(&mut self) {
        self.exporter.shutdown(std::time::Duration::from_secs(10));
    }
}

fn string(key: &str, v: &str) -> KeyValue {
    crate::spans::string(key, v)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// The OTel severity number of a normalised severity.
fn severity_number(s: &str) -> i32 {
    match s {
        "debug" => 5,
        "info" => 9,
        "warning" => 13,
        "error" => 17,
        "critical" => 21,
        _ => 0,
    }
}

pub fn otlp_record(r: &LogRecord, owner: Option<&Owner>, clock: &WallClock) -> OtlpRecord {
    let ns = clock.unix_nanos(r.ts_ns).unwrap_or(0);
    let mut attributes = vec![string("log.iostream", r.stream), string("thread.id", &r.tid.to_string())];
    if let Some(l) = &r.logger {
        attributes.push(string("log.logger", l));
    }
    if let Some(e) = &r.exception {
        attributes.push(string("exception.type", &e.kind));
        attributes.push(string("exception.message", &e.message));
        attributes.push(string("exception.stacktrace", &e.stacktrace));
    }
    for key in ["correlation_id", "job_id"] {
        let v = owner.and_then(|o| if key == "job_id" { o.job_id.as_deref() } else { o.correlation_id.as_deref() });
        if let Some(v) = v {
            attributes.push(string(&format!("traceo.{key}"), v));
        }
    }
    for (k, v) in &r.fields {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        attributes.push(string(k, &text));
    }
    let trace_id = owner.and_then(|o| o.trace_id.as_deref()).map(unhex).unwrap_or_default();
    let span_id = owner.and_then(|o| o.span_id.as_deref()).map(unhex).unwrap_or_default();
    OtlpRecord {
        time_unix_nano: ns,
        observed_time_unix_nano: ns,
        severity_number: severity_number(r.severity),
        severity_text: r.severity.to_uppercase(),
        body: Some(AnyValue { value: Some(Value::StringValue(r.message.clone())) }),
        attributes,
        flags: if trace_id.is_empty() { 0 } else { 1 },
        trace_id,
        span_id,
        ..OtlpRecord::default()
    }
}
