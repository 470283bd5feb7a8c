//! Secrets never leave the parser: secret headers are never kept (whatever the user asks
//! for), and sensitive query-string values and path parameters are replaced in targets.
//! One policy: the same key list serves targets, URL-shaped header values and the payload
//! scrubbing of everything stored (`scrub`).

/// Replacement for a redacted value.
pub const REDACTED: &str = "REDACTED";

/// Header names that are secrets exactly.
const SECRET_HEADERS: [&str; 6] =
    ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"];

/// A header whose name contains one of these is a secret too.
const SECRET_HEADER_PARTS: [&str; 7] = ["api-key", "apikey", "api_key", "token", "secret", "password", "auth"];

/// A query key (or form, JSON or path-parameter name) containing one of these has its value
/// redacted. Broad on purpose: a page number redacted costs little, a password kept a lot.
const SECRET_QUERY_PARTS: [&str; 16] = [
    "token",
    "key",
    "pass",
    "pwd",
    "secret",
    "sig",
    "auth",
    "credential",
    "session",
    "jwt",
    "code",
    "otp",
    "nonce",
    "csrf",
    "xsrf",
    "private",
];

/// Is a header with this name (any case) a secret?
pub fn is_secret_header(name: &str) -> bool {
    // Lower-cased on the stack: this runs for header names on the parse path.
    let name = name.trim().as_bytes();
    let mut stack = [0u8; 64];
    let heap;
    let lower: &[u8] = match stack.get_mut(..name.len()) {
        Some(b) => {
            b.copy_from_slice(name);
            b.make_ascii_lowercase();
            b
        }
        None => {
            heap = name.to_ascii_lowercase();
            &heap
        }
    };
    SECRET_HEADERS.iter().any(|s| s.as_bytes() == lower)
        || SECRET_HEADER_PARTS.iter().any(|p| lower.windows(p.len()).any(|w| w == p.as_bytes()))
}

/// Does a query key (any case, percent-encoded or not) name a secret?
pub fn is_secret_query_key(key: &str) -> bool {
    let lower = percent_decode(key).to_ascii_lowercase();
    SECRET_QUERY_PARTS.iter().any(|p| lower.contains(p))
}

/// `target` with sensitive query values, every path parameter (`;jsessionid=...`: they
/// carry sessions far more often than anything else) and URL user-info replaced by
/// [`REDACTED`].
pub fn redact_target(target: &str) -> String {
    // Nothing to redact without a query, a path parameter or user-info (most targets).
    if !needs_redaction(target) {
        return target.to_owned();
    }
    let (before_query, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = String::with_capacity(target.len());
    for (i, segment) in redact_userinfo(before_query).split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match segment.split_once(';') {
            Some((name, _)) => {
                out.push_str(name);
                out.push(';');
                out.push_str(REDACTED);
            }
            None => out.push_str(segment),
        }
    }
    if let Some(query) = query {
        out.push('?');
        // `&` and `;` both separate pairs (the latter in older forms).
        let mut rest = query;
        while !rest.is_empty() {
            let end = rest.find(['&', ';']).unwrap_or(rest.len());
            let (pair, tail) = rest.split_at(end);
            match pair.split_once('=') {
                Some((key, _)) if is_secret_query_key(key) => {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
            if let Some(sep) = tail.chars().next() {
                out.push(sep);
                rest = &tail[1..];
            } else {
                rest = tail;
            }
        }
    }
    out
}

/// A kept header's value: URL-shaped ones (Referer, Location, Origin...) are redacted like
/// targets.
pub fn redact_header_value(value: &str) -> String {
    // What `redact_target` would return unchanged (most values): no need to ask whether
    // it is URL-shaped.
    if !needs_redaction(value) {
        return value.to_owned();
    }
    let url = super::route::scheme_separator(value).is_some();
    if url || value.starts_with('/') { redact_target(value) } else { value.to_owned() }
}

/// Only a query, a path parameter or user-info can hold a secret in a target.
fn needs_redaction(target: &str) -> bool {
    let b = target.as_bytes();
    // A plain loop beats setting up a vector search on the short values most are.
    if b.len() < 64 {
        return b.iter().any(|c| matches!(c, b'?' | b';' | b'@'));
    }
    memchr::memchr3(b'?', b';', b'@', b).is_some()
}

/// Absolute-form targets (`http://user:pass@host/...`) may carry credentials.
fn redact_userinfo(path: &str) -> String {
    let Some(scheme_end) = path.find("://") else {
        return path.to_string();
    };
    let after = scheme_end + 3;
    let rest = path.get(after..).unwrap_or_default();
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = rest.get(..authority_end).unwrap_or_default();
    match authority.rfind('@') {
        Some(at) => {
            format!("{}{REDACTED}@{}", path.get(..after).unwrap_or_default(), rest.get(at + 1..).unwrap_or_default())
        }
        None => path.to_string(),
    }
}

/// Lenient `%XX` decoding, only to compare key names.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_headers_are_recognised_in_any_case() {
        for name in [
            "Authorization",
            "PROXY-AUTHORIZATION",
            "cookie",
            "Set-Cookie",
            "X-Api-Key",
            "Api-Key",
            "X-Goog-Api-Key",
            "X-Auth-Token",
            "X-Client-Secret",
            "x-apikey",
        ] {
            assert!(is_secret_header(name), "{name} should be secret");
        }
        for name in ["Host", "User-Agent", "X-Request-ID", "Content-Type", "traceparent"] {
            assert!(!is_secret_header(name), "{name} should not be secret");
        }
        // Names longer than the stack buffer, and padded ones.
        let long = "X-Vendor-".repeat(10);
        assert!(is_secret_header(&format!("{long}Auth-Token")) && !is_secret_header(&long));
        assert!(is_secret_header(" Cookie ") && !is_secret_header(""));
    }

    #[test]
    fn query_values_of_sensitive_keys_are_redacted() {
        let cases = [
            ("/a?token=abc&x=1", "/a?token=REDACTED&x=1"),
            ("/a?x=1&API_KEY=s3cr3t", "/a?x=1&API_KEY=REDACTED"),
            ("/a?access%5Ftoken=t", "/a?access%5Ftoken=REDACTED"),
            ("/a?X-Amz-Signature=ff&page=2", "/a?X-Amz-Signature=REDACTED&page=2"),
            ("/a?password=hunter2", "/a?password=REDACTED"),
            ("/a?flag&page=2", "/a?flag&page=2"),
            ("/plain", "/plain"),
            ("/a/b/c.txt", "/a/b/c.txt"),
            ("http://example.com/x", "http://example.com/x"),
            ("http://bob@example.com/x", "http://REDACTED@example.com/x"),
            ("http://bob:pw@example.com/x?q=1", "http://REDACTED@example.com/x?q=1"),
            (
                "/a?pwd=1&pass=2&sig=3&jwt=4&code=5&page=6",
                "/a?pwd=REDACTED&pass=REDACTED&sig=REDACTED&jwt=REDACTED&code=REDACTED&page=6",
            ),
            ("/a?x=1;password=p;y=2", "/a?x=1;password=REDACTED;y=2"),
            ("/hello;jsessionid=ABC123/more?x=1", "/hello;REDACTED/more?x=1"),
            ("/a;b=c", "/a;REDACTED"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_target(input), want, "input {input}");
        }
    }

    #[test]
    fn url_shaped_header_values_are_redacted_like_targets() {
        assert_eq!(
            redact_header_value("https://app.example/cb?access_token=abc&x=1"),
            "https://app.example/cb?access_token=REDACTED&x=1"
        );
        assert_eq!(redact_header_value("python-httpx/0.28.1"), "python-httpx/0.28.1");
    }

    #[test]
    fn broken_percent_escapes_do_not_panic() {
        assert!(!is_secret_query_key("%"));
        assert!(!is_secret_query_key("%zz"));
        assert!(is_secret_query_key("%74oken"));
    }
}
