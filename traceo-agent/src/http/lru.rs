//! A capped map from connection id to state, evicting the least recently used.
//!
//! Recency is a queue of (tick, key) uses: a use appends one and the map keeps each key's
//! latest tick, so entries whose tick is not their key's latest are stale and skipped (and
//! compacted away once they outnumber the live ones). A use costs one hash lookup and a
//! push, not a tree removal and insertion.

use std::collections::{HashMap, VecDeque};

/// Connection ids are the agent's own (kernel socket identities), not input: a fast hash.
type Map<V> = HashMap<u64, (V, u64), foldhash::fast::RandomState>;

pub struct Lru<V> {
    map: Map<V>,
    /// (use tick, key), oldest first; stale where the tick is not the key's latest.
    order: VecDeque<(u64, u64)>,
    tick: u64,
    cap: usize,
}

impl<V> Lru<V> {
    pub fn new(cap: usize) -> Self {
        Lru { map: Map::default(), order: VecDeque::new(), tick: 0, cap: cap.max(1) }
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
        self.compact();
        let next = self.tick.wrapping_add(1);
        let (v, tick) = self.map.get_mut(&key)?;
        self.tick = next;
        match self.order.back_mut() {
            // Already the latest use: it stays where it is.
            Some(last) if *last == (*tick, key) => last.0 = next,
            _ => self.order.push_back((next, key)),
        }
        *tick = next;
        Some(v)
    }

    /// Insert (replacing any value for `key`, which is returned first); may evict the least
    /// recently used other entry, returned second.
    pub fn insert(&mut self, key: u64, v: V) -> (Option<V>, Option<(u64, V)>) {
        let replaced = self.remove(key);
        let evicted = if self.map.len() >= self.cap { self.pop_oldest() } else { None };
        let tick = self.next_tick();
        self.compact();
        self.map.insert(key, (v, tick));
        self.order.push_back((tick, key));
        (replaced, evicted)
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        // Its queue entries go stale (skipped, compacted later).
        self.map.remove(&key).map(|(v, _)| v)
    }

    pub fn pop_oldest(&mut self) -> Option<(u64, V)> {
        while let Some((tick, key)) = self.order.pop_front() {
            if self.is_live(tick, key) {
                return self.map.remove(&key).map(|(v, _)| (key, v));
            }
        }
        None
    }

    /// Remove and return every entry for which `pred` holds, oldest first.
    pub fn drain_where(&mut self, mut pred: impl FnMut(&V) -> bool) -> Vec<(u64, V)> {
        let keys: Vec<u64> = self
            .order
            .iter()
            .filter(|&&(t, k)| self.map.get(&k).is_some_and(|(v, tick)| *tick == t && pred(v)))
            .map(|&(_, k)| k)
            .collect();
        keys.into_iter().filter_map(|k| self.remove(k).map(|v| (k, v))).collect()
    }

    fn is_live(&self, tick: u64, key: u64) -> bool {
        self.map.get(&key).is_some_and(|&(_, t)| t == tick)
    }

    /// Drop stale queue entries once they outnumber the live ones (amortised O(1) a use).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|&(t, k)| map.get(&k).is_some_and(|&(_, tick)| tick == t));
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
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
    fn matches_a_plain_recency_list_through_compactions() {
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
            // A use compacts first: right after one, stale entries are at most the live ones
            // plus the slack (removals only leave theirs for the next use to compact).
            if (x >> 20) % 10 <= 7 {
                assert!(lru.order.len() <= 2 * lru.len() + 66, "stale entries are compacted away");
            }
        }
        let mut rest = Vec::new();
        while let Some((k, _)) = lru.pop_oldest() {
            rest.push(k);
        }
        assert_eq!(rest, model);
    }
}
