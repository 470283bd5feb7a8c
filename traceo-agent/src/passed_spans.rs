//! Which spans passed recently: a fixed table the joins ask whether a joined exchange's
//! parent already came. Every exchange writes to it, so it is built for that write: one
//! cache line touched, no allocation, no eviction queue (a hash map with an order queue
//! took about three cache misses per exchange under load).
//!
//! The table forgets: a newer span whose set is full pushes the oldest of that set out. A
//! forgotten parent only makes its child wait for the hold (`HOLD_NS`) before it passes,
//! unchanged; an answer of "passed" is always exact (whole ids are compared).

use crate::correlate::SpanId;

/// Sets of two slots each: 512 KiB, and a span is forgotten only when two newer ones share
/// its set (after a thousand spans, about one chance in two thousand).
const SETS: usize = 1 << 15;
const WAYS: usize = 2;

pub struct PassedSpans {
    /// `WAYS` slots per set, newest first; 0 is empty (no valid span id is all zeros).
    slots: Box<[u64]>,
}

impl Default for PassedSpans {
    fn default() -> Self {
        PassedSpans { slots: vec![0; SETS * WAYS].into_boxed_slice() }
    }
}

impl PassedSpans {
    pub fn insert(&mut self, span: SpanId) {
        let id = u64::from_ne_bytes(span.0);
        let at = set_of(id);
        if let Some(set) = self.slots.get_mut(at..at + WAYS)
            && !set.contains(&id)
        {
            set.rotate_right(1);
            if let Some(first) = set.first_mut() {
                *first = id;
            }
        }
    }

    pub fn contains(&self, span: SpanId) -> bool {
        let id = u64::from_ne_bytes(span.0);
        let at = set_of(id);
        id != 0 && self.slots.get(at..at + WAYS).is_some_and(|set| set.contains(&id))
    }
}

/// First slot of `id`'s set. Span ids are random (the agent's own or a caller's), so their
/// low bits spread evenly.
fn set_of(id: u64) -> usize {
    (id as usize % SETS) * WAYS
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
    fn a_set_keeps_its_two_newest() {
        let mut p = PassedSpans::default();
        let same_set = |k: u64| span(5 + k * SETS as u64);
        p.insert(same_set(0));
        p.insert(same_set(1));
        assert!(p.contains(same_set(0)) && p.contains(same_set(1)));
        p.insert(same_set(2));
        assert!(!p.contains(same_set(0)), "the oldest of a full set goes");
        assert!(p.contains(same_set(1)) && p.contains(same_set(2)));
        assert!(!p.contains(span(6)), "other sets are untouched");
    }
}
