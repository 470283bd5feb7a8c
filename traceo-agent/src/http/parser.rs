//! The protocol-parser contract (DeepFlow style: `check` / `parse` / `reset`) and the
//! protocol-neutral values parsers produce. HTTP/1.x is the first implementation; an HTTP/2
//! parser would produce the same [`HttpMessage`]s.

use bytes::{Buf, Bytes};

use crate::events::{Data, Direction};

use super::headers::KeptHeaders;

/// Bytes of a stream's start that `ProtocolParser::check` must decide on.
pub const CHECK_BYTES: usize = 16;

/// What a parser thinks of the first bytes of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Match,
    NoMatch,
    NeedMore,
}

/// Request or response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Request,
    Response,
}

/// HTTP protocol version of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
        }
    }
}

/// One piece of a direction's byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegKind {
    /// Captured bytes.
    Bytes(Bytes),
    /// Bytes that crossed the socket but were not captured (capture limit, sendfile).
    Gap(u64),
    /// The stream ended (peer EOF or close).
    Eof,
}

/// A piece of stream plus when and by whom it moved.
///
/// Timing choice: `start_ns` is when the first byte of the piece was in the process's hands:
/// the syscall's `enter_ns` for egress (the process started sending) and its `exit_ns` for
/// ingress (a blocking read's enter time says when the process began waiting, not when data
/// came, and on idle keep-alive connections that would add the idle time to durations).
/// `end_ns` is always `exit_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub kind: SegKind,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The runtime context of the thread that moved these bytes (`Data::task_ctx`).
    pub task_ctx: u64,
    /// The TCP sequence number just past this piece (`Data::tcp_seq` + its length), so
    /// that what is left of it after any `advance` still knows where it starts.
    pub seq_end: Option<u32>,
}

impl Segment {
    /// The captured bytes and the uncaptured rest of one data event, each to `each` in
    /// stream order (not returned: two segments by value were copied twice per event).
    /// An ingress event that moved nothing is the peer's EOF. The payload is taken from the
    /// event (a slice of it would count a reference more, and drop it, per event).
    pub fn from_data(d: &mut Data, mut each: impl FnMut(Segment)) {
        let start_ns = match d.direction {
            Direction::Egress => d.enter_ns,
            Direction::Ingress => d.exit_ns,
        };
        let seg = |kind, upto: u64| Segment {
            kind,
            pid: d.meta.pid,
            tid: d.meta.tid,
            start_ns,
            end_ns: d.exit_ns,
            task_ctx: d.task_ctx,
            // TCP numbers bytes modulo 2^32.
            seq_end: d.tcp_seq.map(|s| s.wrapping_add(upto as u32)),
        };
        let captured = d.payload.len() as u64;
        if d.total_len == 0 && captured == 0 {
            if d.direction == Direction::Ingress {
                each(seg(SegKind::Eof, 0));
            }
            return;
        }
        // A payload longer than what moved would be a decoder bug; trust the length.
        let moved = if d.total_len == 0 { captured } else { d.total_len };
        let keep = usize::try_from(moved.min(captured)).unwrap_or(usize::MAX);
        let mut bytes = std::mem::take(&mut d.payload);
        bytes.truncate(keep);
        let missing = moved.saturating_sub(bytes.len() as u64);
        let upto = bytes.len() as u64;
        if !bytes.is_empty() {
            each(seg(SegKind::Bytes(bytes), upto));
        }
        if missing > 0 {
            each(seg(SegKind::Gap(missing), moved));
        }
    }

    /// The TCP sequence number of the first byte left in this piece, when known.
    pub fn seq(&self) -> Option<u32> {
        let left = match &self.kind {
            SegKind::Bytes(b) => b.len() as u64,
            SegKind::Gap(n) => *n,
            SegKind::Eof => 0,
        };
        self.seq_end.map(|end| end.wrapping_sub(left as u32))
    }

    /// Captured bytes held (for buffer accounting).
    pub fn held_bytes(&self) -> usize {
        match &self.kind {
            SegKind::Bytes(b) => b.len(),
            SegKind::Gap(_) | SegKind::Eof => 0,
        }
    }

    /// Nothing left to consume.
    pub fn is_spent(&self) -> bool {
        match &self.kind {
            SegKind::Bytes(b) => b.is_empty(),
            SegKind::Gap(n) => *n == 0,
            SegKind::Eof => false,
        }
    }

    /// Drop `n` captured bytes (or uncaptured, for a gap) from the front.
    pub fn advance(&mut self, n: usize) {
        match &mut self.kind {
            SegKind::Bytes(b) => b.advance(n.min(b.len())),
            SegKind::Gap(g) => *g = g.saturating_sub(n as u64),
            SegKind::Eof => {}
        }
    }

    /// Mark the whole segment consumed (an EOF becomes an empty gap).
    pub fn consume_all(&mut self) {
        self.kind = SegKind::Gap(0);
    }
}

/// Why a stream could not be parsed; each is counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    BadRequestLine,
    BadStatusLine,
    BadHeader,
    HeaderTooLarge,
    BadChunkSize,
    BadContentLength,
    BadTransferEncoding,
    /// Uncaptured bytes fell inside a head or chunk-size line: the framing is lost.
    LostBytesInHeaders,
    /// A direction held more than `max_buffer_bytes` waiting for the other side.
    BufferFull,
    /// A request line longer than the longest target recognised (8 KiB): the request is
    /// reported with its method and the target's start, flagged `parse_error`.
    RequestLineTooLong,
    /// The connection ended (or expired) inside a head: an unfinished request or response
    /// (a slowloris client, a peer that gave up). A request whose line was read is reported.
    IncompleteHead,
}

impl ParseErrorKind {
    pub const ALL: [ParseErrorKind; 11] = [
        ParseErrorKind::BadRequestLine,
        ParseErrorKind::BadStatusLine,
        ParseErrorKind::BadHeader,
        ParseErrorKind::HeaderTooLarge,
        ParseErrorKind::BadChunkSize,
        ParseErrorKind::BadContentLength,
        ParseErrorKind::BadTransferEncoding,
        ParseErrorKind::LostBytesInHeaders,
        ParseErrorKind::BufferFull,
        ParseErrorKind::RequestLineTooLong,
        ParseErrorKind::IncompleteHead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ParseErrorKind::BadRequestLine => "bad_request_line",
            ParseErrorKind::BadStatusLine => "bad_status_line",
            ParseErrorKind::BadHeader => "bad_header",
            ParseErrorKind::HeaderTooLarge => "header_too_large",
            ParseErrorKind::BadChunkSize => "bad_chunk_size",
            ParseErrorKind::BadContentLength => "bad_content_length",
            ParseErrorKind::BadTransferEncoding => "bad_transfer_encoding",
            ParseErrorKind::LostBytesInHeaders => "lost_bytes_in_headers",
            ParseErrorKind::BufferFull => "buffer_full",
            ParseErrorKind::RequestLineTooLong => "request_line_too_long",
            ParseErrorKind::IncompleteHead => "incomplete_head",
        }
    }

    /// Position in [`ParseErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One complete (or given-up) request or response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpMessage {
    pub kind: Kind,
    /// Requests only.
    pub method: Option<std::borrow::Cow<'static, str>>,
    /// Requests only; already redacted.
    pub target: Option<String>,
    /// Responses only; `None` when the status line was lost.
    pub status: Option<u16>,
    pub version: Option<Version>,
    /// Only the selected, non-secret headers.
    pub headers: KeptHeaders,
    /// Body bytes (decoded size for chunked bodies), including uncaptured ones.
    pub body_size: u64,
    /// The first captured body bytes, up to the configured prefix length.
    pub body_prefix: Vec<u8>,
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The runtime context that wrote or read its first bytes (`Data::task_ctx`).
    pub task_ctx: u64,
    /// The TCP sequence number of its first byte, when the kernel read it.
    pub tcp_seq: Option<u32>,
    /// Some bytes were not captured, or the stream ended before the message did.
    pub truncated: bool,
    pub parse_error: bool,
    /// The connection switched protocols (101, or 2xx to CONNECT) after this message.
    pub upgraded: bool,
}

/// What a parser reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Boxed: a message moves through the connection's queues and pairing (160 bytes
    /// copied a dozen times per exchange, inline).
    Message(Box<HttpMessage>),
    Error(ParseErrorKind),
    /// A stream found a start line again after losing its place (or after a midstream join).
    Resynced,
    /// A response that no request on the connection can explain.
    UnpairedResponse,
    /// The connection turned out not to carry this protocol; stop feeding it.
    NotThisProtocol,
}

/// A parser between messages with nothing held or awaited: all it takes to rebuild it in
/// the same state, so an idle connection need not keep the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rest {
    /// The direction that carries requests.
    pub requests: Direction,
    /// The connection was joined midway (`reset` starts over that way).
    pub midstream: bool,
}

/// A parser for one connection, both directions.
pub trait ProtocolParser: Send {
    /// Short protocol name for logs.
    fn protocol(&self) -> &'static str;
    /// Does a direction whose stream starts with `head` carry this protocol? Must answer
    /// `Match` or `NoMatch` given [`CHECK_BYTES`] bytes.
    fn check(&self, dir: Direction, head: &[u8]) -> Check;
    /// Consume the next piece of `dir`'s stream.
    fn parse(&mut self, dir: Direction, seg: Segment, out: &mut Vec<Output>);
    /// The connection ended: complete what ends at close, report the rest.
    fn finish(&mut self, out: &mut Vec<Output>);
    /// Forget everything, as if the connection were new.
    fn reset(&mut self);
    /// Which direction carries requests, once known.
    fn request_direction(&self) -> Option<Direction>;
    /// The connection is idle: give back queue room kept from earlier messages (10,000
    /// idle keep-alive connections kept a few KiB each).
    fn release_idle(&mut self) {}
    /// At rest: what rebuilds this parser in its present state (`None` while it holds or
    /// awaits anything).
    fn rest(&self) -> Option<Rest> {
        None
    }
}
