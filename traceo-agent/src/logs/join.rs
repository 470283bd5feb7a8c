//! Which request a log record belongs to, by the spans' own rules (`correlate::parent`):
//! the record is a call made at its write time by its thread and task, and
//! [`pick_at_start`] / [`task_match`] choose among the process's inbound requests in flight
//! then. A threaded server's thread serving exactly one request, a lone request in flight
//! without a runtime, or an asyncio task (or one of its ancestors) that answered a request
//! in flight: that request. Several candidates and nothing to tell them apart: none
//! (`ambiguous`); no request in flight: none (`outside`).
//!
//! One more rule, for asyncio only: a record written by the exact task incarnation that
//! answered request R, after R's response (within `grace_ns`) and while no request in flight
//! matched, is R's (`after`): uvicorn logs an exception after Starlette has sent the 500,
//! from the same per-request task. A task serves one request in such servers; a
//! per-connection task that serves several in turn writes its record for the one it just
//! answered, since the next one is not yet in flight (else it would have matched).
//!
//! And its counterpart for threads without a runtime context (`after` too): a record written
//! by the thread that wrote request R's response, after it (within `grace_ns`), while no
//! request is in flight on that thread and before the thread reads another request, is R's:
//! gunicorn's sync and gthread workers write the access line after the response, from the
//! thread that answered. A thread serves one request at a time there, so what it writes
//! between answering R and reading the next request finishes R. The record waits (at most
//! `hold_ns`) until a request the thread read after it is seen, which shows the thread had
//! not started another before writing; at the deadline it takes R (a request whose first
//! bytes the thread read before the record would have to stay unread in full past the hold).
//! This rule comes before the lone-request rule: a lone request in flight on another thread
//! is not the one the record's thread just answered.
//!
//! Timing: a server exchange of a process that writes logs is held `grace_ns` (event time)
//! after it reaches this stage, so the records written for it (a traceback after the 500)
//! can ride with it: the exception becomes its span event and its `error.type`. Records
//! waiting for their candidates' answers wait at most `hold_ns`; a record for a request
//! already passed on still gets its ids (no span event then).

use std::collections::{HashMap, HashSet, VecDeque};

use crate::correlate::Answered;
use crate::correlate::{Carried, Inbound, Incarnation, Pick, Signal, TaskLineage, pick_at_start, task_match};
use crate::events::{Data, TaskCreated};
use crate::http::{Exchange, RequestSeen, Role};
use crate::joins::JoinEvent;

use super::LogRecord;
use super::assemble::{Assembler, AssemblerConfig, RawRecord, Write};

type Key = (u64, u64);

/// The request a record belongs to, as its JSON line names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub correlation_id: Option<String>,
    pub job_id: Option<String>,
}

impl Owner {
    pub fn of(ex: &Exchange) -> Owner {
        Owner {
            trace_id: ex.trace_id().map(|t| t.to_string()),
            span_id: ex.span_id().map(|s| s.to_string()),
            correlation_id: ex.correlation_id().map(str::to_owned),
            job_id: ex.job_id.clone(),
        }
    }
}

/// What the stage passes on, in order.
// A record is handed on once, by move.
#[allow(clippy::large_enum_variant)]
pub enum LogOut {
    /// An exchange with the records written for it.
    Exchange(Box<Exchange>, Option<JoinEvent>, Vec<LogRecord>),
    /// A record on its own: its owner already passed on, or none.
    Record(LogRecord, Option<Owner>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogJoinStats {
    pub records: u64,
    /// Attributed: by the thread or lone-request rule, by task, by the after-answer rule.
    pub by_thread: u64,
    pub by_task: u64,
    pub after_answer: u64,
    /// Not attributed: no request in flight; several could own it; waited too long.
    pub outside: u64,
    pub ambiguous: u64,
    pub expired: u64,
    /// Written in a block with other records (buffered output): the writer says nothing.
    pub buffered: u64,
    /// Exceptions reported by tracebacks, and those that became a span's event.
    pub exceptions: u64,
    pub exceptions_on_spans: u64,
    /// Bytes dropped by the assembly bounds.
    pub dropped_bytes: u64,
}

struct Done {
    end_ns: u64,
    answered_by: Option<Incarnation>,
    /// The thread that wrote the response, when it wrote it with no runtime context.
    answered_on: Option<u32>,
    owner: Owner,
    /// Passed on already (records for it go out alone).
    released: bool,
}

struct Req {
    key: Key,
    tid: u32,
    start_ns: u64,
    seen_ns: u64,
    done: Option<Done>,
}

struct Held {
    ex: Box<Exchange>,
    joined: Option<JoinEvent>,
    logs: Vec<LogRecord>,
}

struct Waiting {
    rec: LogRecord,
    deadline_ns: u64,
    /// Certain already; its exchange is still to come.
    owner: Option<Key>,
}

enum Decision {
    Owner(Key, Via),
    Wait,
    Outside,
    Ambiguous,
}

#[derive(Clone, Copy)]
enum Via {
    Thread,
    Task,
    After,
}

pub struct LogJoinConfig {
    pub grace_ns: u64,
    pub hold_ns: u64,
    /// Requests remembered per process at most.
    pub max_requests: usize,
    /// Records waiting at most (the oldest goes out unattributed past it).
    pub max_waiting: usize,
    /// Exchanges held at most (the oldest is passed on early past it).
    pub max_held: usize,
    pub assembler: AssemblerConfig,
}

impl Default for LogJoinConfig {
    fn default() -> Self {
        LogJoinConfig {
            grace_ns: 2_000_000_000,
            hold_ns: 4_000_000_000,
            max_requests: 4096,
            max_waiting: 16_384,
            max_held: 65_536,
            assembler: AssemblerConfig::default(),
        }
    }
}

pub struct LogJoin {
    cfg: LogJoinConfig,
    assembler: Assembler,
    lineage: TaskLineage,
    service_names: Vec<String>,
    service_by_pid: HashMap<u32, String>,
    log_pids: HashSet<u32>,
    reqs: HashMap<u32, Vec<Req>>,
    held: HashMap<Key, Held>,
    held_order: VecDeque<(u64, Key)>,
    waiting: Vec<Waiting>,
    now_ns: u64,
    pub stats: LogJoinStats,
}

impl LogJoin {
    /// How long a server exchange is held for its records (later stages wait for it).
    pub fn grace_ns(&self) -> u64 {
        self.cfg.grace_ns
    }

    pub fn new(mut cfg: LogJoinConfig, service_names: Vec<String>) -> LogJoin {
        LogJoin {
            assembler: Assembler::new(std::mem::take(&mut cfg.assembler)),
            cfg,
            lineage: TaskLineage::new(65_536),
            service_names,
            service_by_pid: HashMap::new(),
            log_pids: HashSet::new(),
            reqs: HashMap::new(),
            held: HashMap::new(),
            held_order: VecDeque::new(),
            waiting: Vec::new(),
            now_ns: 0,
            stats: LogJoinStats::default(),
        }
    }

    pub fn task(&mut self, t: &TaskCreated) {
        self.lineage.record(t);
    }

    pub fn exited(&mut self, pid: u32) {
        self.service_by_pid.remove(&pid);
    }

    /// A log write: assembled, and the records it completes decided.
    pub fn write(&mut self, d: &Data, out: &mut impl FnMut(LogOut)) {
        self.now_ns = self.now_ns.max(d.meta.ts_ns);
        self.log_pids.insert(d.meta.pid);
        let text = super::redact::scrub_log(&d.payload);
        let w = Write {
            pid: d.meta.pid,
            tid: d.meta.tid,
            fd: d.fd,
            service: d.meta.service,
            ts_ns: d.enter_ns.max(1),
            task_ctx: d.task_ctx,
            bytes: &text,
        };
        let mut raws = Vec::new();
        self.assembler.write(&w, &mut |r| raws.push(r));
        if d.truncated {
            self.stats.dropped_bytes += d.total_len.saturating_sub(d.payload.len() as u64);
        }
        raws.into_iter().for_each(|r| self.record(r, out));
    }

    /// An inbound request was read in full.
    pub fn request_seen(&mut self, seen: &RequestSeen) {
        if seen.role != Role::Server {
            return;
        }
        let list = self.reqs.entry(seen.pid).or_default();
        if list.iter().any(|r| r.key == (seen.conn_id, seen.seq)) {
            return;
        }
        if list.len() >= self.cfg.max_requests {
            list.remove(0);
        }
        list.push(Req {
            key: (seen.conn_id, seen.seq),
            tid: seen.tid,
            start_ns: seen.start_ns,
            seen_ns: self.now_ns,
            done: None,
        });
    }

    /// An exchange with its trace (and job) ids: held a while if records may come for it.
    pub fn exchange(&mut self, ex: Box<Exchange>, joined: Option<JoinEvent>, out: &mut impl FnMut(LogOut)) {
        let end = ex.response_last_ns.unwrap_or(ex.request_last_ns);
        self.now_ns = self.now_ns.max(end);
        self.service_by_pid.entry(ex.pid).or_insert_with(|| ex.service.to_string());
        if ex.role != Role::Server {
            return out(LogOut::Exchange(ex, joined, Vec::new()));
        }
        let key = (ex.conn_id, ex.request_seq);
        let answered_by = (ex.response_ctx != 0).then(|| {
            let at = ex.response_first_ns.unwrap_or(end);
            self.lineage.incarnation(ex.pid, ex.response_ctx, at, ex.response_tid)
        });
        let hold = self.log_pids.contains(&ex.pid);
        let answered_on = (ex.response_ctx == 0).then_some(ex.response_tid);
        let done = Done { end_ns: end, answered_by, answered_on, owner: Owner::of(&ex), released: !hold };
        let list = self.reqs.entry(ex.pid).or_default();
        match list.iter_mut().find(|r| r.key == key) {
            Some(r) => r.done = Some(done),
            None => list.push(Req {
                key,
                tid: ex.tid,
                start_ns: ex.request_first_ns,
                seen_ns: self.now_ns,
                done: Some(done),
            }),
        }
        let pid = ex.pid;
        if hold {
            if self.held.len() >= self.cfg.max_held {
                if let Some(first) = self.held_order.front_mut() {
                    first.0 = 0;
                }
                self.release(false, out);
            }
            self.held.insert(key, Held { ex, joined, logs: Vec::new() });
            self.held_order.push_back((self.now_ns.saturating_add(self.cfg.grace_ns), key));
        } else {
            out(LogOut::Exchange(ex, joined, Vec::new()));
        }
        self.retry(Some(pid), false, out);
    }

    /// Time passes: complete quiet records, decide what waited, pass on held exchanges.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl FnMut(LogOut)) {
        self.now_ns = self.now_ns.max(now_ns);
        let mut raws = Vec::new();
        self.assembler.tick(self.now_ns, &mut |r| raws.push(r));
        raws.into_iter().for_each(|r| self.record(r, out));
        self.retry(None, false, out);
        self.release(false, out);
        self.forget();
        self.stats.dropped_bytes = self.stats.dropped_bytes.max(self.assembler.dropped_bytes);
    }

    /// The end: every record decided with what is known, every exchange passed on.
    pub fn finish(&mut self, out: &mut impl FnMut(LogOut)) {
        let mut raws = Vec::new();
        self.assembler.finish(&mut |r| raws.push(r));
        raws.into_iter().for_each(|r| self.record(r, out));
        self.retry(None, true, out);
        self.release(true, out);
    }

    fn service(&self, raw: &RawRecord) -> String {
        raw.service
            .and_then(|i| self.service_names.get(i as usize).cloned())
            .or_else(|| self.service_by_pid.get(&raw.pid).cloned())
            .unwrap_or_else(|| "unknown".to_owned())
    }

    fn record(&mut self, raw: RawRecord, out: &mut impl FnMut(LogOut)) {
        let service = self.service(&raw);
        let batched = raw.batched;
        let rec = LogRecord::from_raw(raw, service);
        self.stats.records += 1;
        if rec.exception.is_some() {
            self.stats.exceptions += 1;
        }
        if batched {
            self.stats.buffered += 1;
            return out(LogOut::Record(rec, None));
        }
        if self.waiting.len() >= self.cfg.max_waiting {
            let oldest = self.waiting.remove(0);
            self.stats.expired += 1;
            out(LogOut::Record(oldest.rec, None));
        }
        let deadline_ns = rec.ts_ns.saturating_add(self.cfg.hold_ns).max(self.now_ns);
        self.waiting.push(Waiting { rec, deadline_ns, owner: None });
        let last = self.waiting.len() - 1;
        self.try_one(last, false, out);
    }

    /// Decide the waiting records (of `pid`, or all); `force` settles them all.
    fn retry(&mut self, pid: Option<u32>, force: bool, out: &mut impl FnMut(LogOut)) {
        let mut i = 0;
        while i < self.waiting.len() {
            let w = &self.waiting[i];
            let due = force || w.deadline_ns <= self.now_ns;
            if (pid.is_none() || pid == Some(w.rec.pid)) && self.try_one(i, due, out) {
                continue;
            }
            i += 1;
        }
    }

    /// Decide waiting record `i`; true when it left the list.
    fn try_one(&mut self, i: usize, force: bool, out: &mut impl FnMut(LogOut)) -> bool {
        let decision = match self.waiting[i].owner {
            Some(key) => Decision::Owner(key, Via::Thread),
            None => self.decide(&self.waiting[i], force),
        };
        let (key, via) = match decision {
            Decision::Wait if !force => return false,
            Decision::Wait => {
                self.stats.expired += 1;
                let w = self.waiting.remove(i);
                out(LogOut::Record(w.rec, None));
                return true;
            }
            Decision::Outside | Decision::Ambiguous => {
                if matches!(decision, Decision::Outside) {
                    self.stats.outside += 1;
                } else {
                    self.stats.ambiguous += 1;
                }
                let w = self.waiting.remove(i);
                out(LogOut::Record(w.rec, None));
                return true;
            }
            Decision::Owner(key, via) => (key, via),
        };
        let pid = self.waiting[i].rec.pid;
        let done = self
            .reqs
            .get(&pid)
            .and_then(|l| l.iter().find(|r| r.key == key))
            .and_then(|r| r.done.as_ref())
            .map(|d| (d.owner.clone(), d.released));
        let Some((owner, released)) = done else {
            // Certain, but its exchange is still to come.
            if force {
                self.stats.expired += 1;
                let w = self.waiting.remove(i);
                out(LogOut::Record(w.rec, None));
                return true;
            }
            if self.waiting[i].owner.is_none() {
                self.count(via);
            }
            self.waiting[i].owner = Some(key);
            return false;
        };
        if self.waiting[i].owner.is_none() {
            self.count(via);
        }
        let w = self.waiting.remove(i);
        match self.held.get_mut(&key) {
            Some(h) if !released => h.logs.push(w.rec),
            _ => out(LogOut::Record(w.rec, Some(owner))),
        }
        true
    }

    fn count(&mut self, via: Via) {
        match via {
            Via::Thread => self.stats.by_thread += 1,
            Via::Task => self.stats.by_task += 1,
            Via::After => self.stats.after_answer += 1,
        }
    }

    fn decide(&self, w: &Waiting, force: bool) -> Decision {
        let rec = &w.rec;
        let ts = rec.ts_ns;
        let empty = Vec::new();
        let reqs = self.reqs.get(&rec.pid).unwrap_or(&empty);
        let cands: Vec<&Req> =
            reqs.iter().filter(|r| r.start_ns < ts && r.done.as_ref().is_none_or(|d| d.end_ns >= ts)).collect();
        if Signal::of(rec.task_ctx) == Signal::None && !cands.iter().any(|r| r.tid == rec.tid) {
            if let Some(d) = self.after_thread(w, reqs, force) {
                return d;
            }
        }
        let inbound: Vec<Inbound<usize>> = cands
            .iter()
            .enumerate()
            .map(|(i, r)| Inbound {
                key: i,
                conn_id: r.key.0,
                tid: r.tid,
                start_ns: r.start_ns,
                trace_id: None,
                correlation_id: None,
            })
            .collect();
        match pick_at_start(rec.tid, ts, &Carried::default(), &inbound, Signal::of(rec.task_ctx)) {
            Pick::Certain(i, _) => Decision::Owner(cands[i].key, Via::Thread),
            Pick::None => self.after_answer(w, reqs),
            Pick::Ambiguous(_) => Decision::Ambiguous,
            Pick::Task(list) => {
                let answered: Vec<Answered<Key>> = list
                    .iter()
                    .filter_map(|i| {
                        let r = cands[*i];
                        let d = r.done.as_ref()?;
                        Some(Answered {
                            key: r.key,
                            start_ns: r.start_ns,
                            end_ns: d.end_ns,
                            answered_by: d.answered_by?,
                        })
                    })
                    .collect();
                // The record's task and its ancestors as known now (an eager task's creation is
                // reported after its first step), by the spans' rule: its own task's answer
                // is certain at once, an ancestor's once no candidate is left to answer.
                let chain = self.chain(rec);
                let open = list.iter().any(|i| cands[*i].done.is_none());
                match task_match(ts, &chain, &answered) {
                    Some((key, 0)) => return Decision::Owner(key, Via::Task),
                    Some((key, _)) if !open => return Decision::Owner(key, Via::Task),
                    _ => {}
                }
                if open && !force {
                    return Decision::Wait;
                }
                match self.after_answer(w, reqs) {
                    Decision::Outside => Decision::Ambiguous,
                    d => d,
                }
            }
        }
    }

    fn chain(&self, rec: &LogRecord) -> Vec<Incarnation> {
        self.lineage.ancestry(rec.pid, rec.task_ctx, rec.ts_ns, rec.tid)
    }

    /// The asyncio after-answer rule (see the module's comment).
    fn after_answer(&self, w: &Waiting, reqs: &[Req]) -> Decision {
        let chain = self.chain(&w.rec);
        // A task whose creation was seen (a thread's base context answers request after
        // request: its records after an answer may be about anything).
        let Some(own) = chain.first().filter(|c| Signal::of(w.rec.task_ctx) == Signal::Task && c.1 != 0) else {
            return Decision::Outside;
        };
        let ts = w.rec.ts_ns;
        let hit = reqs
            .iter()
            .filter_map(|r| Some((r, r.done.as_ref()?)))
            .filter(|(_, d)| d.answered_by == Some(*own) && d.end_ns < ts && ts - d.end_ns <= self.cfg.grace_ns)
            .max_by_key(|(_, d)| d.end_ns);
        match hit {
            Some((r, _)) => Decision::Owner(r.key, Via::After),
            None => Decision::Outside,
        }
    }

    /// The threads' after-answer rule (see the module's comment): `None` when the record's
    /// thread answered no request just before it.
    fn after_thread(&self, w: &Waiting, reqs: &[Req], force: bool) -> Option<Decision> {
        let (tid, ts) = (w.rec.tid, w.rec.ts_ns);
        let (r, d) = reqs
            .iter()
            .filter_map(|r| Some((r, r.done.as_ref()?)))
            .filter(|(_, d)| d.answered_on == Some(tid) && d.end_ns < ts && ts - d.end_ns <= self.cfg.grace_ns)
            .max_by_key(|(_, d)| d.end_ns)?;
        // Requests the thread read after R's: one begun before the record leaves it open.
        let later = reqs.iter().filter(|o| o.key != r.key && o.tid == tid && o.start_ns > r.start_ns);
        let mut read_after = false;
        for o in later {
            if o.start_ns <= ts || o.start_ns <= d.end_ns {
                return Some(Decision::Ambiguous);
            }
            read_after = true;
        }
        if read_after || force { Some(Decision::Owner(r.key, Via::After)) } else { Some(Decision::Wait) }
    }

    /// Pass on the exchanges held long enough (all, at the end).
    fn release(&mut self, all: bool, out: &mut impl FnMut(LogOut)) {
        while let Some(&(at, key)) = self.held_order.front() {
            if !all && at > self.now_ns {
                break;
            }
            self.held_order.pop_front();
            let Some(mut h) = self.held.remove(&key) else { continue };
            if let Some(r) = self.reqs.get_mut(&h.ex.pid).and_then(|l| l.iter_mut().find(|r| r.key == key)) {
                if let Some(d) = &mut r.done {
                    d.released = true;
                }
            }
            if h.ex.exception.is_none() {
                h.ex.exception = h.logs.iter().find_map(|r| r.exception.clone());
                if h.ex.exception.is_some() {
                    self.stats.exceptions_on_spans += 1;
                }
            }
            out(LogOut::Exchange(h.ex, h.joined, h.logs));
        }
    }

    /// Forget requests long done, or never answered.
    fn forget(&mut self) {
        let now = self.now_ns;
        let keep = self.cfg.grace_ns.saturating_add(self.cfg.hold_ns);
        for list in self.reqs.values_mut() {
            list.retain(|r| match &r.done {
                Some(d) => !d.released || d.end_ns.saturating_add(keep) >= now,
                None => r.seen_ns.saturating_add(60_000_000_000) >= now,
            });
        }
        self.reqs.retain(|_, l| !l.is_empty());
    }

    /// Records being assembled or waiting, and exchanges held (gauges).
    pub fn backlog(&self) -> (usize, usize, usize) {
        (self.assembler.pending(), self.waiting.len(), self.held.len())
    }
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
