//! Body framing: Content-Length, chunked (with trailers) and read-until-close, counting
//! uncaptured bytes toward the length and keeping a bounded prefix of the decoded body.

use crate::http::parser::ParseErrorKind;

use super::head::find_blank_line;

/// A chunk-size line longer than this is not one.
const MAX_CHUNK_LINE: usize = 1024;

/// How a body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    Length(u64),
    UntilClose,
    /// Reading a chunk-size line.
    Size(Vec<u8>),
    ChunkData(u64),
    /// The CRLF after chunk data; how many bytes of it remain.
    ChunkEnd(u8),
    /// Trailer section, seeded with the size line's `\n` so an empty one is a blank line.
    Trailers(Vec<u8>),
    Done,
}

/// The body of one message being read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    mode: Mode,
    /// Decoded body bytes so far, captured or not.
    pub size: u64,
    pub prefix: Vec<u8>,
    prefix_cap: usize,
    /// Bytes went missing: the prefix stops growing (it must stay contiguous).
    pub lost: bool,
    max_trailers: usize,
}

impl Body {
    pub fn new(framing: BodyFraming, prefix_cap: usize, max_trailers: usize) -> Self {
        let mode = match framing {
            BodyFraming::None | BodyFraming::Length(0) => Mode::Done,
            BodyFraming::Length(n) => Mode::Length(n),
            BodyFraming::Chunked => Mode::Size(Vec::new()),
            BodyFraming::UntilClose => Mode::UntilClose,
        };
        Body { mode, size: 0, prefix: Vec::new(), prefix_cap, lost: false, max_trailers }
    }

    pub fn is_done(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Consume captured bytes up to the body's end; returns how many were used.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ParseErrorKind> {
        let mut pos = 0;
        while pos < bytes.len() && !self.is_done() {
            let rest = bytes.get(pos..).unwrap_or_default();
            pos += self.feed_some(rest)?;
        }
        Ok(pos)
    }

    /// One step of `feed`: consumes at least one byte of a non-empty `rest`, or fails.
    fn feed_some(&mut self, rest: &[u8]) -> Result<usize, ParseErrorKind> {
        match &mut self.mode {
            Mode::Length(left) | Mode::ChunkData(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                *left -= take as u64;
                if *left == 0 {
                    self.end_of_data();
                }
                self.record(rest.get(..take).unwrap_or_default());
                Ok(take)
            }
            Mode::UntilClose => {
                self.record(rest);
                Ok(rest.len())
            }
            Mode::Size(line) => {
                let nl = rest.iter().position(|&b| b == b'\n');
                let take = nl.map_or(rest.len(), |i| i + 1);
                line.extend_from_slice(rest.get(..take).unwrap_or_default());
                if line.len() > MAX_CHUNK_LINE {
                    return Err(ParseErrorKind::BadChunkSize);
                }
                if nl.is_some() {
                    let size = parse_chunk_size(line).ok_or(ParseErrorKind::BadChunkSize)?;
                    self.mode = if size == 0 { Mode::Trailers(b"\n".to_vec()) } else { Mode::ChunkData(size) };
                }
                Ok(take)
            }
            Mode::ChunkEnd(left) => match rest.first() {
                Some(b'\r') if *left == 2 => {
                    *left = 1;
                    Ok(1)
                }
                Some(b'\n') => {
                    self.mode = Mode::Size(Vec::new());
                    Ok(1)
                }
                _ => Err(ParseErrorKind::BadChunkSize),
            },
            Mode::Trailers(buf) => {
                let old = buf.len();
                buf.extend_from_slice(rest);
                match find_blank_line(buf, old.saturating_sub(2)) {
                    Some(end) => {
                        self.mode = Mode::Done;
                        Ok(end.saturating_sub(old).min(rest.len()))
                    }
                    None if buf.len() > self.max_trailers => Err(ParseErrorKind::HeaderTooLarge),
                    None => Ok(rest.len()),
                }
            }
            Mode::Done => Ok(0),
        }
    }

    /// Account for `n` uncaptured bytes; returns how many belong to this body.
    pub fn feed_gap(&mut self, n: u64) -> Result<u64, ParseErrorKind> {
        if n == 0 {
            return Ok(0);
        }
        self.lost = true;
        match &mut self.mode {
            Mode::Length(left) | Mode::ChunkData(left) => {
                let take = (*left).min(n);
                *left -= take;
                self.size = self.size.saturating_add(take);
                if *left == 0 {
                    self.end_of_data();
                }
                Ok(take)
            }
            Mode::UntilClose => {
                self.size = self.size.saturating_add(n);
                Ok(n)
            }
            Mode::ChunkEnd(left) => {
                // Assume the CRLF went missing with the data it follows.
                let take = u64::from(*left).min(n);
                *left -= take as u8;
                if *left == 0 {
                    self.mode = Mode::Size(Vec::new());
                }
                Ok(take)
            }
            Mode::Size(_) | Mode::Trailers(_) => Err(ParseErrorKind::LostBytesInHeaders),
            Mode::Done => Ok(0),
        }
    }

    /// The stream ended; true when that is how this body ends (read-until-close).
    pub fn eof(&mut self) -> bool {
        let complete = matches!(self.mode, Mode::UntilClose | Mode::Done);
        self.mode = Mode::Done;
        complete
    }

    /// Length or chunk data fully read.
    fn end_of_data(&mut self) {
        self.mode = match self.mode {
            Mode::ChunkData(_) => Mode::ChunkEnd(2),
            _ => Mode::Done,
        };
    }

    fn record(&mut self, data: &[u8]) {
        self.size = self.size.saturating_add(data.len() as u64);
        if !self.lost {
            let room = self.prefix_cap.saturating_sub(self.prefix.len());
            self.prefix.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
        }
    }
}

/// `1a3f[;ext]\r\n` -> 0x1a3f.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next()?;
    let digits: &[u8] = match digits.iter().rposition(|b| !matches!(b, b' ' | b'\t')) {
        Some(end) => digits.get(..=end)?,
        None => return None,
    };
    if digits.len() > 16 {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(body: &mut Body, input: &[u8]) -> usize {
        body.feed(input).unwrap_or_else(|e| panic!("feed failed: {e:?}"))
    }

    #[test]
    fn chunked_with_trailers_decodes_and_stops_at_end() {
        let mut b = Body::new(BodyFraming::Chunked, 64, 1024);
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let used = feed_all(&mut b, wire);
        assert!(b.is_done());
        assert_eq!(used, wire.len() - 4);
        assert_eq!(b.size, 9);
        assert_eq!(b.prefix, b"Wikipedia");
    }

    #[test]
    fn chunked_byte_by_byte_matches_whole() {
        let wire = b"3\r\nabc\r\n0\r\n\r\n";
        let mut b = Body::new(BodyFraming::Chunked, 64, 1024);
        for (i, byte) in wire.iter().enumerate() {
            let used = feed_all(&mut b, std::slice::from_ref(byte));
            assert_eq!(used, 1, "byte {i}");
        }
        assert!(b.is_done());
        assert_eq!((b.size, b.prefix.as_slice()), (3, &b"abc"[..]));
    }

    #[test]
    fn bad_chunk_size_is_an_error() {
        let mut b = Body::new(BodyFraming::Chunked, 64, 1024);
        assert_eq!(b.feed(b"zz\r\n"), Err(ParseErrorKind::BadChunkSize));
        let mut b = Body::new(BodyFraming::Chunked, 64, 1024);
        assert_eq!(b.feed(b"3\r\nabcX"), Err(ParseErrorKind::BadChunkSize));
    }

    #[test]
    fn gaps_count_toward_length_and_stop_the_prefix() {
        let mut b = Body::new(BodyFraming::Length(10), 64, 1024);
        assert_eq!(feed_all(&mut b, b"abc"), 3);
        assert_eq!(b.feed_gap(20), Ok(7));
        assert!(b.is_done());
        assert_eq!((b.size, b.prefix.as_slice()), (10, &b"abc"[..]));
        let mut b = Body::new(BodyFraming::Chunked, 64, 1024);
        assert_eq!(b.feed_gap(1), Err(ParseErrorKind::LostBytesInHeaders));
    }

    #[test]
    fn until_close_ends_at_eof_and_length_does_not() {
        let mut b = Body::new(BodyFraming::UntilClose, 2, 1024);
        assert_eq!(feed_all(&mut b, b"hello"), 5);
        assert!(b.eof());
        assert_eq!((b.size, b.prefix.as_slice()), (5, &b"he"[..]));
        let mut b = Body::new(BodyFraming::Length(9), 2, 1024);
        assert!(!b.eof());
    }
}
