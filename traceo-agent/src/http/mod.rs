//! HTTP exchange reconstruction: from the bytes crossing socket syscalls to one record per
//! request/response.
//!
//! ```text
//! Event ─> tracker (connections, LRU, expiry)
//!            └─> conn (detect protocol, pair requests with responses -> Exchange)
//!                  └─> parser::ProtocolParser ── h1 (HTTP/1.x: role, framing, resync)
//! ```
//! Where things live: request/response pairing in `pairing`, message framing in `h1::body`,
//! heads in `h1::head`, resynchronisation in `h1::resync`, the JSON line in `json_line`.

mod conn;
mod detect;
mod exchange;
mod h1;
mod headers;
mod json_line;
mod lru;
mod pairing;
mod parser;
mod redact;
pub mod route;
mod stats;
mod tracker;

#[cfg(test)]
pub(crate) mod tests;

pub use exchange::{ConnInfo, Exchange, Flags, Link, RequestSeen, Role, SpanRef, TraceContext, Tracked};
pub use h1::{Http1Parser, Limits};
pub use headers::{DEFAULT_HEADERS, HeaderSelection, KeptHeaders};
pub use json_line::{EXCHANGE_FIELDS, WallClock};
pub use parser::{Check, HttpMessage, Kind, Output, ParseErrorKind, ProtocolParser, SegKind, Segment, Version};
pub use redact::{REDACTED, is_secret_header, is_secret_query_key, redact_header_value, redact_target};
pub use route::RouteNormalizer;
pub use stats::TrackerStats;
pub use tracker::{ConnTracker, TrackerConfig};
