//! Sentry error events tied to the requests that raised them. A traced process using a
//! Sentry SDK posts each event as an *envelope* (`POST /api/<project>/envelope/`); the agent
//! sees that client exchange like any other. `envelope` reads what it needs from the body
//! (gzip-decoded when the SDK compressed it), and `join` gives the event's id to the one
//! failed server exchange of the same process it describes, or counts it unmatched.
//!
//! Only the event id ever leaves the agent (`sentry.event_id`): exception messages,
//! breadcrumbs, user data and the rest of the event are read in memory and dropped.

mod envelope;
mod join;

pub use envelope::{Parsed, SentryEvent, parse};
pub use join::{SentryConfig, SentryJoin, SentryOut, SentryStats};

use crate::{fnv, http::route::without_query};

/// Body bytes kept for an envelope request (the default prefix is smaller than a typical
/// compressed error event; the kernel capture still bounds what arrives).
pub const ENVELOPE_PREFIX_BYTES: usize = 64 * 1024;

/// A digest of a request's method and path (query and fragment left out, `%XX` decoded, as
/// the SDK reports it): what a Sentry event names of the request it describes.
pub fn request_shape(method: &str, target: &str) -> u64 {
    // Upper-cased byte by byte: no allocation per server request.
    let mut h = method.bytes().fold(fnv::START, |h, b| fnv::step(h, b.to_ascii_uppercase()));
    h = fnv::step(h, b' ');
    // One pass over the path, as it comes (per server request): decoded only from its first
    // escape on (what precedes an escape decodes to itself).
    for (i, &b) in target.as_bytes().iter().enumerate() {
        match b {
            b'?' | b'#' => break,
            b'%' => {
                let rest = target.get(i..).map(without_query).unwrap_or_default();
                return fnv::extend(h, &join::percent_decoded(rest));
            }
            _ => h = fnv::step(h, b),
        }
    }
    h
}

/// `POST /api/<project id>/envelope/` (query allowed: older SDKs put their key there).
pub fn is_envelope_request(method: &str, target: &str) -> bool {
    // The method first: the parser asks for every message, and few are POSTs.
    if !method.eq_ignore_ascii_case("POST") {
        return false;
    }
    let path = without_query(target);
    let Some(rest) = path.strip_prefix("/api/") else { return false };
    let Some((project, tail)) = rest.split_once('/') else { return false };
    !project.is_empty() && project.bytes().all(|b| b.is_ascii_digit()) && (tail == "envelope/" || tail == "envelope")
}

#[cfg(test)]
mod tests {
    use super::{is_envelope_request, request_shape};

    #[test]
    fn request_shape_is_the_digest_it_always_was() {
        // The function as it was before the method was upper-cased byte by byte (into an
        // owned copy then), its FNV-1a written out.
        let before = |method: &str, target: &str| {
            let path = target.split(['?', '#']).next().unwrap_or("");
            let digest = |h: u64, b: &u8| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            let h = method.to_ascii_uppercase().as_bytes().iter().fold(0xcbf2_9ce4_8422_2325, digest);
            super::join::percent_decoded(path).iter().fold(digest(h, &b' '), digest)
        };
        for (method, target) in [
            ("GET", "/fail/%33"),
            ("get", "/fail/3?x=1"),
            ("Post", "/api/42/envelope/#frag"),
            ("pAtCh", "/a%20b/%zz"),
            ("", ""),
            ("DELETE", "/"),
            ("gét", "/é?q"),
            ("GET", "/a%2"),
            ("GET", "/x?%41"),
            ("GET", "/%41%42#x%43"),
            ("GET", "%"),
        ] {
            assert_eq!(request_shape(method, target), before(method, target), "{method} {target}");
        }
        assert_eq!(request_shape("get", "/fail/%33"), request_shape("GET", "/fail/3"));
        assert_eq!(request_shape("GET", "/fail/3"), 0x0fe4_4d39_7c76_e340, "FNV-1a of `GET /fail/3`");
    }

    #[test]
    fn envelope_targets() {
        assert!(is_envelope_request("POST", "/api/42/envelope/"));
        assert!(is_envelope_request("post", "/api/1/envelope/?sentry_key=*"));
        assert!(!is_envelope_request("GET", "/api/42/envelope/"));
        assert!(!is_envelope_request("POST", "/api/42/store/"));
        assert!(!is_envelope_request("POST", "/api/x/envelope/"));
        assert!(!is_envelope_request("POST", "/api//envelope/"));
        assert!(!is_envelope_request("POST", "/api/42/envelope/extra"));
    }
}
