//! asyncio task lineage, from the task-creation events of traced CPython processes.
//!
//! A context address names a task only while that task lives: the allocator hands the
//! address to a later task once the first is gone. So a context is known by its
//! *incarnation*: the address plus the time its task was created (0 for a context whose
//! creation was not seen: a thread's base context, a loop callback's copy). Lineage links
//! incarnations: the task created at T in context C was created by the code then running in
//! C's incarnation as of T.

use std::collections::{HashMap, VecDeque};

/// (context address, creation time or 0 when not seen).
pub type Incarnation = (u64, u64);

/// How far up a chain is walked (task trees are shallow; this bounds a corrupt cycle).
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Birth {
    created_ns: u64,
    parent_ctx: u64,
}

/// Births per (process, context), bounded: the oldest are forgotten first.
pub struct TaskLineage {
    births: HashMap<(u32, u64), Vec<Birth>>,
    order: VecDeque<(u32, u64)>,
    cap: usize,
    pub forgotten: u64,
}

impl TaskLineage {
    pub fn new(cap: usize) -> TaskLineage {
        TaskLineage { births: HashMap::new(), order: VecDeque::new(), cap: cap.max(1), forgotten: 0 }
    }

    /// A task of `pid` was created at `ts_ns` in context `parent` and runs in `child`.
    pub fn created(&mut self, pid: u32, child: u64, parent: u64, ts_ns: u64) {
        while self.order.len() >= self.cap {
            let Some(key) = self.order.pop_front() else { break };
            if let Some(list) = self.births.get_mut(&key) {
                list.remove(0);
                if list.is_empty() {
                    self.births.remove(&key);
                }
            }
            self.forgotten += 1;
        }
        self.births.entry((pid, child)).or_default().push(Birth { created_ns: ts_ns, parent_ctx: parent });
        self.order.push_back((pid, child));
    }

    /// The incarnation of `ctx` running at `at_ns`: its latest birth not after then.
    pub fn incarnation(&self, pid: u32, ctx: u64, at_ns: u64) -> Incarnation {
        (ctx, self.birth(pid, ctx, at_ns).map_or(0, |b| b.created_ns))
    }

    fn birth(&self, pid: u32, ctx: u64, at_ns: u64) -> Option<Birth> {
        self.births.get(&(pid, ctx))?.iter().rev().find(|b| b.created_ns <= at_ns).copied()
    }

    /// `ctx` as of `at_ns`, then the incarnation that created it, and so on up.
    pub fn ancestry(&self, pid: u32, ctx: u64, at_ns: u64) -> Vec<Incarnation> {
        let mut chain = Vec::new();
        let (mut ctx, mut at) = (ctx, at_ns);
        while ctx != 0 && chain.len() < MAX_DEPTH {
            let birth = self.birth(pid, ctx, at);
            chain.push((ctx, birth.map_or(0, |b| b.created_ns)));
            let Some(b) = birth else { break };
            (ctx, at) = (b.parent_ctx, b.created_ns);
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_follows_the_incarnation_alive_at_each_birth() {
        let mut l = TaskLineage::new(100);
        // Request task 0xA (born 10 in loop context 0x1) creates 0xB at 20; 0xB creates 0xC at 30.
        l.created(7, 0xA, 0x1, 10);
        l.created(7, 0xB, 0xA, 20);
        l.created(7, 0xC, 0xB, 30);
        assert_eq!(l.ancestry(7, 0xC, 35), vec![(0xC, 30), (0xB, 20), (0xA, 10), (0x1, 0)]);
        // 0xA's address is reused by another task at 50: 0xC's chain still names the first.
        l.created(7, 0xA, 0x1, 50);
        assert_eq!(l.ancestry(7, 0xC, 60)[2], (0xA, 10));
        assert_eq!(l.incarnation(7, 0xA, 60), (0xA, 50));
        assert_eq!(l.incarnation(7, 0xA, 40), (0xA, 10));
        // Another process's contexts are its own.
        assert_eq!(l.ancestry(8, 0xC, 35), vec![(0xC, 0)]);
        assert!(l.ancestry(7, 0, 35).is_empty());
    }

    #[test]
    fn bounded() {
        let mut l = TaskLineage::new(2);
        l.created(1, 0xA, 0x1, 1);
        l.created(1, 0xB, 0xA, 2);
        l.created(1, 0xC, 0xB, 3);
        assert_eq!(l.forgotten, 1);
        assert_eq!(l.ancestry(1, 0xC, 5), vec![(0xC, 3), (0xB, 2), (0xA, 0)]);
    }
}
