//! One Sentry envelope body -> the error event it carries. The format: a header line (JSON,
//! with `event_id`), then items, each a header line (JSON: `type`, optional `length`) and a
//! payload (`length` bytes, else up to the next newline). SDKs gzip the body by default
//! (sentry-python 2.x: level 9; brotli when the `brotli` module is installed, which is not
//! read here: such envelopes count as unreadable).
//!
//! Bad input never panics: everything is bounded and every step may fail into `Unreadable`.

use std::io::Read;

use serde_json::Value;

/// Decoded bytes read at most (a compressed body can expand a thousandfold).
const MAX_DECODED: u64 = 1 << 20;
/// Items looked at at most.
const MAX_ITEMS: usize = 64;
/// Kept string fields are cut to this many bytes (they only serve matching).
const MAX_FIELD: usize = 2048;

/// What an error event says, as far as the agent uses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SentryEvent {
    /// 32 lowercase hex digits.
    pub event_id: String,
    pub level: Option<String>,
    /// The last exception of `exception.values` (the one raised last: Sentry lists chained
    /// exceptions oldest first).
    pub exception_type: Option<String>,
    /// Read, never exported (it can quote user data).
    pub exception_value: Option<String>,
    /// The request the event describes.
    pub request_method: Option<String>,
    /// The path of `request.url` (no query, no fragment).
    pub request_path: Option<String>,
    pub transaction: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Event(SentryEvent),
    /// A well-formed envelope without an error event (sessions, transactions, reports).
    NoEvent,
    /// Not readable: cut short, compressed otherwise, or malformed.
    Unreadable,
}

/// Read an envelope body (possibly only its first bytes, possibly gzip-compressed).
pub fn parse(body: &[u8]) -> Parsed {
    let Some(plain) = decode(body) else { return Parsed::Unreadable };
    parse_plain(&plain)
}

/// Identity or gzip (told by the magic bytes: the Content-Encoding header is not kept). A
/// gzip stream cut short yields what it decoded so far.
fn decode(body: &[u8]) -> Option<Vec<u8>> {
    if body.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let mut dec = flate2::read::GzDecoder::new(body).take(MAX_DECODED);
        // An error (a cut or damaged stream) keeps what was decoded before it.
        let _ = dec.read_to_end(&mut out);
        return (!out.is_empty()).then_some(out);
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    (*first == b'{').then(|| body[..body.len().min(MAX_DECODED as usize)].to_vec())
}

fn parse_plain(plain: &[u8]) -> Parsed {
    let (header, mut rest) = split_line(plain);
    let Ok(header) = serde_json::from_slice::<Value>(header) else { return Parsed::Unreadable };
    let header_id = header.get("event_id").and_then(Value::as_str).and_then(event_id);
    for _ in 0..MAX_ITEMS {
        if rest.is_empty() {
            return Parsed::NoEvent;
        }
        let (item_line, after) = split_line(rest);
        if item_line.iter().all(u8::is_ascii_whitespace) {
            rest = after;
            continue;
        }
        let Ok(item) = serde_json::from_slice::<Value>(item_line) else { return Parsed::Unreadable };
        let (payload, next) = match item.get("length").and_then(Value::as_u64) {
            Some(len) => {
                let Some(payload) = usize::try_from(len).ok().and_then(|l| after.get(..l)) else {
                    // Cut short by the capture: an event's payload is needed whole.
                    return Parsed::Unreadable;
                };
                let tail = &after[payload.len()..];
                (payload, tail.strip_prefix(b"\n").unwrap_or(tail))
            }
            None => split_line(after),
        };
        if item.get("type").and_then(Value::as_str) == Some("event") {
            return event(payload, header_id);
        }
        rest = next;
    }
    Parsed::Unreadable
}

/// The line before the first newline, and what follows it.
fn split_line(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == b'\n') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

fn event(payload: &[u8], header_id: Option<String>) -> Parsed {
    let Ok(ev) = serde_json::from_slice::<Value>(payload) else { return Parsed::Unreadable };
    let Some(event_id) = ev.get("event_id").and_then(Value::as_str).and_then(event_id).or(header_id) else {
        return Parsed::Unreadable;
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| cut(s).to_owned());
    let last_exception = ev.pointer("/exception/values").and_then(Value::as_array).and_then(|v| v.last());
    let request = ev.get("request");
    Parsed::Event(SentryEvent {
        event_id,
        level: text(ev.get("level")),
        exception_type: text(last_exception.and_then(|e| e.get("type"))),
        exception_value: text(last_exception.and_then(|e| e.get("value"))),
        request_method: text(request.and_then(|r| r.get("method"))),
        request_path: request.and_then(|r| r.get("url")).and_then(Value::as_str).map(|u| cut(url_path(u)).to_owned()),
        transaction: text(ev.get("transaction")),
    })
}

/// Sentry writes ids as 32 hex digits (a UUID without dashes); anything else is refused.
fn event_id(s: &str) -> Option<String> {
    let id: String = s.chars().filter(|c| *c != '-').collect();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// `http://host:port/p/a?q#f` -> `/p/a`; a bare path stays itself.
fn url_path(url: &str) -> &str {
    let after_authority = match url.find("://") {
        Some(i) => url[i + 3..].find('/').map_or("/", |j| &url[i + 3 + j..]),
        None => url,
    };
    after_authority.split(['?', '#']).next().unwrap_or("")
}

fn cut(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const ID: &str = "91f876988c0b4f6f804b9a94ff30e458";

    fn envelope(event: &str, with_length: bool) -> Vec<u8> {
        let mut b = format!("{{\"event_id\":\"{ID}\",\"sent_at\":\"2026-12-03T08:29:10Z\"}}\n").into_bytes();
        // A session item first: the event is not always the first item.
        b.extend_from_slice(b"{\"type\":\"session\"}\n{\"sid\":\"x\"}\n");
        let item = if with_length {
            format!("{{\"type\":\"event\",\"length\":{}}}\n", event.len())
        } else {
            "{\"type\":\"event\"}\n".to_owned()
        };
        b.extend_from_slice(item.as_bytes());
        b.extend_from_slice(event.as_bytes());
        b.push(b'\n');
        b
    }

    fn event_json() -> String {
        serde_json::json!({
            "level": "error",
            "exception": {"values": [
                {"type": "KeyError", "value": "'a'"},
                {"type": "ValueError", "value": "boom 7"}
            ]},
            "event_id": ID,
            "transaction": "/fail/{n}",
            "breadcrumbs": {"values": [{"message": "secret stuff\nwith a newline"}]},
            "request": {"url": "http://127.0.0.1:8000/fail/7?x=1", "method": "GET"}
        })
        .to_string()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(b).unwrap();
        enc.finish().unwrap()
    }

    fn expected() -> SentryEvent {
        SentryEvent {
            event_id: ID.into(),
            level: Some("error".into()),
            exception_type: Some("ValueError".into()),
            exception_value: Some("boom 7".into()),
            request_method: Some("GET".into()),
            request_path: Some("/fail/7".into()),
            transaction: Some("/fail/{n}".into()),
        }
    }

    #[test]
    fn reads_plain_and_gzip_envelopes() {
        for with_length in [true, false] {
            let plain = envelope(&event_json(), with_length);
            assert_eq!(parse(&plain), Parsed::Event(expected()));
            assert_eq!(parse(&gzip(&plain)), Parsed::Event(expected()));
        }
    }

    #[test]
    fn a_payload_cut_short_is_unreadable() {
        let plain = envelope(&event_json(), true);
        let zipped = gzip(&plain);
        assert_eq!(parse(&plain[..plain.len() - 40]), Parsed::Unreadable);
        assert_eq!(parse(&zipped[..zipped.len() / 2]), Parsed::Unreadable);
    }

    #[test]
    fn envelopes_without_an_event() {
        let b = format!("{{\"event_id\":\"{ID}\"}}\n{{\"type\":\"session\",\"length\":2}}\n{{}}\n");
        assert_eq!(parse(b.as_bytes()), Parsed::NoEvent);
        assert_eq!(parse(b"{}\n"), Parsed::NoEvent);
    }

    #[test]
    fn the_header_id_serves_when_the_event_has_none_and_bad_ids_are_refused() {
        let ev = r#"{"level":"error","request":{"url":"/p","method":"POST"}}"#;
        let Parsed::Event(e) = parse(&envelope(ev, true)) else { panic!("an event") };
        assert_eq!((e.event_id.as_str(), e.request_path.as_deref()), (ID, Some("/p")));
        let bad = "{\"event_id\":\"../../etc\"}\n{\"type\":\"event\"}\n{\"level\":\"error\"}\n";
        assert_eq!(parse(bad.as_bytes()), Parsed::Unreadable);
        assert_eq!(event_id("91F87698-8C0B-4F6F-804B-9A94FF30E458").as_deref(), Some(ID));
    }

    #[test]
    fn garbage_never_panics() {
        for b in [
            &b""[..],
            b"\x1f\x8b",
            b"\x1f\x8b\x08\x00garbage",
            b"{",
            b"{}\n{\"type\":\"event\",\"length\":18446744073709551615}\n{}",
            b"{}\n{\"type\":\"event\",\"length\":-1}\n{}",
            b"{}\n\n\n{\"type\":\"event\"}\n[1,2]",
            b"{}\n{\"type\":\"event\"}\n{\"exception\":{\"values\":[]},\"request\":{\"url\":7}}",
            b"\xff\xfe\n\n",
        ] {
            let _ = parse(b);
        }
        assert_eq!(url_path("http://h"), "/");
        assert_eq!(url_path("https://h:1/a/b#f"), "/a/b");
        assert_eq!(cut(&"é".repeat(2000)).len(), MAX_FIELD);
    }
}
