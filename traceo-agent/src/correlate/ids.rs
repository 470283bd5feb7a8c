//! Trace and span ids: W3C sizes, lower-case hex, never all zero.

use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two lower-case hex digits of a byte.
fn hex_pair(b: u8) -> [u8; 2] {
    [HEX_DIGITS[usize::from(b >> 4)], HEX_DIGITS[usize::from(b & 0xf)]]
}

/// `bytes` as lower-case hex appended to `out`. Ids are written for every exchange (JSON
/// lines, log records): a formatter call per byte made them the costliest fields of a line.
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(2 * bytes.len());
    bytes.iter().for_each(|&b| out.extend_from_slice(&hex_pair(b)));
}

/// An id's hex through one `write_str` (ids are at most 16 bytes: one stack buffer).
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut text = [0u8; 32];
    for (pair, &b) in text.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&hex_pair(b));
    }
    let len = (2 * bytes.len()).min(text.len());
    f.write_str(std::str::from_utf8(&text[..len]).unwrap_or_default())
}

/// `N` bytes from `2N` lower-case hex digits; `None` for anything else or all zeros (which W3C
/// trace context declares invalid).
fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    out.iter().any(|b| *b != 0).then_some(out)
}

impl TraceId {
    pub fn parse(s: &str) -> Option<TraceId> {
        parse_hex(s).map(TraceId)
    }
}

impl SpanId {
    pub fn parse(s: &str) -> Option<SpanId> {
        parse_hex(s).map(SpanId)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// Random ids (splitmix64 seeded from the kernel): ids only need to be unique, not secret.
pub struct IdGen {
    state: u64,
}

impl IdGen {
    pub fn from_entropy() -> IdGen {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most `seed.len()` bytes into the buffer it is given.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if n != seed.len() as isize {
            // Without the syscall: the clock and pid still make clashes between runs unlikely.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            seed = (now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32).to_le_bytes();
        }
        IdGen::seeded(u64::from_le_bytes(seed))
    }

    /// Repeatable ids, for tests.
    pub fn seeded(seed: u64) -> IdGen {
        IdGen { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Never zero: splitmix64 is a bijection, so only one state in 2^64 gives 0; skip it.
    fn nonzero(&mut self) -> u64 {
        loop {
            let v = self.next_u64();
            if v != 0 {
                return v;
            }
        }
    }

    pub fn trace_id(&mut self) -> TraceId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.nonzero().to_be_bytes());
        id[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        TraceId(id)
    }

    pub fn span_id(&mut self) -> SpanId {
        SpanId(self.nonzero().to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_invalid_ids() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(TraceId::parse(t).map(|id| id.to_string()).as_deref(), Some(t));
        assert_eq!(SpanId::parse("00f067aa0ba902b7").map(|id| id.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        for bad in ["", "00000000000000000000000000000000", "4BF92F3577B34DA6A3CE929D0E0E4736", "4bf92f35", "zz"] {
            assert_eq!(TraceId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(SpanId::parse("0000000000000000"), None);
    }

    #[test]
    fn pushed_hex_is_what_display_writes() {
        let id = TraceId([0x00, 0x0f, 0x10, 0x9a, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xab, 0xcd]);
        let mut out = b"x".to_vec();
        push_hex(&mut out, &id.0);
        assert_eq!(out, b"x000f109aff010203040506070809abcd");
        assert_eq!(id.to_string().as_bytes(), &out[1..]);
    }

    #[test]
    fn generated_ids_are_distinct_and_nonzero() {
        let mut g = IdGen::seeded(0);
        let spans: std::collections::HashSet<_> = (0..1000).map(|_| g.span_id()).collect();
        assert_eq!(spans.len(), 1000);
        assert!(spans.iter().all(|s| s.0 != [0; 8]));
        assert_ne!(g.trace_id(), g.trace_id());
        assert_ne!(IdGen::from_entropy().span_id(), IdGen::from_entropy().span_id());
    }
}
