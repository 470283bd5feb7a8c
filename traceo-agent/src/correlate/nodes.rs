//! The correlator's requests by id. Ids are handed out in order and requests are forgotten
//! roughly in that order (a hold after they complete), so the live ones sit in a window of
//! slots indexed by id: no tree to walk or rebalance per request (a `BTreeMap` here moved
//! nodes on each insert and removal). A request left behind by more than `span` newer ones
//! (one that never completes) moves to a small ordered map, so it does not keep the window
//! of slots after it alive.

use std::collections::{BTreeMap, VecDeque};

use super::node::{Id, Node};

/// Slots kept whatever the window holds (shrinking below is not worth the copies).
const MIN_KEPT_SLOTS: usize = 64;

pub(super) struct Nodes {
    /// Slot `i` holds request `base + i`, `None` once forgotten; the front slot is never
    /// `None`.
    slots: VecDeque<Option<Node>>,
    base: Id,
    /// Requests older than the window (all ids below `base`).
    old: BTreeMap<Id, Node>,
    len: usize,
    span: usize,
}

impl Nodes {
    /// At most `span` slots (live requests or gaps) in the window.
    pub(super) fn new(span: usize) -> Nodes {
        Nodes { slots: VecDeque::new(), base: 0, old: BTreeMap::new(), len: 0, span: span.max(1) }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Add request `id`, newer than any added before.
    #[cfg(test)]
    pub(super) fn insert(&mut self, id: Id, node: Node) {
        self.insert_with(id, || node);
    }

    /// [`Self::insert`] of the node `make` builds, built where it is kept (built first and
    /// moved in, each request's few hundred bytes were copied twice).
    #[inline(always)]
    pub(super) fn insert_with(&mut self, id: Id, make: impl FnOnce() -> Node) {
        if self.slots.is_empty() {
            self.base = id;
        }
        let Some(at) = id.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else {
            // Not newer than the window's start: kept, in order, with the old ones.
            self.len += usize::from(self.old.insert(id, make()).is_none());
            return;
        };
        if at < self.slots.len() {
            let slot = &mut self.slots[at];
            self.len += usize::from(slot.is_none());
            *slot = Some(make());
            return;
        }
        self.slots.resize_with(at, || None);
        self.slots.push_back(Some(make()));
        self.len += 1;
        while self.slots.len() > self.span {
            if let Some(Some(n)) = self.slots.pop_front() {
                self.old.insert(self.base, n);
            }
            self.base += 1;
        }
        self.trim();
    }

    pub(super) fn get(&self, id: &Id) -> Option<&Node> {
        match self.index(*id) {
            Some(i) => self.slots.get(i)?.as_ref(),
            None => self.old.get(id),
        }
    }

    pub(super) fn get_mut(&mut self, id: &Id) -> Option<&mut Node> {
        match self.index(*id) {
            Some(i) => self.slots.get_mut(i)?.as_mut(),
            None => self.old.get_mut(id),
        }
    }

    pub(super) fn contains_key(&self, id: &Id) -> bool {
        self.get(id).is_some()
    }

    /// Forget request `id` (whether it was there). Dropped in place: moving a node out costs
    /// copies of a few hundred bytes; read what is needed through `get_mut` first.
    pub(super) fn remove(&mut self, id: &Id) -> bool {
        let found = match self.index(*id) {
            Some(i) => match self.slots.get_mut(i) {
                Some(slot @ Some(_)) => {
                    *slot = None;
                    true
                }
                _ => false,
            },
            None => self.old.remove(id).is_some(),
        };
        if found {
            self.len -= 1;
            self.trim();
        }
        found
    }

    /// Ids in order, oldest first.
    pub(super) fn keys(&self) -> impl Iterator<Item = Id> + '_ {
        let window = self.slots.iter().enumerate().filter(|(_, n)| n.is_some()).map(|(i, _)| self.base + i as Id);
        self.old.keys().copied().chain(window)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Node> {
        self.old.values().chain(self.slots.iter().flatten())
    }

    /// The slot of a window id; `None` below the window.
    fn index(&self, id: Id) -> Option<usize> {
        id.checked_sub(self.base).and_then(|i| usize::try_from(i).ok())
    }

    /// Drop the forgotten slots at the window's front, and give back the room a burst left
    /// (10,000 requests held at once kept about 3 MiB of slots after they were forgotten).
    fn trim(&mut self) {
        // Drained, not popped: a pop moves each slot (a few hundred bytes) out to drop it.
        if self.slots.front().is_some_and(Option::is_none) {
            let gaps = self.slots.iter().take_while(|n| n.is_none()).count();
            self.slots.drain(..gaps);
            self.base += gaps as Id;
        }
        let (len, cap) = (self.slots.len(), self.slots.capacity());
        if cap > MIN_KEPT_SLOTS && len < cap / 4 {
            self.slots.shrink_to((len * 2).max(MIN_KEPT_SLOTS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::node::{State, Wait};
    use crate::correlate::{Carried, SpanId};
    use crate::http::Role;

    fn node(start_ns: u64) -> Node {
        Node {
            request: (0, start_ns),
            role: Role::Server,
            pid: 1,
            tid: 1,
            pair: None,
            start_ns,
            span_id: SpanId([1; 8]),
            carried: Carried::default(),
            task_ctx: 0,
            state: State::Waiting(Wait::New),
            dependents: Vec::new(),
            watchers: Vec::new(),
        }
    }

    #[test]
    fn ids_in_order_whatever_is_forgotten_and_a_straggler_leaves_the_window() {
        let mut n = Nodes::new(4);
        (10..16).for_each(|id| n.insert(id, node(id)));
        // 10 and 11 fell out of the window into the old map, still there and in order.
        assert_eq!(n.keys().collect::<Vec<_>>(), vec![10, 11, 12, 13, 14, 15]);
        assert_eq!((n.len(), n.old.len(), n.base), (6, 2, 12));
        assert_eq!(n.get(&13).map(|x| x.start_ns), Some(13));
        assert!(n.remove(&13) && n.remove(&12));
        assert_eq!(n.base, 14);
        assert!(!n.remove(&12) && !n.contains_key(&13));
        assert_eq!(n.get(&10).map(|x| x.start_ns), Some(10));
        if let Some(x) = n.get_mut(&15) {
            x.tid = 7;
        }
        assert_eq!(n.values().map(|x| x.tid).collect::<Vec<_>>(), vec![1, 1, 1, 7]);
        for id in [10, 11, 14, 15] {
            assert!(n.remove(&id));
        }
        assert_eq!((n.len(), n.keys().next()), (0, None));
        n.insert(20, node(20));
        assert_eq!(n.keys().collect::<Vec<_>>(), vec![20]);
    }
}
