//! Recognising HTTP/1.x start lines in bytes that may end early: used to detect the
//! protocol, to validate heads, and to resynchronise a lost stream.

use crate::http::parser::Version;

/// Methods recognised (a known list keeps binary protocols from passing as HTTP).
pub const METHODS: [&str; 20] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "PURGE",
    "QUERY",
];
const MAX_METHOD: usize = 9;
/// Longest request target recognised; the longest start line is a little more.
pub const MAX_TARGET: usize = 8192;
const MAX_REASON: usize = 512;

/// Result of matching bytes against a line pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<T> {
    /// A whole line matched.
    Yes(T),
    /// No line starting here can match.
    No,
    /// The bytes so far are a prefix of a possible match.
    Partial,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLine<'a> {
    pub method: &'static str,
    pub target: &'a [u8],
    pub version: Version,
    /// Bytes up to and including the line end.
    pub len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusLine {
    pub version: Version,
    pub status: u16,
    pub len: usize,
}

/// What the first bytes of a stream look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Response,
    Neither,
    NeedMore,
}

/// `METHOD SP target SP HTTP/1.x CRLF` (a bare LF is tolerated).
pub fn request_line(buf: &[u8]) -> Line<RequestLine<'_>> {
    let Some(sp) = within(buf, MAX_METHOD + 1).iter().position(|&b| b == b' ') else {
        let prefix_of_method = buf.len() <= MAX_METHOD && METHODS.iter().any(|m| m.as_bytes().starts_with(buf));
        return if prefix_of_method { Line::Partial } else { Line::No };
    };
    let name = buf.get(..sp).unwrap_or_default();
    let Some(method) = METHODS.iter().copied().find(|m| m.as_bytes() == name) else {
        return Line::No;
    };
    let rest = buf.get(sp + 1..).unwrap_or_default();
    let Some(tlen) = within(rest, MAX_TARGET + 1).iter().position(|&b| !is_target_byte(b)) else {
        return if rest.len() > MAX_TARGET { Line::No } else { Line::Partial };
    };
    if tlen == 0 || rest.get(tlen) != Some(&b' ') {
        return Line::No;
    }
    let target = rest.get(..tlen).unwrap_or_default();
    let after = rest.get(tlen + 1..).unwrap_or_default();
    let (version, vlen) = match version(after) {
        Line::Yes(v) => v,
        Line::No => return Line::No,
        Line::Partial => return Line::Partial,
    };
    match line_end(after.get(vlen..).unwrap_or_default()) {
        Line::Yes(n) => Line::Yes(RequestLine { method, target, version, len: sp + 1 + tlen + 1 + vlen + n }),
        Line::No => Line::No,
        Line::Partial => Line::Partial,
    }
}

/// `METHOD SP` and more target bytes than [`MAX_TARGET`]: a request line too long to be
/// read (`request_line` says `No`), though surely one. The method and the target's start.
pub fn overlong_request_line(buf: &[u8]) -> Option<(&'static str, &[u8])> {
    let sp = buf.iter().take(MAX_METHOD + 1).position(|&b| b == b' ')?;
    let name = buf.get(..sp)?;
    let method = METHODS.iter().copied().find(|m| m.as_bytes() == name)?;
    let target = buf.get(sp + 1..sp + 2 + MAX_TARGET)?;
    target.iter().all(|&b| is_target_byte(b)).then_some((method, target))
}

/// `HTTP/1.x SP 3DIGIT [SP reason] CRLF` (a bare LF is tolerated).
pub fn status_line(buf: &[u8]) -> Line<StatusLine> {
    let (version, vlen) = match version(buf) {
        Line::Yes(v) => v,
        Line::No => return Line::No,
        Line::Partial => return Line::Partial,
    };
    let rest = buf.get(vlen..).unwrap_or_default();
    let pattern = [b' ', b'1', b'0', b'0'];
    for (i, want) in pattern.iter().enumerate() {
        let Some(&got) = rest.get(i) else {
            return Line::Partial;
        };
        let ok = match i {
            0 => got == *want,
            1 => (b'1'..=b'5').contains(&got),
            _ => got.is_ascii_digit(),
        };
        if !ok {
            return Line::No;
        }
    }
    let status = rest.get(1..4).unwrap_or_default().iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let tail = rest.get(4..).unwrap_or_default();
    let reason_len = match tail.first() {
        Some(b' ') => {
            let reason = tail.get(1..).unwrap_or_default();
            match within(reason, MAX_REASON + 1).iter().position(|&b| b == b'\r' || b == b'\n') {
                Some(n) => n + 1,
                None if reason.len() > MAX_REASON => return Line::No,
                None => return Line::Partial,
            }
        }
        _ => 0,
    };
    match line_end(tail.get(reason_len..).unwrap_or_default()) {
        Line::Yes(n) => Line::Yes(StatusLine { version, status, len: vlen + 4 + reason_len + n }),
        Line::No => Line::No,
        Line::Partial => Line::Partial,
    }
}

/// Classify a stream by its first bytes; decisive by `CHECK_BYTES` (16).
pub fn classify(head: &[u8]) -> Class {
    match request_line(head) {
        Line::Yes(_) => return Class::Request,
        // Method, space and a target byte: as sure as a first segment can be.
        Line::Partial if head.iter().position(|&b| b == b' ').is_some_and(|i| head.len() > i + 1) => {
            return Class::Request;
        }
        Line::Partial => return Class::NeedMore,
        Line::No => {}
    }
    match status_line(head) {
        Line::Yes(_) => Class::Response,
        Line::Partial if head.len() >= 12 => Class::Response,
        Line::Partial => Class::NeedMore,
        Line::No => Class::Neither,
    }
}

/// `HTTP/1.0` or `HTTP/1.1`: the version and its length.
fn version(buf: &[u8]) -> Line<(Version, usize)> {
    // Whole versions first: one 8-byte compare each.
    match buf.get(..8) {
        Some(b"HTTP/1.1") => return Line::Yes((Version::Http11, 8)),
        Some(b"HTTP/1.0") => return Line::Yes((Version::Http10, 8)),
        _ => {}
    }
    const LIT: &[u8] = b"HTTP/1.";
    let n = buf.len().min(LIT.len());
    if buf.get(..n) != LIT.get(..n) {
        return Line::No;
    }
    match buf.get(LIT.len()) {
        None => Line::Partial,
        Some(b'0') => Line::Yes((Version::Http10, LIT.len() + 1)),
        Some(b'1') => Line::Yes((Version::Http11, LIT.len() + 1)),
        Some(_) => Line::No,
    }
}

/// At most the first `n` bytes of `buf` (a slice, so searches in it stay plain loops).
fn within(buf: &[u8], n: usize) -> &[u8] {
    buf.get(..n).unwrap_or(buf)
}

/// CRLF or LF: its length.
fn line_end(buf: &[u8]) -> Line<usize> {
    match (buf.first(), buf.get(1)) {
        (Some(b'\n'), _) => Line::Yes(1),
        (Some(b'\r'), Some(b'\n')) => Line::Yes(2),
        (Some(b'\r'), None) | (None, _) => Line::Partial,
        _ => Line::No,
    }
}

/// Visible ASCII, and bytes above it (some clients send raw UTF-8).
fn is_target_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let Line::Yes(l) = request_line(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n") else {
            panic!("should match");
        };
        assert_eq!((l.method, l.target, l.version, l.len), ("GET", &b"/a?b=c"[..], Version::Http11, 21));
        assert!(matches!(request_line(b"POST / HTTP/1.0\n"), Line::Yes(l) if l.len == 16));
        for partial in [&b""[..], b"GE", b"GET", b"GET ", b"GET /x", b"GET /x HTTP/1.", b"GET /x HTTP/1.1\r"] {
            assert_eq!(request_line(partial), Line::Partial, "{:?}", String::from_utf8_lossy(partial));
        }
        for bad in [
            &b"FOO / HTTP/1.1\r\n"[..],
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.1x",
            b"get / HTTP/1.1\r\n",
            b"\x16\x03\x01",
        ] {
            assert_eq!(request_line(bad), Line::No, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn status_lines() {
        assert!(matches!(status_line(b"HTTP/1.1 200 OK\r\n"), Line::Yes(l) if l.status == 200 && l.len == 17));
        assert!(
            matches!(status_line(b"HTTP/1.0 404\r\n"), Line::Yes(l) if l.status == 404 && l.version == Version::Http10)
        );
        assert_eq!(status_line(b"HTTP/1.1 20"), Line::Partial);
        assert_eq!(status_line(b"HTTP/1.1 200 O"), Line::Partial);
        assert_eq!(status_line(b"HTTP/1.1 600 X\r\n"), Line::No);
        assert_eq!(status_line(b"HTTP/2 200\r\n"), Line::No);
    }

    #[test]
    fn classification_is_decisive_early() {
        assert_eq!(classify(b"GET /"), Class::Request);
        assert_eq!(classify(b"GET"), Class::NeedMore);
        assert_eq!(classify(b"HTTP/1.1 200"), Class::Response);
        assert_eq!(classify(b"HTTP/1.1 2"), Class::NeedMore);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Class::Neither);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Class::Neither);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Class::Neither);
    }
}
