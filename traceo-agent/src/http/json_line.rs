//! The JSON line per exchange (schema in DESIGN.md): the required fields always present and
//! in a fixed order, null where unknown, then extra fields. Bodies are never printed.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::exchange::Exchange;

/// Maps CLOCK_MONOTONIC to wall-clock time: `wall_ns = mono_ns + offset_ns`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallClock {
    pub offset_ns: i64,
}

impl WallClock {
    /// Wall-clock time of a monotonic timestamp; `None` before 1970.
    pub fn wall(&self, mono_ns: u64) -> Option<SystemTime> {
        UNIX_EPOCH.checked_add(Duration::from_nanos(self.unix_nanos(mono_ns)?))
    }

    /// Nanoseconds since 1970 of a monotonic timestamp (what OTLP takes); `None` before 1970.
    pub fn unix_nanos(&self, mono_ns: u64) -> Option<u64> {
        u64::try_from(i128::from(mono_ns) + i128::from(self.offset_ns)).ok()
    }

    /// RFC 3339 with microseconds, UTC.
    pub fn rfc3339(&self, mono_ns: u64) -> Option<String> {
        self.wall(mono_ns).map(|t| humantime::format_rfc3339_micros(t).to_string())
    }
}

/// Appends `"key":value` pairs to one JSON object. Values are serialised straight into the
/// line (as a `Value` would print them: `None` as null, strings escaped, floats shortest),
/// not built as `Value`s first: that allocated per string field and printed through
/// `Display`, several times the cost of the rest of the pipeline per exchange.
struct Obj(Vec<u8>);

impl Obj {
    fn new() -> Self {
        // A line is a few hundred bytes: room for one at once, not grown piecewise.
        let mut line = Vec::with_capacity(LINE_BYTES);
        line.push(b'{');
        Obj(line)
    }

    /// `"key":`; keys are plain names (no escaping).
    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn field(&mut self, key: &str, value: impl Serialize) {
        self.key(key);
        // Serialising into a Vec cannot fail (every value here has string keys, if any).
        let _ = serde_json::to_writer(&mut self.0, &value);
    }

    /// A value whose `Display` needs no escaping (ids in hex, addresses, timestamps), as a
    /// JSON string; null when unknown.
    fn plain(&mut self, key: &str, v: Option<impl fmt::Display>) {
        self.key(key);
        let _ = match v {
            Some(v) => write!(self.0, "\"{v}\""),
            None => self.0.write_all(b"null"),
        };
    }

    /// Bytes (a trace or span id) as a JSON string of lower-case hex; null when unknown.
    fn hex(&mut self, key: &str, bytes: Option<&[u8]>) {
        self.key(key);
        let Some(bytes) = bytes else { return self.0.extend_from_slice(b"null") };
        self.0.push(b'"');
        crate::correlate::push_hex(&mut self.0, bytes);
        self.0.push(b'"');
    }

    /// An address as a JSON string (as its `Display`: IPv6 as `[::1]:80`); null when unknown.
    /// IPv4, the common case, is written digit by digit: `Display` pads through a formatter.
    fn addr(&mut self, key: &str, a: Option<SocketAddr>) {
        let Some(SocketAddr::V4(v4)) = a else { return self.plain(key, a) };
        self.key(key);
        self.0.push(b'"');
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                self.0.push(b'.');
            }
            push_decimal(&mut self.0, octet.into());
        }
        self.0.push(b':');
        push_decimal(&mut self.0, v4.port().into());
        self.0.push(b'"');
    }

    fn finish(mut self) -> String {
        self.0.push(b'}');
        // Only whole UTF-8 strings went in.
        String::from_utf8(self.0).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Room reserved for one line (nginx's are about 450 bytes).
const LINE_BYTES: usize = 640;

/// `n` in decimal, as `Display` writes it.
fn push_decimal(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0_u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// Milliseconds with microsecond precision.
fn millis(ns: Option<u64>) -> Option<f64> {
    ns.map(|ns| {
        let us = (ns / 1_000) as f64;
        us / 1_000.0
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
        // RFC 3339 digits and separators, SocketAddr (IPv6 as `[::1]:80`): nothing to escape.
        o.plain("ts", clock.wall(self.request_first_ns).map(humantime::format_rfc3339_micros));
        o.field("service", &*self.service);
        o.field("direction", self.role.as_str());
        o.field("pid", self.pid);
        o.field("tid", self.tid);
        o.field("method", &*self.method);
        o.field("target", self.target.as_str());
        o.field("route", &*self.route);
        o.field("status", self.status);
        o.field("duration_ms", millis(self.duration_ns()));
        o.field("request_bytes", self.request_body_bytes);
        o.field("response_bytes", self.response_body_bytes);
        o.addr("local", self.local);
        o.addr("peer", self.peer);
        o.hex("trace_id", self.trace_id().as_ref().map(|t| &t.0[..]));
        o.hex("span_id", self.span_id().as_ref().map(|s| &s.0[..]));
        o.hex("parent_span_id", self.parent_span_id().as_ref().map(|s| &s.0[..]));
        o.field("correlation_id", self.correlation_id());
        o.field("job_id", self.job_id.as_deref());
        o.field("version", self.version.map(|v| v.as_str()));
        o.field("host", self.host());
        o.field("user_agent", self.user_agent());
        o.field("content_type", self.content_type());
        o.field("flags", self.flags.names());
        o.field("ttfb_ms", millis(self.ttfb_ns()));
        o.field("conn_id", self.conn_id);
        o.field("tls", self.tls);
        o.field("link", self.link().map(|l| l.as_str()));
        o.field("propagated", self.propagated);
        // Tells exchanges from database operations (`"kind":"operation"`).
        o.field("kind", "exchange");
        let extras: serde_json::Map<String, Value> = self
            .response_headers
            .extras()
            // Later entries win: the request's value over the response's.
            .chain(self.request_headers.extras())
            .map(|(n, v)| (n.to_string(), Value::from(v)))
            .collect();
        if !extras.is_empty() {
            o.field("headers", Value::Object(extras));
        }
        if let Some(status) = &self.job_status {
            o.field("job_status", status.as_str());
        }
        if let Some(e) = &self.exception {
            o.field("exception", serde_json::json!({"type": e.kind, "message": e.message}));
        }
        if let Some(id) = &self.sentry_event_id {
            o.field("sentry_event_id", id.as_str());
        }
        if let Some(mcp) = &self.mcp {
            o.field("mcp", serde_json::to_value(mcp).unwrap_or(Value::Null));
        }
        o.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_nanos_is_the_wall_time_since_1970() {
        for (mono, offset) in [(5, 1_700_000_000_123_456_789), (u64::MAX, 0), (1_000, -999), (1_000, -1_001)] {
            let clock = WallClock { offset_ns: offset };
            let via_wall =
                clock.wall(mono).and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos() as u64);
            assert_eq!(clock.unix_nanos(mono), via_wall, "{mono} {offset}");
        }
        assert_eq!(WallClock { offset_ns: -1_001 }.unix_nanos(1_000), None);
    }

    /// What a field printed as when it was built as a `Value` first.
    fn as_value(key: &str, v: Value) -> String {
        format!("{{{}:{}}}", Value::from(key), v)
    }

    fn one(key: &str, v: impl Serialize) -> String {
        let mut o = Obj::new();
        o.field(key, v);
        o.finish()
    }

    #[test]
    fn fields_print_as_their_values_did() {
        for s in ["", "plain", "q\"uote\\", "ctl\u{1}\u{8}\t\n\r\u{c}\u{1f}\u{7f}", "é/ü✓", "</script>"] {
            assert_eq!(one("k", s), as_value("k", Value::from(s)), "{s:?}");
            assert_eq!(one("k", Some(s)), as_value("k", Value::from(s)), "{s:?}");
        }
        assert_eq!(one("k", None::<&str>), as_value("k", Value::Null));
        for ns in [0, 999, 1_000, 99_000, 1_000_000, 123_456_789, u64::MAX] {
            assert_eq!(one("k", millis(Some(ns))), as_value("k", Value::from((ns / 1_000) as f64 / 1_000.0)), "{ns}");
        }
        assert_eq!(one("k", Some(404_u16)), as_value("k", Value::from(404_u16)));
        assert_eq!(one("k", u64::MAX), as_value("k", Value::from(u64::MAX)));
        assert_eq!(
            one("k", vec!["truncated", "midstream"]),
            as_value("k", Value::from(vec!["truncated", "midstream"]))
        );
        let mut o = Obj::new();
        o.plain("a", "1.2.3.4:5".parse::<SocketAddr>().ok());
        o.plain("b", None::<u8>);
        assert_eq!(o.finish(), r#"{"a":"1.2.3.4:5","b":null}"#);
    }

    #[test]
    fn addresses_and_ids_print_as_their_display() {
        for a in
            ["0.0.0.0:0", "255.255.255.255:65535", "10.0.0.1:8080", "127.0.0.1:39092", "[::1]:80", "[fe80::1%2]:443"]
        {
            let a: SocketAddr = a.parse().unwrap_or_else(|e| panic!("{a}: {e}"));
            let mut o = Obj::new();
            o.addr("a", Some(a));
            assert_eq!(o.finish(), format!(r#"{{"a":"{a}"}}"#));
        }
        let mut o = Obj::new();
        o.addr("a", None);
        assert_eq!(o.finish(), r#"{"a":null}"#);
        let t = crate::correlate::TraceId([0, 1, 0x0f, 0x10, 0x7f, 0x80, 0xab, 0xff, 9, 8, 7, 6, 5, 4, 3, 2]);
        let mut o = Obj::new();
        o.hex("t", Some(&t.0));
        o.hex("n", None);
        assert_eq!(o.finish(), format!(r#"{{"t":"{t}","n":null}}"#));
    }
}
