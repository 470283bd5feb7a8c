//! A bounded map that forgets its oldest entries first: what the joins and the shared state
//! remember of moved traces, seen spans and asked keys.

use std::collections::{HashMap, VecDeque, hash_map::Entry, hash_map::RandomState};
use std::hash::{BuildHasher, Hash};

/// Entries kept at most.
const MAX_RECENT: usize = 65_536;

/// `S`: the map's hasher (a fast one where the keys are the agent's own, e.g. its span ids).
pub struct Recent<K, V, S = RandomState> {
    /// Each value with the sequence number of its place in `order`.
    map: HashMap<K, (V, u32), S>,
    /// Insertion order, oldest first. A removed key's place stays until it comes up; its
    /// sequence number then no longer matches the map's (the key is gone or was inserted
    /// again), and it is skipped. Numbers wrap: the queue holds far fewer than 2^32.
    order: VecDeque<(K, u32)>,
    next: u32,
}

impl<K: Clone + Eq + Hash, V, S: BuildHasher + Default> Default for Recent<K, V, S> {
    fn default() -> Self {
        Recent { map: HashMap::default(), order: VecDeque::new(), next: 0 }
    }
}

impl<K: Clone + Eq + Hash, V, S: BuildHasher + Default> Recent<K, V, S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Insert or update `key` (an update keeps its place).
    pub fn insert(&mut self, key: K, value: V) {
        match self.map.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().0 = value,
            Entry::Vacant(e) => {
                let seq = self.next;
                self.next = seq.wrapping_add(1);
                self.order.push_back((e.key().clone(), seq));
                e.insert((value, seq));
            }
        }
        while self.order.len() > MAX_RECENT {
            if let Some((old, seq)) = self.order.pop_front()
                && self.map.get(&old).is_some_and(|(_, s)| *s == seq)
            {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
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

    #[test]
    fn a_key_removed_and_inserted_again_keeps_its_new_place() {
        let mut r: Recent<u64, u64> = Recent::new();
        for i in 0..MAX_RECENT as u64 {
            r.insert(i, i);
        }
        r.remove(&0);
        r.insert(0, 7);
        assert_eq!(r.get(&0), Some(&7));
        // The next insert makes room by forgetting the oldest still-placed key (1), not 0.
        r.insert(MAX_RECENT as u64, 0);
        assert_eq!((r.get(&0), r.get(&1), r.get(&2)), (Some(&7), None, Some(&2)));
    }
}
