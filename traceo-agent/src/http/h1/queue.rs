//! A direction's not-yet-parsed segments, with the captured bytes they hold counted so the
//! connection can cap what it keeps while one side waits for the other.

use std::collections::VecDeque;

use crate::http::parser::{SegKind, Segment};

#[derive(Clone, Debug, Default)]
pub struct SegQueue {
    segs: VecDeque<Segment>,
    bytes: usize,
}

impl SegQueue {
    pub fn push(&mut self, seg: Segment) {
        self.bytes = self.bytes.saturating_add(seg.held_bytes());
        self.segs.push_back(seg);
    }

    /// Free the room kept from earlier segments if none waits.
    pub fn release_if_empty(&mut self) {
        if self.segs.is_empty() && self.segs.capacity() > 0 {
            self.segs = VecDeque::new();
        }
    }

    pub fn front(&self) -> Option<&Segment> {
        self.segs.front()
    }

    /// Run `f` on the front segment, keeping the byte count right and dropping it once spent.
    pub fn with_front<R>(&mut self, f: impl FnOnce(&mut Segment) -> R) -> Option<R> {
        let seg = self.segs.front_mut()?;
        let before = seg.held_bytes();
        let r = f(seg);
        let after = seg.held_bytes();
        self.bytes = self.bytes.saturating_sub(before).saturating_add(after);
        self.drop_spent();
        Some(r)
    }

    pub fn pop_front(&mut self) -> Option<Segment> {
        let seg = self.segs.pop_front()?;
        self.bytes = self.bytes.saturating_sub(seg.held_bytes());
        Some(seg)
    }

    pub fn drop_spent(&mut self) {
        while self.segs.front().is_some_and(Segment::is_spent) {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.segs.clear();
        self.bytes = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// Captured bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Up to `n` leading captured bytes, stopping at the first gap or EOF. The flag tells
    /// whether a gap came before any byte.
    pub fn leading_bytes(&self, n: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for seg in &self.segs {
            match &seg.kind {
                SegKind::Bytes(b) => {
                    let room = n.saturating_sub(out.len());
                    out.extend_from_slice(b.get(..room.min(b.len())).unwrap_or_default());
                    if out.len() >= n {
                        break;
                    }
                }
                SegKind::Gap(0) => {}
                SegKind::Gap(_) => {
                    let gap_first = out.is_empty();
                    return (out, gap_first);
                }
                SegKind::Eof => break,
            }
        }
        (out, false)
    }
}
