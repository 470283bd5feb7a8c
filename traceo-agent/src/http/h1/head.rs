//! Parsing a complete HTTP/1.x head (start line + header fields) into what framing needs
//! and what the exchange keeps.

use std::borrow::Cow;

use crate::http::headers::{HeaderSelection, KeptHeaders, utf8_lossy};
use crate::http::parser::{Kind, ParseErrorKind, Version};
use crate::http::redact::redact_target;

use super::startline::{Line, overlong_request_line, request_line, status_line};

/// Stored targets are cut to this many bytes.
const MAX_STORED_TARGET: usize = 4096;

/// The start line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// `target` is already redacted.
    Request {
        method: Cow<'static, str>,
        target: String,
        version: Version,
    },
    Response {
        version: Version,
        status: u16,
    },
}

/// Header facts that decide framing and protocol switches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    pub content_length: Option<u64>,
    /// Transfer-Encoding present.
    pub transfer_encoding: bool,
    /// ... and its last coding is `chunked`.
    pub chunked: bool,
    pub upgrade: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub start: Start,
    pub headers: KeptHeaders,
    pub framing: Framing,
}

/// A head that failed; `start` is kept when the start line itself was fine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadError {
    pub kind: ParseErrorKind,
    pub start: Option<Start>,
}

/// Index just past the blank line ending a head or trailer section in `buf`, searching
/// from `from` (callers back up over bytes that may start a terminator): the first `\n`
/// followed by `\n` or `\r\n`. One memchr per line; a head has a few lines, so this costs
/// less than setting up two substring searches per head.
pub fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    let hay = buf.get(from..)?;
    for nl in memchr::memchr_iter(b'\n', hay) {
        match (hay.get(nl + 1), hay.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(from + nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(from + nl + 3),
            _ => {}
        }
    }
    None
}

/// The start line alone, for early validation and for heads that fail later.
pub fn parse_start(buf: &[u8], kind: Kind) -> Line<(Start, usize)> {
    match kind {
        Kind::Request => match request_line(buf) {
            Line::Yes(l) => {
                let start = Start::Request {
                    method: Cow::Borrowed(l.method),
                    target: stored_target(l.target),
                    version: l.version,
                };
                Line::Yes((start, l.len))
            }
            Line::No => Line::No,
            Line::Partial => Line::Partial,
        },
        Kind::Response => match status_line(buf) {
            Line::Yes(l) => Line::Yes((Start::Response { version: l.version, status: l.status }, l.len)),
            Line::No => Line::No,
            Line::Partial => Line::Partial,
        },
    }
}

/// Whether `buf` starts with a valid start line, without building it (the head is parsed
/// whole once its blank line is in).
pub fn check_start(buf: &[u8], kind: Kind) -> Line<()> {
    match kind {
        Kind::Request => match request_line(buf) {
            Line::Yes(_) => Line::Yes(()),
            Line::No => Line::No,
            Line::Partial => Line::Partial,
        },
        Kind::Response => match status_line(buf) {
            Line::Yes(_) => Line::Yes(()),
            Line::No => Line::No,
            Line::Partial => Line::Partial,
        },
    }
}

/// What the connection frames a message by: whether a request is HEAD or CONNECT, a
/// response's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFacts {
    Request { head: bool, connect: bool },
    Response { status: u16 },
}

impl Start {
    pub fn facts(&self) -> StartFacts {
        match self {
            Start::Request { method, .. } => {
                StartFacts::Request { head: method == "HEAD", connect: method == "CONNECT" }
            }
            Start::Response { status, .. } => StartFacts::Response { status: *status },
        }
    }
}

/// A target as exchanges keep it: redacted, cut to [`MAX_STORED_TARGET`] bytes.
fn stored_target(raw: &[u8]) -> String {
    let raw = utf8_lossy(raw.get(..MAX_STORED_TARGET * 2).unwrap_or(raw));
    let mut target = redact_target(&raw);
    if target.len() > MAX_STORED_TARGET {
        let mut cut = MAX_STORED_TARGET;
        while !target.is_char_boundary(cut) {
            cut -= 1;
        }
        target.truncate(cut);
    }
    target
}

/// A request line too long to read: its method and the start of its target (the version
/// is not known; 1.1 is assumed).
pub fn overlong_start(buf: &[u8]) -> Option<Start> {
    let (method, target) = overlong_request_line(buf)?;
    Some(Start::Request { method: Cow::Borrowed(method), target: stored_target(target), version: Version::Http11 })
}

/// The error for a start line that is not one.
pub fn bad_start(kind: Kind) -> ParseErrorKind {
    match kind {
        Kind::Request => ParseErrorKind::BadRequestLine,
        Kind::Response => ParseErrorKind::BadStatusLine,
    }
}

/// Parse a whole head (`buf` ends with its blank line).
pub fn parse_head(buf: &[u8], kind: Kind, sel: &HeaderSelection) -> Result<Head, HeadError> {
    let (start, line_len) = match parse_start(buf, kind) {
        Line::Yes(s) => s,
        Line::No | Line::Partial => {
            return Err(HeadError { kind: bad_start(kind), start: None });
        }
    };
    let fail = |k| HeadError { kind: k, start: Some(start.clone()) };
    let mut headers = KeptHeaders::default();
    let mut framing = Framing::default();
    let mut rest = buf.get(line_len..).unwrap_or_default();
    while let Some(&first) = rest.first() {
        let (line, next) = split_line(rest);
        rest = next;
        if first == b' ' || first == b'\t' || line == b"\r" || line.is_empty() {
            // Obsolete line folding (a continuation of a field we don't need whole), or
            // the blank line.
            continue;
        }
        let Some((name, value)) = field(line) else {
            return Err(fail(ParseErrorKind::BadHeader));
        };
        apply_framing(&mut framing, name, value).map_err(fail)?;
        if let Some(wanted) = sel.wanted(name) {
            headers.push_kept(wanted, value);
        }
    }
    if kind == Kind::Request && framing.transfer_encoding && !framing.chunked {
        // A request body without chunked framing has no knowable end.
        return Err(fail(ParseErrorKind::BadTransferEncoding));
    }
    Ok(Head { start, headers, framing })
}

/// The line at the start of `buf` (without its `\n`) and what follows it: the one memchr
/// per line of every head.
fn split_line(buf: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b'\n', buf) {
        Some(nl) => (buf.get(..nl).unwrap_or_default(), buf.get(nl + 1..).unwrap_or_default()),
        None => (buf, &[]),
    }
}

/// A field line's name (a token up to the first `:`) and trimmed value, read in one pass:
/// the name is short, so it is scanned byte by byte and checked as it goes.
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&c| !TCHAR[usize::from(c)])?;
    if colon == 0 || line.get(colon) != Some(&b':') {
        return None;
    }
    Some((line.get(..colon)?, trim(line.get(colon + 1..)?)))
}

fn apply_framing(f: &mut Framing, name: &[u8], value: &[u8]) -> Result<(), ParseErrorKind> {
    // The length tells most fields apart before any case-blind compare.
    if !matches!(name.len(), 7 | 14 | 17) {
        return Ok(());
    }
    if name.eq_ignore_ascii_case(b"content-length") {
        // `5, 5` (merged duplicates) is allowed; differing values are not.
        for part in value.split(|&b| b == b',') {
            let n = parse_decimal(trim(part)).ok_or(ParseErrorKind::BadContentLength)?;
            if f.content_length.is_some_and(|prev| prev != n) {
                return Err(ParseErrorKind::BadContentLength);
            }
            f.content_length = Some(n);
        }
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        let last = value.split(|&b| b == b',').map(trim).rfind(|c| !c.is_empty());
        f.transfer_encoding = true;
        f.chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
    } else if name.eq_ignore_ascii_case(b"upgrade") {
        f.upgrade = !value.is_empty();
    }
    Ok(())
}

fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    b.iter().try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or_default()
}

/// RFC 9110 `tchar`s.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric();
        c += 1;
    }
    let extra = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn req(head: &str) -> Result<Head, HeadError> {
        parse_head(head.as_bytes(), Kind::Request, &HeaderSelection::default())
    }

    #[test]
    fn framing_headers() {
        let h = req("POST /x HTTP/1.1\r\nContent-Length: 5, 5\r\nHost: a\r\n\r\n").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(h.framing.content_length, Some(5));
        assert_eq!(h.headers.get("host"), Some("a"));
        let h = req("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").unwrap_or_else(|e| panic!("{e:?}"));
        assert!(h.framing.chunked);
    }

    #[test]
    fn bad_heads_are_classified() {
        let kind = |s: &str| req(s).err().map(|e| (e.kind, e.start.is_some()));
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some((ParseErrorKind::BadContentLength, true))
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Some((ParseErrorKind::BadContentLength, true))
        );
        assert_eq!(
            kind("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some((ParseErrorKind::BadTransferEncoding, true))
        );
        assert_eq!(kind("GET / HTTP/1.1\r\nno colon here\r\n\r\n"), Some((ParseErrorKind::BadHeader, true)));
        assert_eq!(kind("GETX / HTTP/1.1\r\n\r\n"), Some((ParseErrorKind::BadRequestLine, false)));
    }

    #[test]
    fn blank_line_search() {
        assert_eq!(find_blank_line(b"a\r\n\r\nrest", 0), Some(5));
        assert_eq!(find_blank_line(b"a\n\nrest", 0), Some(3));
        assert_eq!(find_blank_line(b"a\r\nb\r\n", 0), None);
        assert_eq!(find_blank_line(b"\n\r\n", 0), Some(3));
        assert_eq!(find_blank_line(b"a\nb\n\nc\r\n\r\n", 0), Some(5));
        assert_eq!(find_blank_line(b"a\r\n\r\nb\n\n", 0), Some(5));
        assert_eq!(find_blank_line(b"a\r\n\r\nb\n\n", 4), Some(8));
        assert_eq!(find_blank_line(b"ab", 5), None);
    }

    /// Against the definition, on every string of up to 7 bytes over `a`, `\r`, `\n`.
    #[test]
    fn blank_line_matches_its_definition() {
        fn reference(buf: &[u8], from: usize) -> Option<usize> {
            let hay = buf.get(from..)?;
            (0..hay.len()).find_map(|i| {
                if hay[i..].starts_with(b"\n\n") {
                    Some(from + i + 2)
                } else if hay[i..].starts_with(b"\n\r\n") {
                    Some(from + i + 3)
                } else {
                    None
                }
            })
        }
        for len in 0..=7u32 {
            for code in 0..3usize.pow(len) {
                let buf: Vec<u8> = (0..len).map(|i| [b'a', b'\r', b'\n'][code / 3usize.pow(i) % 3]).collect();
                for from in 0..=buf.len() + 1 {
                    assert_eq!(find_blank_line(&buf, from), reference(&buf, from), "{buf:?} from {from}");
                }
            }
        }
    }
}
