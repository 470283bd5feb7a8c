//! What is stored (record files, `--events` output) never keeps a secret: before a payload is
//! written, the values of secret headers, secret query and form fields and secret-looking JSON
//! string fields are masked with `*`, in place. Lengths never change, so a record file still
//! replays with the same framing (Content-Length, chunk sizes) through the same pipeline.
//!
//! Per event, best effort on what one event holds: a secret split across two syscalls is
//! masked from where its event sees its name. The policy (which names are secrets) is
//! `http::redact`'s.

use std::borrow::Cow;

use crate::http::{is_secret_header, is_secret_query_key};

const MASK: u8 = b'*';

/// `payload` with every secret value masked (borrowed when there was none).
pub fn scrub(payload: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut mask = |from: usize, to: usize, payload: &[u8]| {
        if to > from {
            let buf = out.get_or_insert_with(|| payload.to_vec());
            buf[from..to].fill(MASK);
        }
    };
    for (start, end) in lines(payload) {
        if let Some((from, to)) = secret_header_value(&payload[start..end]) {
            mask(start + from, start + to, payload);
        }
    }
    for (from, to) in secret_pairs(payload).chain(secret_json_strings(payload)) {
        mask(from, to, payload);
    }
    match out {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(payload),
    }
}

/// (start, end) of each line, without its `\r\n`.
fn lines(p: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= p.len() {
            return None;
        }
        let start = pos;
        let nl = p[start..].iter().position(|b| *b == b'\n').map_or(p.len(), |i| start + i);
        pos = nl + 1;
        let end = if nl > start && p[nl - 1] == b'\r' { nl - 1 } else { nl };
        Some((start, end))
    })
}

/// A `Name: value` line with a secret name: the value's range.
fn secret_header_value(line: &[u8]) -> Option<(usize, usize)> {
    let colon = line.iter().position(|b| *b == b':')?;
    let name = std::str::from_utf8(&line[..colon]).ok()?;
    let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if !token || !is_secret_header(name) {
        return None;
    }
    let value = colon + 1 + line[colon + 1..].iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    Some((value, line.len()))
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.%[]".contains(&b)
}

/// `key=value` pairs (query strings, form bodies, cookies in a request line) with a secret
/// key: the values' ranges.
fn secret_pairs(p: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    p.iter().enumerate().filter(|(_, b)| **b == b'=').filter_map(move |(eq, _)| {
        let key_start = p[..eq].iter().rposition(|b| !is_key_byte(*b)).map_or(0, |i| i + 1);
        let key = std::str::from_utf8(&p[key_start..eq]).ok()?;
        if key.is_empty() || !is_secret_query_key(key) {
            return None;
        }
        let end = p[eq + 1..].iter().position(|b| b"&; \r\n\"'#".contains(b)).map_or(p.len(), |i| eq + 1 + i);
        Some((eq + 1, end))
    })
}

/// `"key": "value"` in JSON with a secret key: the string value's range (inside the quotes).
fn secret_json_strings(p: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    p.iter().enumerate().filter(|(_, b)| **b == b':').filter_map(move |(colon, _)| {
        // The key: a quoted string just before the colon (spaces allowed).
        let before = p[..colon].iter().rposition(|b| !b.is_ascii_whitespace())?;
        if p[before] != b'"' {
            return None;
        }
        let open = p[..before].iter().rposition(|b| *b == b'"')?;
        let key = std::str::from_utf8(&p[open + 1..before]).ok()?;
        if !is_secret_query_key(key) {
            return None;
        }
        let value = colon + 1 + p[colon + 1..].iter().take_while(|b| b.is_ascii_whitespace()).count();
        if p.get(value) != Some(&b'"') {
            return None;
        }
        let mut i = value + 1;
        while i < p.len() && p[i] != b'"' {
            i += if p[i] == b'\\' { 2 } else { 1 };
        }
        Some((value + 1, i.min(p.len())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: &[u8]) -> String {
        String::from_utf8_lossy(&scrub(p)).into_owned()
    }

    #[test]
    fn secret_headers_query_and_body_values_are_masked_keeping_lengths() {
        let req = b"POST /login?next=/home&access_token=abc123 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t\r\ncookie: sid=42\r\nContent-Type: application/json\r\n\r\n{\"user\": \"bob\", \"password\": \"hunter\\\"2\", \"n\": 1}";
        let out = s(req);
        assert_eq!(out.len(), req.len());
        for secret in ["abc123", "s3cr3t", "sid=42", "hunter"] {
            assert!(!out.contains(secret), "{secret} kept: {out}");
        }
        for kept in ["next=/home", "Host: x", "\"user\": \"bob\"", "\"n\": 1", "Content-Type: application/json"] {
            assert!(out.contains(kept), "{kept} lost: {out}");
        }
        let form = b"username=bob&pwd=pw1&remember=on";
        assert_eq!(s(form), "username=bob&pwd=***&remember=on");
        let resp = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=xyz; HttpOnly\r\n\r\nok";
        assert!(!s(resp).contains("xyz"));
    }

    #[test]
    fn nothing_secret_is_borrowed_unchanged() {
        let plain = b"GET /hello?page=2 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(matches!(scrub(plain), Cow::Borrowed(_)));
        assert!(matches!(scrub(b"\x00\x01binary=\xff"), Cow::Borrowed(_)));
    }
}
