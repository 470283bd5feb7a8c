//! asyncio task lineage, from the task-creation events of traced CPython processes.
//!
//! A context address names a task only while that task lives: the allocator hands the
//! address to a later task once the first is gone. So a context is known by its
//! *incarnation*: the address plus the time its task was created (0 for a context whose
//! creation was not seen: a thread's base context, a loop callback's copy). Lineage links
//! incarnations: the task created at T in context C was created by the code then running in
//! C's incarnation as of T.
//!
//! With `--thread-pools`, copies of a context (`contextvars.copy_context()`, what
//! `asyncio.to_thread` and anyio's `to_thread.run_sync` run the pool thread's work in) are
//! born too, and followed only from a loop thread to a pool thread: made by a thread that has
//! created tasks (a loop's), used on a thread that never has (a pool's). On the making
//! thread a copy is a loop callback's context (the default loop copies one for every
//! callback), which says nothing certain about a request; and a context another loop's
//! thread runs, or one made off a loop (`call_soon_threadsafe` from a worker), may sit at a
//! freed copy's address without being that copy (contexts copied in C are not reported).
//! Everywhere else the chain stops at a copy as it did before copies were seen.
//!
//! A creation spans `Task.__init__`, from entry to return. An eager task (3.12+) runs its
//! first step in between, on the creating thread, so there the new incarnation counts from
//! the entry; on any other thread only from the return (the task cannot run there before,
//! and the address's previous task may still be finishing there until it was freed, which
//! happened before the entry: the creating thread holds the GIL from entry to allocation).

use std::collections::{HashMap, HashSet, VecDeque};

use super::node::Id;

/// (context address, creation time or 0 when not seen).
pub type Incarnation = (u64, u64);

/// How far up a chain is walked (task trees are shallow; this bounds a corrupt cycle).
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Birth {
    /// `Task.__init__` entered, on `tid`.
    entry_ns: u64,
    /// `Task.__init__` returned: names the incarnation.
    created_ns: u64,
    parent_ctx: u64,
    /// The birth before this one at the same (process, address): its sequence number, or
    /// [`NONE`].
    prev: u64,
    /// The latest inbound request this incarnation answered, or [`NONE`] (the correlator's
    /// id: that request may be forgotten by now, which the correlator checks).
    answered: Id,
    tid: u32,
    /// A context copy rather than a task's context.
    copy: bool,
}

const NONE: u64 = u64::MAX;

impl Birth {
    /// Whether the incarnation exists for code running on `tid` at `at_ns`.
    fn seen_from(&self, at_ns: u64, tid: u32) -> bool {
        (if tid == self.tid { self.entry_ns } else { self.created_ns }) <= at_ns
    }
}

/// Keyed by pids, thread ids and context addresses (the processes' own integers), probed on
/// every task event and every answered request: a fast hash, seeded per map.
type FastHash = foldhash::fast::RandomState;

/// Births in one ring, oldest first and forgotten first, each (process, address)'s linked
/// newest to oldest through `prev`.
///
/// One ring rather than a list per address: a birth costs one hash probe (the address's
/// newest) and a write at the ring's hot end; forgetting the oldest touches nothing else.
/// An address whose births are all forgotten keeps its stale entry in `latest` (a sequence
/// number below `base` reads as none) until a sweep once `latest` doubles the cap.
pub struct TaskLineage {
    births: VecDeque<Birth>,
    /// The sequence number of `births[0]`.
    base: u64,
    /// Each (process, address)'s newest birth, by sequence number.
    latest: HashMap<(u32, u64), u64, FastHash>,
    /// Threads seen creating tasks: event loops' (bounded by [`MAX_LOOP_THREADS`]).
    loop_threads: HashSet<(u32, u32), FastHash>,
    cap: usize,
    pub forgotten: u64,
}

/// Loop threads remembered at most; past it new ones are not, and copies they make are
/// not followed (a missing parent, never a wrong one).
const MAX_LOOP_THREADS: usize = 4096;

impl TaskLineage {
    pub fn new(cap: usize) -> TaskLineage {
        TaskLineage {
            births: VecDeque::new(),
            base: 0,
            latest: HashMap::default(),
            loop_threads: HashSet::default(),
            cap: cap.max(1),
            forgotten: 0,
        }
    }

    /// What the kernel reported: a task created or a context copied.
    pub fn record(&mut self, t: &crate::events::TaskCreated) {
        let (pid, tid) = (t.meta.pid, t.meta.tid);
        let times = (t.entry_ns, t.meta.ts_ns);
        self.born(pid, tid, t.child_ctx, t.parent_ctx, times, t.is_copy());
    }

    /// A task of `pid` was created by thread `tid` in context `parent` (its `__init__` ran
    /// from `entry_ns` to `ts_ns`) and runs in `child`.
    pub fn created(&mut self, pid: u32, tid: u32, child: u64, parent: u64, times: (u64, u64)) {
        self.born(pid, tid, child, parent, times, false);
    }

    /// Thread `tid` of `pid`, running in `parent`, copied it into `child` at `ts_ns`.
    pub fn copied(&mut self, pid: u32, tid: u32, child: u64, parent: u64, ts_ns: u64) {
        self.born(pid, tid, child, parent, (ts_ns, ts_ns), true);
    }

    fn born(&mut self, pid: u32, tid: u32, child: u64, parent: u64, (entry_ns, ts_ns): (u64, u64), copy: bool) {
        while self.births.len() >= self.cap {
            self.births.pop_front();
            self.base += 1;
            self.forgotten += 1;
        }
        if self.latest.len() >= 2 * self.cap {
            let base = self.base;
            self.latest.retain(|_, seq| *seq >= base);
        }
        if !copy && self.loop_threads.len() < MAX_LOOP_THREADS {
            self.loop_threads.insert((pid, tid));
        }
        let seq = self.base + self.births.len() as u64;
        let prev = self.latest.insert((pid, child), seq).unwrap_or(NONE);
        self.births.push_back(Birth {
            entry_ns: entry_ns.min(ts_ns),
            created_ns: ts_ns,
            parent_ctx: parent,
            prev,
            answered: NONE,
            tid,
            copy,
        });
    }

    /// The births remembered at (`pid`, `ctx`), newest first, with their ring positions.
    fn at(&self, pid: u32, ctx: u64) -> impl Iterator<Item = (usize, &Birth)> {
        let mut seq = self.latest.get(&(pid, ctx)).copied().unwrap_or(NONE);
        std::iter::from_fn(move || {
            let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
            let b = self.births.get(i)?;
            seq = b.prev;
            Some((i, b))
        })
    }

    /// The incarnation of `ctx` running on thread `tid` at `at_ns`: its latest birth seen
    /// from there (a task's; a copy answers no request, so its address names none).
    pub fn incarnation(&self, pid: u32, ctx: u64, at_ns: u64, tid: u32) -> Incarnation {
        (ctx, self.latest(pid, ctx, at_ns, tid).filter(|b| !b.copy).map_or(0, |b| b.created_ns))
    }

    fn latest(&self, pid: u32, ctx: u64, at_ns: u64, tid: u32) -> Option<Birth> {
        self.at(pid, ctx).map(|(_, b)| b).find(|b| b.seen_from(at_ns, tid)).copied()
    }

    /// The ring position of a task incarnation's birth, if remembered.
    fn position(&self, pid: u32, (ctx, created_ns): Incarnation) -> Option<usize> {
        if created_ns == 0 {
            return None;
        }
        self.at(pid, ctx).find(|(_, b)| b.created_ns == created_ns && !b.copy).map(|(i, _)| i)
    }

    /// Incarnation `inc` (whose birth was seen) answered inbound request `id`: its latest.
    pub fn set_answered(&mut self, pid: u32, inc: Incarnation, id: Id) {
        if let Some(i) = self.position(pid, inc) {
            self.births[i].answered = id;
        }
    }

    /// The latest inbound request incarnation `inc` answered, while its birth is remembered.
    pub fn answered(&self, pid: u32, inc: Incarnation) -> Option<Id> {
        let i = self.position(pid, inc)?;
        Some(self.births[i].answered).filter(|&id| id != NONE)
    }

    /// Whether a copy's birth names what runs on `tid` at its address: made on a loop
    /// thread, used on a thread that never created a task.
    fn copy_holds(&self, pid: u32, b: &Birth, tid: u32) -> bool {
        b.tid != tid && self.loop_threads.contains(&(pid, b.tid)) && !self.loop_threads.contains(&(pid, tid))
    }

    /// `ctx` as of `at_ns` on `tid`, then the incarnation that created it, and so on up.
    ///
    /// A task runs on its loop's thread. A context on another thread at the address of a
    /// task's (a pool thread's context placed where a finished task's context was freed) is
    /// not that task: its lineage is unknown, unless a copy made there for the pool is seen.
    pub fn ancestry(&self, pid: u32, ctx: u64, at_ns: u64, tid: u32) -> Vec<Incarnation> {
        let mut chain = Vec::new();
        let (mut ctx, mut at, mut tid) = (ctx, at_ns, tid);
        while ctx != 0 && chain.len() < MAX_DEPTH {
            let birth = self.latest(pid, ctx, at, tid).filter(|b| match b.copy {
                true => self.copy_holds(pid, b, tid),
                // Where the call runs (the chain's start), a task's context on another
                // thread is not that task; further up, creations are followed as recorded.
                false => !chain.is_empty() || b.tid == tid,
            });
            chain.push((ctx, birth.map_or(0, |b| b.created_ns)));
            let Some(b) = birth else { break };
            // The parent context was the creating thread's when `__init__` was entered.
            (ctx, at, tid) = (b.parent_ctx, b.entry_ns, b.tid);
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thread 9 runs the loop.
    const T: u32 = 9;

    #[test]
    fn ancestry_follows_the_incarnation_alive_at_each_birth() {
        let mut l = TaskLineage::new(100);
        // Request task 0xA (born 10 in loop context 0x1) creates 0xB at 20; 0xB creates 0xC at 30.
        l.created(7, T, 0xA, 0x1, (9, 10));
        l.created(7, T, 0xB, 0xA, (19, 20));
        l.created(7, T, 0xC, 0xB, (29, 30));
        assert_eq!(l.ancestry(7, 0xC, 35, T), vec![(0xC, 30), (0xB, 20), (0xA, 10), (0x1, 0)]);
        // 0xA's address is reused by another task at 50: 0xC's chain still names the first.
        l.created(7, T, 0xA, 0x1, (49, 50));
        assert_eq!(l.ancestry(7, 0xC, 60, T)[2], (0xA, 10));
        assert_eq!(l.incarnation(7, 0xA, 60, T), (0xA, 50));
        assert_eq!(l.incarnation(7, 0xA, 40, T), (0xA, 10));
        // Another process's contexts are its own.
        assert_eq!(l.ancestry(8, 0xC, 35, T), vec![(0xC, 0)]);
        assert!(l.ancestry(7, 0, 35, T).is_empty());
    }

    #[test]
    fn an_eager_task_is_itself_from_its_entry_on_its_own_thread() {
        let mut l = TaskLineage::new(100);
        // 0xB (a task of request task 0xA) is gone; request task 0xE's `__init__` runs from 100
        // to 200, reusing 0xB's address, and its first step calls at 150 (eager start).
        l.created(7, T, 0xA, 0x1, (9, 10));
        l.created(7, T, 0xB, 0xA, (19, 20));
        l.created(7, T, 0xE, 0x1, (99, 100));
        l.created(7, T, 0xB, 0xE, (100, 200));
        assert_eq!(l.ancestry(7, 0xB, 150, T), vec![(0xB, 200), (0xE, 100), (0x1, 0)]);
        assert_eq!(l.incarnation(7, 0xB, 150, T), (0xB, 200));
        // Another thread cannot run the new task before `__init__` returns.
        assert_eq!(l.incarnation(7, 0xB, 150, T + 1), (0xB, 20));
        assert_eq!(l.incarnation(7, 0xB, 200, T + 1), (0xB, 200));
        // Nested: 0xB's first step creates 0xC at 160..170: 0xB's incarnation as of 160 on T
        // is the new one.
        l.created(7, T, 0xC, 0xB, (160, 170));
        assert_eq!(l.ancestry(7, 0xC, 180, T), vec![(0xC, 170), (0xB, 200), (0xE, 100), (0x1, 0)]);
    }

    #[test]
    fn a_context_on_another_thread_at_a_tasks_address_has_no_lineage() {
        let mut l = TaskLineage::new(100);
        // Request task 0xA creates 0xB on the loop thread; 0xB ends and a thread pool's copy
        // of some context lands at its address, running on thread T + 1.
        l.created(7, T, 0xA, 0x1, (9, 10));
        l.created(7, T, 0xB, 0xA, (19, 20));
        assert_eq!(l.ancestry(7, 0xB, 50, T + 1), vec![(0xB, 0)]);
        assert_eq!(l.ancestry(7, 0xB, 50, T), vec![(0xB, 20), (0xA, 10), (0x1, 0)]);
    }

    #[test]
    fn a_copy_made_for_a_pool_thread_leads_to_the_task_that_made_it() {
        let mut l = TaskLineage::new(100);
        // Request task 0xA (born 10) copies its context into 0xD at 20 (`to_thread`); pool
        // thread T + 1 runs the work in 0xD from 25.
        l.created(7, T, 0xA, 0x1, (9, 10));
        l.copied(7, T, 0xD, 0xA, 20);
        assert_eq!(l.ancestry(7, 0xD, 25, T + 1), vec![(0xD, 20), (0xA, 10), (0x1, 0)]);
        // Not before the copy exists.
        assert_eq!(l.ancestry(7, 0xD, 15, T + 1), vec![(0xD, 0)]);
        // On the loop's own thread a copy is a callback's context: no lineage from it.
        assert_eq!(l.ancestry(7, 0xD, 25, T), vec![(0xD, 0)]);
        // A copy's parent that is itself a copy made on the loop thread stops the chain there.
        l.copied(7, T, 0xE, 0x5, 30);
        l.copied(7, T, 0x5, 0xA, 28);
        assert_eq!(l.ancestry(7, 0xE, 35, T + 1), vec![(0xE, 30), (0x5, 0)]);
        // A copy made off a loop (a worker's `call_soon_threadsafe`) is followed nowhere.
        l.copied(7, T + 1, 0xF, 0xD, 50);
        assert_eq!(l.ancestry(7, 0xF, 55, T), vec![(0xF, 0)]);
        assert_eq!(l.ancestry(7, 0xF, 55, T + 2), vec![(0xF, 0)]);
        // Nor onto another loop's thread (one that creates tasks): a context there at a freed
        // copy's address may be any callback's.
        l.created(7, T + 3, 0x30, 0x3, (1, 2));
        assert_eq!(l.ancestry(7, 0xD, 60, T + 3), vec![(0xD, 0)]);
        // A copy answers no request.
        assert_eq!(l.incarnation(7, 0xE, 60, T), (0xE, 0));
        // A task born later at the copy's address replaces it, on every thread.
        l.created(7, T, 0xD, 0x1, (40, 41));
        assert_eq!(l.ancestry(7, 0xD, 45, T + 1), vec![(0xD, 0)]);
        assert_eq!(l.ancestry(7, 0xD, 45, T), vec![(0xD, 41), (0x1, 0)]);
    }

    #[test]
    fn bounded() {
        let mut l = TaskLineage::new(2);
        l.created(1, T, 0xA, 0x1, (1, 1));
        l.created(1, T, 0xB, 0xA, (2, 2));
        l.created(1, T, 0xC, 0xB, (3, 3));
        assert_eq!(l.forgotten, 1);
        assert_eq!(l.ancestry(1, 0xC, 5, T), vec![(0xC, 3), (0xB, 2), (0xA, 0)]);
    }

    #[test]
    fn one_address_reused_forgets_its_oldest_first() {
        // A busy server's allocator hands one address to task after task.
        let mut l = TaskLineage::new(3);
        for n in 1..=5 {
            l.created(1, T, 0xA, 0x1, (n * 10, n * 10));
        }
        assert_eq!(l.forgotten, 2);
        // The three latest remain: each answers for its own time, the forgotten ones not.
        assert_eq!(l.incarnation(1, 0xA, 35, T), (0xA, 30));
        assert_eq!(l.incarnation(1, 0xA, 55, T), (0xA, 50));
        assert_eq!(l.incarnation(1, 0xA, 25, T), (0xA, 0));
    }

    #[test]
    fn an_answer_belongs_to_the_incarnation_that_gave_it() {
        let mut l = TaskLineage::new(10);
        l.created(1, T, 0xA, 0x1, (10, 10));
        l.set_answered(1, (0xA, 10), 7);
        l.created(1, T, 0xA, 0x1, (20, 20));
        assert_eq!(l.answered(1, (0xA, 10)), Some(7));
        assert_eq!(l.answered(1, (0xA, 20)), None);
        // The latest answer counts; an unseen creation and another process answer nothing.
        l.set_answered(1, (0xA, 10), 8);
        assert_eq!(l.answered(1, (0xA, 10)), Some(8));
        l.set_answered(1, (0xA, 0), 9);
        assert_eq!(l.answered(1, (0xA, 0)), None);
        assert_eq!(l.answered(2, (0xA, 10)), None);
        // A copy answers nothing, even at a task's time.
        l.copied(1, T, 0xB, 0xA, 30);
        l.set_answered(1, (0xB, 30), 9);
        assert_eq!(l.answered(1, (0xB, 30)), None);
    }

    #[test]
    fn forgotten_births_take_their_answers_and_addresses_with_them() {
        let mut l = TaskLineage::new(4);
        l.created(1, T, 0xA, 0x1, (1, 1));
        l.set_answered(1, (0xA, 1), 5);
        // Many one-off addresses: the oldest births go, and the index of addresses stays
        // within twice the cap.
        for n in 2..100u64 {
            l.created(1, T, 0x100 + n, 0x1, (n, n));
            assert!(l.latest.len() <= 8, "{}", l.latest.len());
        }
        assert_eq!(l.forgotten, 95);
        assert_eq!(l.answered(1, (0xA, 1)), None);
        assert_eq!(l.incarnation(1, 0xA, 50, T), (0xA, 0));
        assert_eq!(l.incarnation(1, 0x100 + 99, 99, T), (0x100 + 99, 99));
        assert_eq!(l.ancestry(1, 0x100 + 98, 99, T), vec![(0x100 + 98, 98), (0x1, 0)]);
    }
}
