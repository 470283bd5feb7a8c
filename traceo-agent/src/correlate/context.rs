//! What a request carries about its trace: W3C `traceparent` / `tracestate`, and the
//! correlation values (`X-Correlation-ID`, else `X-Request-ID`) used as join keys.

use crate::http::KeptHeaders;

use super::ids::{SpanId, TraceId};

/// A parsed `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    /// The caller's span.
    pub parent_id: SpanId,
    pub flags: u8,
}

impl TraceParent {
    /// `00-<32 hex>-<16 hex>-<2 hex>`. Later versions may append fields after a dash, and are
    /// read as version 00; version `ff` and malformed values are ignored (W3C rules).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let version = parts.next()?;
        let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let extra = parts.next();
        let version_ok = match version {
            "00" => extra.is_none(),
            "ff" => false,
            v => v.len() == 2 && v.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        };
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !version_ok || flags.len() != 2 || !lower_hex(flags) {
            return None;
        }
        Some(TraceParent {
            trace_id: TraceId::parse(trace)?,
            parent_id: SpanId::parse(parent)?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }
}

/// The trace facts of one request's headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub parent: Option<TraceParent>,
    /// Only kept with a valid `traceparent` (W3C: tracestate without it is meaningless).
    pub trace_state: Option<String>,
    pub correlation_id: Option<String>,
}

impl Carried {
    pub fn from_headers(headers: &KeptHeaders) -> Carried {
        let parent = headers.get("traceparent").and_then(TraceParent::parse);
        let trace_state =
            parent.and(headers.get("tracestate")).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        let correlation_id = ["x-correlation-id", "x-request-id"]
            .iter()
            .find_map(|name| headers.get(name))
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        Carried { parent, trace_state, correlation_id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_follows_the_w3c_rules() {
        let tp = TraceParent::parse(TP).expect("valid");
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((tp.parent_id.to_string().as_str(), tp.flags), ("00f067aa0ba902b7", 1));
        // A later version with an extra field is read as 00.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what").is_some());
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "garbage",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn carried_context_and_correlation_values() {
        let mut h = KeptHeaders::default();
        h.push("tracestate", b"congo=t61rcWkgMzE");
        h.push("X-Request-ID", b"req-7");
        let c = Carried::from_headers(&h);
        assert_eq!((c.parent, c.trace_state, c.correlation_id.as_deref()), (None, None, Some("req-7")));
        h.push("traceparent", TP.as_bytes());
        h.push("x-correlation-id", b"corr-1");
        let c = Carried::from_headers(&h);
        assert!(c.parent.is_some());
        assert_eq!(c.trace_state.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(c.correlation_id.as_deref(), Some("corr-1"), "X-Correlation-ID wins over X-Request-ID");
    }
}
