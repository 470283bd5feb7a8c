//! Finding the next start line in a stream whose place was lost (midstream join, parse
//! error, uncaptured bytes in a head). Bounded: only a possible partial line is carried
//! between segments.

use bytes::Bytes;

use crate::http::parser::Kind;

use super::startline::{Line, request_line, status_line};

/// What to look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// One kind of start line.
    Only(Kind),
    /// Either kind (a midstream connection whose role is not known yet).
    Either,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanner {
    /// The tail of earlier bytes that may begin a start line.
    carry: Vec<u8>,
}

impl Scanner {
    /// No earlier bytes carried.
    pub fn is_empty(&self) -> bool {
        self.carry.is_empty()
    }

    /// Scan `bytes` (continuing the carry). On a match, returns its kind and the stream from
    /// the start line on; otherwise every byte is consumed.
    pub fn scan(&mut self, bytes: &Bytes, want: Want) -> Option<(Kind, Bytes)> {
        let carried = std::mem::take(&mut self.carry);
        let carry_len = carried.len();
        let joined: Vec<u8>;
        let hay: &[u8] = if carried.is_empty() {
            bytes
        } else {
            joined = [carried.as_slice(), bytes.as_ref()].concat();
            &joined
        };
        for i in 0..hay.len() {
            if !is_candidate(hay, i) {
                continue;
            }
            let at = hay.get(i..).unwrap_or_default();
            match try_at(at, want) {
                Line::Yes(kind) => {
                    let rest = match i.checked_sub(carry_len) {
                        Some(j) => bytes.slice(j..),
                        None => Bytes::copy_from_slice(at),
                    };
                    return Some((kind, rest));
                }
                // Start lines hold no line break, so nothing later can be a whole one.
                Line::Partial => {
                    self.carry = at.to_vec();
                    return None;
                }
                Line::No => {}
            }
        }
        None
    }

    /// Bytes went missing: what was carried can't continue.
    pub fn clear(&mut self) {
        self.carry.clear();
    }
}

/// A start line begins with an upper-case letter not preceded by one.
fn is_candidate(hay: &[u8], i: usize) -> bool {
    let here = hay.get(i).is_some_and(u8::is_ascii_uppercase);
    let prev_upper = i.checked_sub(1).and_then(|p| hay.get(p)).is_some_and(u8::is_ascii_uppercase);
    here && !prev_upper
}

fn try_at(at: &[u8], want: Want) -> Line<Kind> {
    let req = || match request_line(at) {
        Line::Yes(_) => Line::Yes(Kind::Request),
        Line::No => Line::No,
        Line::Partial => Line::Partial,
    };
    let resp = || match status_line(at) {
        Line::Yes(_) => Line::Yes(Kind::Response),
        Line::No => Line::No,
        Line::Partial => Line::Partial,
    };
    match want {
        Want::Only(Kind::Request) => req(),
        Want::Only(Kind::Response) => resp(),
        Want::Either => match (req(), resp()) {
            (Line::Yes(k), _) | (_, Line::Yes(k)) => Line::Yes(k),
            (Line::No, Line::No) => Line::No,
            _ => Line::Partial,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_request_line_after_garbage() {
        let mut s = Scanner::default();
        let input = Bytes::from_static(b"}\"x\":1}GETTY POST /a HTTP/1.1\r\nHost: x\r\n\r\n");
        let (kind, rest) = s.scan(&input, Want::Only(Kind::Request)).unwrap_or_else(|| panic!("should find POST"));
        assert_eq!(kind, Kind::Request);
        assert!(rest.starts_with(b"POST /a"), "{rest:?}");
    }

    #[test]
    fn a_line_split_across_segments_is_found() {
        let mut s = Scanner::default();
        let want = Want::Either;
        assert_eq!(s.scan(&Bytes::from_static(b"junk HTTP/1.1 2"), want), None);
        let (kind, rest) = s
            .scan(&Bytes::from_static(b"04 No Content\r\n\r\n"), want)
            .unwrap_or_else(|| panic!("should find the status line"));
        assert_eq!(kind, Kind::Response);
        assert_eq!(&rest[..], b"HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn cleared_carry_does_not_join_across_a_gap() {
        let mut s = Scanner::default();
        let want = Want::Only(Kind::Request);
        assert_eq!(s.scan(&Bytes::from_static(b"GET /a HT"), want), None);
        s.clear();
        assert_eq!(s.scan(&Bytes::from_static(b"TP/1.1\r\n"), want), None);
    }
}
