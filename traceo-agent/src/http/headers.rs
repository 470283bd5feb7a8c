//! Which headers an exchange keeps: a fixed default set plus the user's extras, never a
//! secret (see `redact`), values bounded.

use super::redact::is_secret_header;

/// Kept by default (lower case).
pub const DEFAULT_HEADERS: [&str; 8] = [
    "host",
    "user-agent",
    "content-type",
    "traceparent",
    "tracestate",
    "x-correlation-id",
    "x-request-id",
    "mcp-session-id",
];

/// A kept value longer than this is cut (at a character boundary).
const MAX_VALUE_BYTES: usize = 1024;
/// At most this many headers are kept per message.
const MAX_KEPT: usize = 32;

/// The names to keep, lower case, secrets removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderSelection {
    names: Vec<String>,
}

impl HeaderSelection {
    pub fn new(extra: &[String]) -> Self {
        let mut names: Vec<String> = DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect();
        for name in extra {
            let lower = name.trim().to_ascii_lowercase();
            if !lower.is_empty() && !is_secret_header(&lower) && !names.contains(&lower) {
                names.push(lower);
            }
        }
        HeaderSelection { names }
    }

    /// Keep a header called `name` (any case)?
    pub fn wants(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name)) && !is_secret_header(name)
    }

    /// Is `name` one of the user's extras rather than a default?
    pub fn is_extra(name: &str) -> bool {
        !DEFAULT_HEADERS.iter().any(|d| d.eq_ignore_ascii_case(name))
    }
}

impl Default for HeaderSelection {
    fn default() -> Self {
        HeaderSelection::new(&[])
    }
}

/// Kept headers of one message, names lower case, in arrival order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptHeaders(Vec<(String, String)>);

impl KeptHeaders {
    /// Keep `value` under `name`; a repeated name keeps its first value.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        if self.0.len() >= MAX_KEPT || self.get(name).is_some() {
            return;
        }
        let text = String::from_utf8_lossy(value);
        let mut text = text.trim();
        if text.len() > MAX_VALUE_BYTES {
            let mut cut = MAX_VALUE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = text.get(..cut).unwrap_or_default();
        }
        let text = super::redact::redact_header_value(text);
        self.0.push((name.to_ascii_lowercase(), text));
    }

    /// The value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_are_added_but_secrets_never() {
        let sel = HeaderSelection::new(&[
            "X-Tenant".to_string(),
            "Authorization".to_string(),
            "X-Api-Key".to_string(),
            "Cookie".to_string(),
        ]);
        assert!(sel.wants("x-tenant"));
        assert!(sel.wants("HOST"));
        assert!(!sel.wants("authorization"));
        assert!(!sel.wants("x-api-key"));
        assert!(!sel.wants("cookie"));
        assert!(!sel.wants("accept"));
    }

    #[test]
    fn kept_values_are_bounded_and_first_wins() {
        let mut kept = KeptHeaders::default();
        kept.push("Host", b" a.example ");
        kept.push("host", b"b.example");
        kept.push("X-Long", "é".repeat(1000).as_bytes());
        assert_eq!(kept.get("HOST"), Some("a.example"));
        let long = kept.get("x-long").unwrap_or_else(|| panic!("x-long kept"));
        assert!(long.len() <= MAX_VALUE_BYTES, "len {}", long.len());
    }
}
