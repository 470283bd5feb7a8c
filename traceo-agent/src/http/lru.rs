//! A capped map from connection id to state, evicting the least recently used.

use std::collections::{BTreeMap, HashMap};

pub struct Lru<V> {
    map: HashMap<u64, (V, u64)>,
    /// Use tick -> key; the smallest tick is the least recently used.
    order: BTreeMap<u64, u64>,
    tick: u64,
    cap: usize,
}

impl<V> Lru<V> {
    pub fn new(cap: usize) -> Self {
        Lru { map: HashMap::new(), order: BTreeMap::new(), tick: 0, cap: cap.max(1) }
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
        let next = self.next_tick();
        let (v, tick) = self.map.get_mut(&key)?;
        self.order.remove(tick);
        *tick = next;
        self.order.insert(next, key);
        Some(v)
    }

    /// Insert (replacing any value for `key`, which is returned first); may evict the least
    /// recently used other entry, returned second.
    pub fn insert(&mut self, key: u64, v: V) -> (Option<V>, Option<(u64, V)>) {
        let replaced = self.remove(key);
        let evicted = if self.map.len() >= self.cap { self.pop_oldest() } else { None };
        let tick = self.next_tick();
        self.map.insert(key, (v, tick));
        self.order.insert(tick, key);
        (replaced, evicted)
    }

    pub fn remove(&mut self, key: u64) -> Option<V> {
        let (v, tick) = self.map.remove(&key)?;
        self.order.remove(&tick);
        Some(v)
    }

    pub fn pop_oldest(&mut self) -> Option<(u64, V)> {
        let (_, key) = self.order.pop_first()?;
        self.map.remove(&key).map(|(v, _)| (key, v))
    }

    /// Remove and return every entry for which `pred` holds, oldest first.
    pub fn drain_where(&mut self, mut pred: impl FnMut(&V) -> bool) -> Vec<(u64, V)> {
        let keys: Vec<u64> =
            self.order.values().copied().filter(|k| self.map.get(k).is_some_and(|(v, _)| pred(v))).collect();
        keys.into_iter().filter_map(|k| self.remove(k).map(|v| (k, v))).collect()
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
}
