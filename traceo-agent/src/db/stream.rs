//! One direction of a database connection as a bounded byte buffer: captured bytes are
//! appended, the rest of an over-long message is skipped by count (uncaptured bytes included),
//! and each buffered message knows when and by whom its first byte moved.

use crate::http::{SegKind, Segment};

/// Who moved a piece of the stream, and when (see `Segment`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegMeta {
    pub pid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub task_ctx: u64,
}

impl SegMeta {
    pub fn of(seg: &Segment) -> SegMeta {
        SegMeta { pid: seg.pid, tid: seg.tid, start_ns: seg.start_ns, end_ns: seg.end_ns, task_ctx: seg.task_ctx }
    }
}

#[derive(Default)]
pub struct Stream {
    pub buf: Vec<u8>,
    /// Bytes still to drop before the next message starts.
    pub skip: u64,
    /// Uncaptured bytes fell where a message was being read: framing is lost.
    pub broken: bool,
    /// The segment that brought the first buffered byte; the latest segment.
    pub head: SegMeta,
    pub last: SegMeta,
    pub ended: bool,
}

impl Stream {
    /// Append a segment (dropping what `skip` covers).
    pub fn push(&mut self, seg: &Segment) {
        let meta = SegMeta::of(seg);
        match &seg.kind {
            SegKind::Bytes(b) => {
                let drop = usize::try_from(self.skip).unwrap_or(usize::MAX).min(b.len());
                self.skip -= drop as u64;
                let rest = &b[drop..];
                if !rest.is_empty() {
                    if self.buf.is_empty() {
                        self.head = meta;
                    }
                    self.buf.extend_from_slice(rest);
                }
            }
            SegKind::Gap(n) => {
                if *n <= self.skip {
                    self.skip -= n;
                } else {
                    self.broken = true;
                    self.buf.clear();
                    self.skip = 0;
                }
            }
            SegKind::Eof => self.ended = true,
        }
        self.last = meta;
    }

    /// Remove `n` buffered bytes (and skip `more` not yet arrived). The rest, if any, is taken
    /// to have come with the latest segment.
    pub fn consume(&mut self, n: usize, more: u64) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.skip += more;
        self.head = self.last;
    }
}
