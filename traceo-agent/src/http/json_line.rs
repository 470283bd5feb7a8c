//! The JSON line per exchange (schema in DESIGN.md): the required fields always present and
//! in a fixed order, null where unknown, then extra fields. Bodies are never printed.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::exchange::Exchange;
use super::headers::HeaderSelection;

/// Maps CLOCK_MONOTONIC to wall-clock time: `wall_ns = mono_ns + offset_ns`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallClock {
    pub offset_ns: i64,
}

impl WallClock {
    /// Wall-clock time of a monotonic timestamp; `None` before 1970.
    pub fn wall(&self, mono_ns: u64) -> Option<SystemTime> {
        let wall = i128::from(mono_ns) + i128::from(self.offset_ns);
        let ns = u64::try_from(wall).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_nanos(ns))
    }

    /// RFC 3339 with microseconds, UTC.
    pub fn rfc3339(&self, mono_ns: u64) -> Option<String> {
        self.wall(mono_ns).map(|t| humantime::format_rfc3339_micros(t).to_string())
    }
}

/// Appends `"key":value` pairs to one JSON object.
struct Obj(String);

impl Obj {
    fn new() -> Self {
        Obj(String::from("{"))
    }

    fn field(&mut self, key: &str, value: Value) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        // Writing JSON values into a String cannot fail.
        let _ = write!(self.0, "{}:{}", Value::from(key), value);
    }

    /// A trace or span id as a JSON string of lower-case hex (null when unknown), formatted
    /// straight into the line: hex digits need no escaping, and the key is a plain name.
    fn id(&mut self, key: &'static str, id: Option<impl fmt::Display>) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        let _ = match id {
            Some(id) => write!(self.0, "\"{key}\":\"{id}\""),
            None => write!(self.0, "\"{key}\":null"),
        };
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn opt_str(v: Option<&str>) -> Value {
    v.map_or(Value::Null, Value::from)
}

fn addr(a: Option<SocketAddr>) -> Value {
    // SocketAddr's Display already writes IPv6 as `[::1]:80`.
    a.map_or(Value::Null, |a| Value::from(a.to_string()))
}

/// Milliseconds with microsecond precision.
fn millis(ns: Option<u64>) -> Value {
    ns.map_or(Value::Null, |ns| {
        let us = (ns / 1_000) as f64;
        Value::from(us / 1_000.0)
    })
}

/// The fields every exchange line has, in order (null where unknown): the contract of
/// DESIGN.md; more may follow.
pub const EXCHANGE_FIELDS: [&str; 19] = [
    "ts",
    "service",
    "direction",
    "pid",
    "tid",
    "method",
    "target",
    "route",
    "status",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "local",
    "peer",
    "trace_id",
    "span_id",
    "parent_span_id",
    "correlation_id",
    "job_id",
];

impl Exchange {
    /// One JSON object, no trailing newline.
    pub fn to_json_line(&self, clock: &WallClock) -> String {
        if let Some(op) = &self.db {
            return crate::db::json_line(self, op, clock);
        }
        let mut o = Obj::new();
        o.field("ts", opt_str(clock.rfc3339(self.request_first_ns).as_deref()));
        o.field("service", Value::from(&*self.service));
        o.field("direction", Value::from(self.role.as_str()));
        o.field("pid", Value::from(self.pid));
        o.field("tid", Value::from(self.tid));
        o.field("method", Value::from(self.method.as_str()));
        o.field("target", Value::from(self.target.as_str()));
        o.field("route", Value::from(&*self.route));
        o.field("status", self.status.map_or(Value::Null, Value::from));
        o.field("duration_ms", millis(self.duration_ns()));
        o.field("request_bytes", Value::from(self.request_body_bytes));
        o.field("response_bytes", self.response_body_bytes.map_or(Value::Null, Value::from));
        o.field("local", addr(self.local));
        o.field("peer", addr(self.peer));
        o.id("trace_id", self.trace_id());
        o.id("span_id", self.span_id());
        o.id("parent_span_id", self.parent_span_id());
        o.field("correlation_id", opt_str(self.correlation_id()));
        o.field("job_id", opt_str(self.job_id.as_deref()));
        o.field("version", opt_str(self.version.map(|v| v.as_str())));
        o.field("host", opt_str(self.host()));
        o.field("user_agent", opt_str(self.user_agent()));
        o.field("content_type", opt_str(self.content_type()));
        o.field("flags", Value::from(self.flags.names()));
        o.field("ttfb_ms", millis(self.ttfb_ns()));
        o.field("conn_id", Value::from(self.conn_id));
        o.field("tls", Value::from(self.tls));
        o.field("link", opt_str(self.link().map(|l| l.as_str())));
        o.field("propagated", self.propagated.map_or(Value::Null, Value::from));
        // Tells exchanges from database operations (`"kind":"operation"`).
        o.field("kind", Value::from("exchange"));
        let extras: serde_json::Map<String, Value> = self
            .response_headers
            .iter()
            // Later entries win: the request's value over the response's.
            .chain(self.request_headers.iter())
            .filter(|(name, _)| HeaderSelection::is_extra(name))
            .map(|(n, v)| (n.to_string(), Value::from(v)))
            .collect();
        if !extras.is_empty() {
            o.field("headers", Value::Object(extras));
        }
        if let Some(status) = &self.job_status {
            o.field("job_status", Value::from(status.as_str()));
        }
        if let Some(e) = &self.exception {
            o.field("exception", serde_json::json!({"type": e.kind, "message": e.message}));
        }
        if let Some(id) = &self.sentry_event_id {
            o.field("sentry_event_id", Value::from(id.as_str()));
        }
        if let Some(mcp) = &self.mcp {
            o.field("mcp", serde_json::to_value(mcp).unwrap_or(Value::Null));
        }
        o.finish()
    }
}
