//! Which headers an exchange keeps: a fixed default set plus the user's extras, never a
//! secret (see `redact`), values bounded.

use std::sync::Arc;

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
    names: Vec<Arc<str>>,
    /// Bit [`slot`] set for each name: most fields of a head are not kept, and their
    /// length and first letter alone say so.
    slots: u64,
}

impl HeaderSelection {
    pub fn new(extra: &[String]) -> Self {
        let mut names: Vec<Arc<str>> = DEFAULT_HEADERS.iter().map(|&s| Arc::from(s)).collect();
        for name in extra {
            let lower = name.trim().to_ascii_lowercase();
            if !lower.is_empty() && !is_secret_header(&lower) && !names.iter().any(|n| **n == *lower) {
                names.push(Arc::from(lower));
            }
        }
        let slots = names.iter().fold(0, |m, n| m | 1u64 << slot(n.as_bytes()));
        HeaderSelection { names, slots }
    }

    /// The kept (lower-case) name of a header called `name` (any case), if it is kept. No
    /// secret is ever kept: `new` leaves them out, and the check is case-blind too.
    /// Inlined: the filter turns most fields away at the call, without a call.
    #[inline]
    pub fn wanted(&self, name: &[u8]) -> Option<Wanted<'_>> {
        if self.slots & (1u64 << slot(name)) == 0 {
            return None;
        }
        self.find(name)
    }

    #[inline(never)]
    fn find(&self, name: &[u8]) -> Option<Wanted<'_>> {
        let i = self.names.iter().position(|n| n.as_bytes().eq_ignore_ascii_case(name))?;
        // The defaults come first (`new`).
        Some(Wanted { name: &self.names[i], extra: i >= DEFAULT_HEADERS.len() })
    }

    /// Keep a header called `name` (any case)? (The parser asks [`Self::wanted`].)
    #[cfg(test)]
    pub fn wants(&self, name: &str) -> bool {
        self.wanted(name.as_bytes()).is_some()
    }

    /// Is `name` one of the user's extras rather than a default?
    pub fn is_extra(name: &str) -> bool {
        !DEFAULT_HEADERS.iter().any(|d| d.eq_ignore_ascii_case(name))
    }
}

/// A header [`HeaderSelection::wanted`] keeps: its lower-case name, and whether it is one of
/// the user's extras (`--header`) rather than a default.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    pub name: &'a Arc<str>,
    pub extra: bool,
}

/// A name's bit in [`HeaderSelection`]'s filter: from its length and first letter (any
/// case), below 64.
#[inline]
fn slot(name: &[u8]) -> u32 {
    let first = name.first().map_or(0, u8::to_ascii_lowercase);
    (name.len() as u32).wrapping_mul(7).wrapping_add(u32::from(first)) & 63
}

impl Default for HeaderSelection {
    fn default() -> Self {
        HeaderSelection::new(&[])
    }
}

/// `bytes` as text, invalid sequences replaced: checked whole first (word at a time), as
/// the header values and targets this reads nearly always are valid.
pub fn utf8_lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Kept headers of one message, names lower case, in arrival order. The names are shared
/// with the selection (no allocation per field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeptHeaders(Vec<Kept>);

/// One kept header; `extra` if the user asked for it (spans and JSON lines show only those
/// by name).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept {
    name: Arc<str>,
    value: String,
    extra: bool,
}

impl KeptHeaders {
    /// Keep `value` under `name` (any case); a repeated name keeps its first value.
    pub fn push(&mut self, name: &str, value: &[u8]) {
        let name = Arc::from(name.to_ascii_lowercase());
        let extra = HeaderSelection::is_extra(&name);
        self.push_kept(Wanted { name: &name, extra }, value);
    }

    /// [`Self::push`] with the name as [`HeaderSelection::wanted`] gave it (lower case).
    pub fn push_kept(&mut self, wanted: Wanted<'_>, value: &[u8]) {
        let name = wanted.name;
        // Kept names are lower case already: compared as they are.
        if self.0.len() >= MAX_KEPT || self.0.iter().any(|k| k.name == *name) {
            return;
        }
        let text = utf8_lossy(value);
        let mut text = text.trim();
        if text.len() > MAX_VALUE_BYTES {
            let mut cut = MAX_VALUE_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = text.get(..cut).unwrap_or_default();
        }
        let value = super::redact::redact_header_value(text);
        self.0.push(Kept { name: Arc::clone(name), value, extra: wanted.extra });
    }

    /// The value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|k| k.name.eq_ignore_ascii_case(name)).map(|k| k.value.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|k| (&*k.name, k.value.as_str()))
    }

    /// The user's extras among them (`--header`).
    pub fn extras(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter(|k| k.extra).map(|k| (&*k.name, k.value.as_str()))
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
    fn names_of_any_length_are_matched_case_blind() {
        let long = format!("x-{}", "a".repeat(70));
        let sel = HeaderSelection::new(&[long.to_uppercase(), "X-Tenant".to_string()]);
        let wanted = |name: &[u8]| sel.wanted(name).map(|w| (w.name.to_string(), w.extra));
        assert_eq!(wanted(long.as_bytes()), Some((long.clone(), true)));
        assert_eq!(wanted(b"X-TENANT"), Some(("x-tenant".to_owned(), true)));
        assert_eq!(wanted(b"Content-Type"), Some(("content-type".to_owned(), false)));
        // Same length as a kept name, not kept.
        assert_eq!(wanted(b"x-tenanT2"), None);
        assert_eq!(wanted(b"x-tenans"), None);
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
