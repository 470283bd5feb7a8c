//! A bounded map that forgets its oldest entries first: what the joins and the shared state
//! remember of moved traces, seen spans and asked keys.

use std::collections::{HashMap, VecDeque, hash_map::RandomState};
use std::hash::{BuildHasher, Hash};

/// Entries kept at most.
const MAX_RECENT: usize = 65_536;

/// `S`: the map's hasher (a fast one where the keys are the agent's own, e.g. its span ids).
pub struct Recent<K, V, S = RandomState> {
    map: HashMap<K, V, S>,
    order: VecDeque<K>,
}

impl<K: Clone + Eq + Hash, V, S: BuildHasher + Default> Default for Recent<K, V, S> {
    fn default() -> Self {
        Recent { map: HashMap::default(), order: VecDeque::new() }
    }
}

impl<K: Clone + Eq + Hash, V, S: BuildHasher + Default> Recent<K, V, S> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_RECENT {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Forget `key` (its place in the order goes when it comes up).
    pub fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_go_first() {
        let mut r: Recent<u64, u64> = Recent::new();
        for i in 0..MAX_RECENT as u64 + 2 {
            r.insert(i, i * 2);
        }
        assert_eq!((r.get(&0), r.get(&1), r.get(&2)), (None, None, Some(&4)));
        r.remove(&2);
        assert_eq!(r.get(&2), None);
    }
}
