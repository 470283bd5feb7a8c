//! The traced services' own log records, joined to their traces (`--log-records`).
//!
//! Log-write events (what a traced process wrote to its stdout or stderr, a socket there
//! included: `stdio_socket`, or to a `--log-file`) ->
//! redacted -> `assemble` (lines, tracebacks whole) -> `parse` (severity, logger, message,
//! fields; the exception of a traceback) -> `join` (the request whose thread or task wrote
//! the record, by the same rules as the spans' parents; none when nothing certain says) ->
//! one JSON object per record, the exception as a span event on its request.

pub mod assemble;
pub mod join;
pub mod otlp;
pub mod parse;
pub mod redact;
pub mod stdio_socket;

use serde_json::{Map, Value};

pub use join::{LogJoin, LogJoinStats, Owner};
pub use parse::ExceptionInfo;

use crate::http::WallClock;

/// `stdout` for fd 1, `stderr` for fd 2.
pub fn stream_name(fd: i32) -> &'static str {
    match fd {
        1 => "stdout",
        2 => "stderr",
        _ => "file",
    }
}

/// One parsed, redacted log record of a traced process.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    /// When its first line was written (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    pub service: String,
    pub pid: u32,
    pub tid: u32,
    pub stream: &'static str,
    pub severity: &'static str,
    pub logger: Option<String>,
    pub message: String,
    pub fields: Map<String, Value>,
    pub format: &'static str,
    /// Longer than the record bound (or the capture bound): cut.
    pub truncated: bool,
    /// The Python exception its traceback reports, if any.
    pub exception: Option<ExceptionInfo>,
    /// The writer's runtime context (for the join).
    pub task_ctx: u64,
}

impl LogRecord {
    /// Parse an assembled record (its text already redacted).
    pub fn from_raw(raw: assemble::RawRecord, service: String) -> LogRecord {
        let p = parse::parse(&raw.text, raw.fd == 2);
        let exception = parse::exception(&raw.text);
        LogRecord {
            ts_ns: raw.ts_ns,
            service,
            pid: raw.pid,
            tid: raw.tid,
            stream: stream_name(raw.fd),
            // A record that reports an exception is an error whatever its stream says.
            severity: if p.severity == "unknown" && exception.is_some() { "error" } else { p.severity },
            logger: p.logger,
            message: p.message,
            fields: p.fields,
            format: p.format,
            truncated: raw.truncated,
            exception,
            task_ctx: raw.task_ctx,
        }
    }

    /// One JSON object, no trailing newline; the ids are its owner's (null without one).
    pub fn to_json_line(&self, clock: &WallClock, owner: Option<&Owner>) -> String {
        let id = |v: Option<String>| v.map_or(Value::Null, Value::from);
        let mut o = Map::new();
        o.insert("ts".into(), clock.rfc3339(self.ts_ns).map_or(Value::Null, Value::from));
        o.insert("service".into(), Value::from(self.service.as_str()));
        o.insert("pid".into(), Value::from(self.pid));
        o.insert("tid".into(), Value::from(self.tid));
        o.insert("stream".into(), Value::from(self.stream));
        o.insert("severity".into(), Value::from(self.severity));
        o.insert("logger".into(), self.logger.as_deref().map_or(Value::Null, Value::from));
        o.insert("message".into(), Value::from(self.message.as_str()));
        o.insert("fields".into(), Value::Object(self.fields.clone()));
        o.insert("trace_id".into(), id(owner.and_then(|w| w.trace_id.clone())));
        o.insert("span_id".into(), id(owner.and_then(|w| w.span_id.clone())));
        o.insert("correlation_id".into(), id(owner.and_then(|w| w.correlation_id.clone())));
        o.insert("job_id".into(), id(owner.and_then(|w| w.job_id.clone())));
        o.insert("format".into(), Value::from(self.format));
        o.insert("truncated".into(), Value::from(self.truncated));
        if let Some(e) = &self.exception {
            let mut x = Map::new();
            x.insert("type".into(), Value::from(e.kind.as_str()));
            x.insert("message".into(), Value::from(e.message.as_str()));
            o.insert("exception".into(), Value::Object(x));
        }
        Value::Object(o).to_string()
    }
}
