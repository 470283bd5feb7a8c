//! A capped map from connection id to state, evicting the least recently used.
//!
//! Recency is a doubly linked list of keys in a vector (freed slots reused), each map entry
//! knowing its slot: a use is one hash lookup and a few index writes. (A queue of (tick, key)
//! uses, stale entries skipped and compacted, cost a push per use and a hash lookup per
//! queued use at each compaction.)

use std::collections::HashMap;

/// Connection ids are the agent's own (kernel socket identities), not input: a fast hash.
type Map<V> = HashMap<u64, (V, usize), foldhash::fast::RandomState>;

pub struct Lru<V> {
    /// Each value with its slot in `order`.
    map: Map<V>,
    order: Order,
    cap: usize,
}

impl<V> Lru<V> {
    pub fn new(cap: usize) -> Self {
        Lru { map: Map::default(), order: Order::default(), cap: cap.max(1) }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Every value, in no particular order (does not touch recency).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(v, _)| v)
    }

    /// Every value, mutable, in no particular order (does not touch recency).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.map.values_mut().map(|(v, _)| v)
    }

    /// The value for `key`, marked as just used.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let (v, slot) = self.map.get_mut(&key)?;
        self.order.touch(*slot);
        Some(v)
    }

    /// Insert (replacing any value for `key`, which is returned first); may evict the least
    /// recently used other entry, returned second.
    pub fn insert(&mut self, key: u64, v: V) -> (Option<V>, Option<(u64, V)>) {
        let replaced = self.remove(key);
        let evicted = if self.map.len() >= self.cap { self.pop_oldest() } else { None };
        let slot = self.order.push(key);
        self.map.insert(key, (v, slot));
        (replaced, evicted)
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        let (v, slot) = self.map.remove(&key)?;
        self.order.release(slot);
        Some(v)
    }

    pub fn pop_oldest(&mut self) -> Option<(u64, V)> {
        let key = self.order.oldest()?;
        self.remove(key).map(|v| (key, v))
    }

    /// Remove and return every entry for which `pred` holds, oldest first.
    pub fn drain_where(&mut self, mut pred: impl FnMut(&V) -> bool) -> Vec<(u64, V)> {
        let keys: Vec<u64> = self.order.keys().filter(|k| self.map.get(k).is_some_and(|(v, _)| pred(v))).collect();
        keys.into_iter().filter_map(|k| self.remove(k).map(|v| (k, v))).collect()
    }
}

/// No slot (the ends of the list).
const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Link {
    key: u64,
    prev: usize,
    next: usize,
}

/// Keys from least to most recently used. Slots never outnumber the most entries held at
/// once (at most the cap).
struct Order {
    links: Vec<Link>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

impl Default for Order {
    fn default() -> Self {
        Order { links: Vec::new(), free: Vec::new(), head: NIL, tail: NIL }
    }
}

impl Order {
    /// Append `key` as the most recent; its slot.
    fn push(&mut self, key: u64) -> usize {
        let link = Link { key, prev: NIL, next: NIL };
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(l) = self.links.get_mut(slot) {
                    *l = link;
                }
                slot
            }
            None => {
                self.links.push(link);
                self.links.len() - 1
            }
        };
        self.link_tail(slot);
        slot
    }

    /// `slot`'s key was just used.
    fn touch(&mut self, slot: usize) {
        if slot != self.tail {
            self.unlink(slot);
            self.link_tail(slot);
        }
    }

    fn release(&mut self, slot: usize) {
        self.unlink(slot);
        self.free.push(slot);
    }

    fn oldest(&self) -> Option<u64> {
        self.links.get(self.head).map(|l| l.key)
    }

    /// Keys, oldest first.
    fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::successors(self.links.get(self.head), |l| self.links.get(l.next))
            .take(self.links.len())
            .map(|l| l.key)
    }

    fn unlink(&mut self, slot: usize) {
        let Some(&Link { prev, next, .. }) = self.links.get(slot) else { return };
        match self.links.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.links.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn link_tail(&mut self, slot: usize) {
        let tail = self.tail;
        if let Some(l) = self.links.get_mut(slot) {
            l.prev = tail;
            l.next = NIL;
        }
        match self.links.get_mut(tail) {
            Some(t) => t.next = slot,
            None => self.head = slot,
        }
        self.tail = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut lru = Lru::new(2);
        lru.insert(1, "a");
        lru.insert(2, "b");
        assert!(lru.get_mut(1).is_some());
        let (_, evicted) = lru.insert(3, "c");
        assert_eq!(evicted, Some((2, "b")));
        assert_eq!(lru.len(), 2);
        let (replaced, evicted) = lru.insert(3, "c2");
        assert_eq!((replaced, evicted), (Some("c"), None));
        let drained = lru.drain_where(|v| v.starts_with('c'));
        assert_eq!(drained, vec![(3, "c2")]);
        assert_eq!(lru.pop_oldest(), Some((1, "a")));
        assert_eq!(lru.len(), 0);
    }

    #[test]
    fn matches_a_plain_recency_list() {
        // A reference: keys most recent last.
        let (mut lru, mut model) = (Lru::new(50), Vec::<u64>::new());
        let mut x: u64 = 12345;
        for step in 0..20_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let key = (x >> 33) % 80;
            match (x >> 20) % 10 {
                0..=5 => {
                    let found = lru.get_mut(key).map(|v| *v);
                    let at = model.iter().position(|&k| k == key);
                    assert_eq!(found, at.map(|_| key));
                    if let Some(i) = at {
                        model.remove(i);
                        model.push(key);
                    }
                }
                6..=7 => {
                    let (replaced, evicted) = lru.insert(key, key);
                    let at = model.iter().position(|&k| k == key);
                    assert_eq!(replaced, at.map(|_| key));
                    if let Some(i) = at {
                        model.remove(i);
                    }
                    let gone = (model.len() >= 50).then(|| model.remove(0));
                    assert_eq!(evicted, gone.map(|k| (k, k)));
                    model.push(key);
                }
                8 => {
                    let at = model.iter().position(|&k| k == key);
                    assert_eq!(lru.remove(key), at.map(|i| model.remove(i)));
                }
                _ if step % 7 == 0 => {
                    let drained = lru.drain_where(|v| v % 3 == 0);
                    let expect: Vec<(u64, u64)> = model.iter().filter(|&&k| k % 3 == 0).map(|&k| (k, k)).collect();
                    model.retain(|k| k % 3 != 0);
                    assert_eq!(drained, expect);
                }
                _ => {}
            }
            assert_eq!(lru.len(), model.len());
            // Slots are reused: never more than the most entries held at once.
            assert!(lru.order.links.len() <= 50 && lru.order.free.len() + lru.len() == lru.order.links.len());
        }
        let mut rest = Vec::new();
        while let Some((k, _)) = lru.pop_oldest() {
            rest.push(k);
        }
        assert_eq!(rest, model);
    }
}
