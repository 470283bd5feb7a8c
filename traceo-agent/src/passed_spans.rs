//! Which spans passed recently: a fixed table the joins ask whether a joined exchange's
//! parent already came. Every exchange writes to it, so it is built for that write: one
//! cache line touched, no allocation, no eviction queue (a hash map with an order queue
//! took about three cache misses per exchange under load), and small enough to stay in
//! cache beside a busy service (a 512 KiB table missed on nearly every write: 8% of the
//! agent's CPU under uvicorn).
//!
//! The table forgets: a newer span whose set is full pushes the oldest of that set out. A
//! forgotten parent only makes its child wait for the hold (`HOLD_NS`) before it passes,
//! unchanged; an answer of "passed" is always exact (whole ids are compared).

use crate::correlate::SpanId;

/// Sets of eight slots, one cache line each: 64 KiB, and a span is forgotten only when eight
/// newer ones share its set (after a thousand spans, about one chance in 100,000; after
/// 4,000, one in 20). A child comes within milliseconds of its parent, or before it.
const SETS: usize = 1 << 10;
const WAYS: usize = 8;

/// `WAYS` span ids, newest first; 0 is empty (no valid span id is all zeros).
#[repr(align(64))]
#[derive(Clone, Copy, Default)]
struct Set([u64; WAYS]);

pub struct PassedSpans {
    sets: Box<[Set]>,
}

impl Default for PassedSpans {
    fn default() -> Self {
        PassedSpans { sets: vec![Set::default(); SETS].into_boxed_slice() }
    }
}

impl PassedSpans {
    pub fn insert(&mut self, span: SpanId) {
        let id = u64::from_ne_bytes(span.0);
        if let Some(Set(set)) = self.sets.get_mut(set_of(id))
            && !set.contains(&id)
        {
            set.rotate_right(1);
            set[0] = id;
        }
    }

    pub fn contains(&self, span: SpanId) -> bool {
        let id = u64::from_ne_bytes(span.0);
        id != 0 && self.sets.get(set_of(id)).is_some_and(|Set(set)| set.contains(&id))
    }
}

/// `id`'s set. Span ids are random (the agent's own or a caller's), so their low bits
/// spread evenly.
fn set_of(id: u64) -> usize {
    id as usize % SETS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u64) -> SpanId {
        SpanId(n.to_ne_bytes())
    }

    #[test]
    fn passed_spans_are_found_and_others_not() {
        let mut p = PassedSpans::default();
        p.insert(span(7));
        p.insert(span(7));
        assert!(p.contains(span(7)));
        assert!(!p.contains(span(8)));
        assert!(!p.contains(span(0)), "the empty slot is no span");
    }

    #[test]
    fn a_set_keeps_its_newest() {
        let mut p = PassedSpans::default();
        let same_set = |k: usize| span(5 + (k * SETS) as u64);
        for k in 0..WAYS {
            p.insert(same_set(k));
        }
        p.insert(same_set(0));
        assert!((0..WAYS).all(|k| p.contains(same_set(k))), "a full set keeps all, once each");
        p.insert(same_set(WAYS));
        assert!(!p.contains(same_set(0)), "the oldest of a full set goes");
        assert!((1..=WAYS).all(|k| p.contains(same_set(k))));
        assert!(!p.contains(span(6)), "other sets are untouched");
    }
}
