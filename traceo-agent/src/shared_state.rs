//! `--shared-state redis://HOST:PORT[/DB]`: agents on different hosts meet in Redis.
//!
//! - Connections: each client span is published under the TCP sequence numbers of its
//!   request and response (`traceo:conn:tcp:HASH` = trace and span id; without them,
//!   its connection as the client sees it and its position on it; see `conn_key`). A server
//!   span that starts a trace on this host (its client is not traced here) is held while the
//!   far side's key is looked up; found, it becomes that client span's child, and what this
//!   host already put in its trace moves with it.
//! - Provisional ids: a client span held while its trace's root is undecided is published at
//!   once, marked provisional (`TRACE-SPAN?`), so that far sides need not wait for the root.
//!   When the root is decided the trace's final id is published (`traceo:trace:OLD` = NEW, or
//!   = OLD when it stays), and a far side that read a provisional value waits for that before
//!   it takes the trace id: never a provisional id as fact.
//! - Jobs: an issued join key is published (`traceo:job:VALUE` = trace, span, service); a
//!   request naming a value not issued here asks for it while the join stage holds it.
//!
//! The pipeline thread never waits: requests go through a bounded queue to a task on the
//! tokio runtime (full: dropped and counted), answers come back on a channel read at each
//! event and tick. Only ids and service names are written. A lookup that finds nothing
//! leaves the span as this host saw it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::correlate::{SpanId, TraceId};
use crate::http::{Exchange, Link, Role, SpanRef};
use crate::recent::Recent;

/// How long a server span waits for its far side's key (the client publishes when its
/// exchange completes, after the server answered).
const LOOKUP_HOLD: Duration = Duration::from_millis(1500);
/// How long a span waits for its trace's root to be decided (a root completes last).
const CHILD_HOLD_NS: u64 = 5_000_000_000;
/// Exchanges held at most; past it, new ones pass as they are.
const MAX_HELD: usize = 4096;
const QUEUE: usize = 1024;
/// Connection keys live this long in Redis.
const CONN_TTL_S: u64 = 120;
/// How long a far side that read a provisional value waits for its trace's final id (the
/// root's own lookup, then its hold for children).
const FINAL_HOLD: Duration = Duration::from_millis(4000);
/// How long a job value named here is looked for: the issuing host publishes it once its
/// exchange leaves its own cross-host wait (its far side's key, then perhaps the final id),
/// and the exchange naming it (a webhook) may arrive before that.
pub const JOB_LOOKUP_HOLD: Duration =
    Duration::from_millis(LOOKUP_HOLD.as_millis() as u64 + FINAL_HOLD.as_millis() as u64);

pub use crate::metrics::SharedStateMetrics as Counts;

enum Request {
    Publish {
        key: String,
        value: String,
        ttl_s: u64,
    },
    /// Look up `key` until found or `deadline` (a connection's answer follows a moved trace).
    Lookup {
        what: Wanted,
        key: String,
        deadline: Instant,
    },
}

#[derive(Clone, Debug)]
enum Wanted {
    Conn(TraceId),
    Job(String),
}

enum Answer {
    Conn(TraceId, Option<SpanRef>),
    Job(String, Option<(SpanRef, String)>),
}

/// The pipeline's side.
pub struct SharedState {
    tx: tokio::sync::mpsc::Sender<Request>,
    answers: std::sync::mpsc::Receiver<Answer>,
    pub counts: Arc<Counts>,
    job_ttl_s: u64,
    /// Server roots waiting for their far side, with what came of their trace meanwhile.
    #[allow(clippy::type_complexity)]
    pending: HashMap<TraceId, (u64, Box<Exchange>, Vec<Box<Exchange>>)>,
    /// Spans whose trace's root has not passed yet.
    // Exchanges are boxed once and handed through the stages: moves are pointer-sized.
    #[allow(clippy::vec_box)]
    waiting: HashMap<TraceId, (u64, Vec<Box<Exchange>>)>,
    held: usize,
    settled: Recent<TraceId, ()>,
    moved: Recent<TraceId, TraceId>,
    jobs_asked: Recent<String, ()>,
    /// Traces with provisionally published client spans: their final id is published.
    provisional: Recent<TraceId, ()>,
    /// Client spans made parents here since `take_remote_parents` (for the joins).
    remote_parents: Vec<SpanRef>,
}

impl SharedState {
    /// Start the Redis task on the current tokio runtime.
    pub fn start(url: &str, job_ttl_s: u64, counts: Counts) -> anyhow::Result<SharedState> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("--shared-state {url}: {e}"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let (atx, answers) = std::sync::mpsc::channel();
        let counts = Arc::new(counts);
        tokio::spawn(serve(Arc::new(Store::new(client, counts.clone())), rx, atx));
        Ok(SharedState::with(tx, answers, counts, job_ttl_s))
    }

    /// The pipeline's side of the channels given.
    fn with(
        tx: tokio::sync::mpsc::Sender<Request>,
        answers: std::sync::mpsc::Receiver<Answer>,
        counts: Arc<Counts>,
        job_ttl_s: u64,
    ) -> SharedState {
        SharedState {
            tx,
            answers,
            counts,
            job_ttl_s: job_ttl_s.max(1),
            pending: HashMap::new(),
            waiting: HashMap::new(),
            held: 0,
            settled: Recent::new(),
            moved: Recent::new(),
            jobs_asked: Recent::new(),
            provisional: Recent::new(),
            remote_parents: Vec::new(),
        }
    }

    fn send(&self, r: Request) -> bool {
        let sent = self.tx.try_send(r).is_ok();
        if !sent {
            self.counts.dropped.inc();
        }
        sent
    }

    /// A client span under its connection key; `provisional` while its trace may yet move.
    fn publish_conn(&mut self, ex: &Exchange, provisional: bool) {
        if let (Role::Client, Some(key), Some(t)) = (ex.role, conn_key(ex, false), &ex.trace) {
            let mut value = span_value(t.trace_id, t.span_id);
            if provisional {
                value.push('?');
                self.provisional.insert(t.trace_id, ());
            }
            self.send(Request::Publish { key, value, ttl_s: CONN_TTL_S });
        }
    }

    /// `trace` is decided (moved to `to`, or staying): for far sides that read it provisional.
    fn publish_final(&mut self, trace: TraceId, to: TraceId) {
        if self.provisional.get(&trace).is_some() {
            self.provisional.remove(&trace);
            let key = format!("traceo:trace:{trace}");
            self.send(Request::Publish { key, value: to.to_string(), ttl_s: CONN_TTL_S });
        }
    }

    /// An exchange from the correlator: the exchanges ready to go on (now or released).
    pub fn observe(&mut self, mut ex: Box<Exchange>, ready: &mut Vec<Box<Exchange>>) {
        let Some(t) = ex.trace.as_mut() else { return ready.push(ex) };
        let trace = t.trace_id;
        if let Some(&to) = self.moved.get(&trace) {
            t.trace_id = to;
            return ready.push(ex);
        }
        if self.settled.get(&trace).is_some() || self.held >= MAX_HELD {
            return ready.push(ex);
        }
        // Held from here on: publish now, provisional (its trace may move); again once final.
        if self.pending.contains_key(&trace) {
            self.publish_conn(&ex, true);
            if let Some((_, _, children)) = self.pending.get_mut(&trace) {
                children.push(ex);
            }
            self.held += 1;
            return;
        }
        // A server span whose parent came in its `traceparent` is this host's root of a trace
        // begun elsewhere: nothing to look up, and nothing here to wait for.
        let propagated = ex.role == Role::Server && t.link == Some(Link::Propagated);
        if propagated {
            self.settle(trace, ready);
            return ready.push(ex);
        }
        if t.parent.is_some() {
            self.publish_conn(&ex, true);
            let at = arrival(&ex);
            self.waiting.entry(trace).or_insert((at, Vec::new())).1.push(ex);
            self.held += 1;
            return;
        }
        let lookup = (ex.role == Role::Server).then(|| conn_key(&ex, true)).flatten();
        let deadline = Instant::now() + LOOKUP_HOLD;
        if let Some(key) = lookup {
            if self.send(Request::Lookup { what: Wanted::Conn(trace), key, deadline }) {
                let (_, children) = self.waiting.remove(&trace).unwrap_or_default();
                self.held += 1;
                self.pending.insert(trace, (arrival(&ex), ex, children));
                return;
            }
        }
        self.settle(trace, ready);
        ready.push(ex);
    }

    // Exchanges are boxed once and handed through the stages: moves are pointer-sized.
    #[allow(clippy::vec_box)]
    fn settle(&mut self, trace: TraceId, ready: &mut Vec<Box<Exchange>>) {
        self.settled.insert(trace, ());
        self.publish_final(trace, trace);
        if let Some((_, children)) = self.waiting.remove(&trace) {
            self.held -= children.len();
            ready.extend(children);
        }
    }

    /// The far side's client span for a pending root: found, the root becomes its child
    /// and the root's trace moves into the client's.
    // Exchanges are boxed once and handed through the stages: moves are pointer-sized.
    #[allow(clippy::vec_box)]
    fn answered(&mut self, trace: TraceId, found: Option<SpanRef>, ready: &mut Vec<Box<Exchange>>) {
        let Some((_, mut root, children)) = self.pending.remove(&trace) else { return };
        self.held -= 1 + children.len();
        if let (Some(client), Some(t)) = (found, root.trace.as_mut()) {
            t.trace_id = client.trace_id;
            t.parent = Some(client.span_id);
            t.link = Some(Link::Connection);
            self.moved.insert(trace, client.trace_id);
            self.remote_parents.push(client);
            // Always: a far side may have read this host's spans under the old id.
            self.provisional.insert(trace, ());
            self.publish_final(trace, client.trace_id);
        } else {
            self.settled.insert(trace, ());
            self.publish_final(trace, trace);
        }
        ready.push(root);
        for mut c in children {
            if let (Some(&to), Some(t)) = (self.moved.get(&trace), c.trace.as_mut()) {
                t.trace_id = to;
            }
            ready.push(c);
        }
    }

    /// Answers that came back: exchanges released, and remote job origins for the joins.
    pub fn poll(&mut self, ready: &mut Vec<Box<Exchange>>, jobs: &mut Vec<(String, SpanRef, String)>) {
        while let Ok(a) = self.answers.try_recv() {
            match a {
                Answer::Conn(trace, found) => self.answered(trace, found, ready),
                Answer::Job(value, Some((span, service))) => jobs.push((value, span, service)),
                // Asked again by the next request naming it (Redis may be back).
                Answer::Job(value, None) => self.jobs_asked.remove(&value),
            }
        }
    }

    /// The far parents found since the last call: they never pass this host's pipeline.
    pub fn take_remote_parents(&mut self) -> Vec<SpanRef> {
        std::mem::take(&mut self.remote_parents)
    }

    /// Release what waited too long (its root never came, or no answer came).
    pub fn tick(&mut self, now_ns: u64, ready: &mut Vec<Box<Exchange>>) {
        let old: Vec<TraceId> = self
            .waiting
            .iter()
            .filter(|(_, (at, _))| now_ns.saturating_sub(*at) > CHILD_HOLD_NS)
            .map(|(t, _)| *t)
            .collect();
        old.into_iter().for_each(|t| self.settle(t, ready));
        // A lookup polls the key, then perhaps the final id of a provisional value.
        let late = (LOOKUP_HOLD + FINAL_HOLD).as_nanos() as u64 + 1_000_000_000;
        let stuck: Vec<TraceId> =
            self.pending.iter().filter(|(_, (at, ..))| now_ns.saturating_sub(*at) > late).map(|(t, _)| *t).collect();
        stuck.into_iter().for_each(|t| self.answered(t, None, ready));
    }

    pub fn finish(&mut self, ready: &mut Vec<Box<Exchange>>) {
        let pending: Vec<TraceId> = self.pending.keys().copied().collect();
        pending.into_iter().for_each(|t| self.answered(t, None, ready));
        let waiting: Vec<TraceId> = self.waiting.keys().copied().collect();
        waiting.into_iter().for_each(|t| self.settle(t, ready));
    }

    /// After the joins, with final ids: client spans (again), issued job keys.
    pub fn passed(&mut self, ex: &Exchange, issued: bool) {
        self.publish_conn(ex, false);
        if let (true, Some(value), Some(t)) = (issued, &ex.job_id, &ex.trace) {
            let value_out = format!("{} {}", span_value(t.trace_id, t.span_id), ex.service);
            self.send(Request::Publish { key: format!("traceo:job:{value}"), value: value_out, ttl_s: self.job_ttl_s });
        }
    }

    /// A request named a job value not issued here: ask the other agents (once).
    pub fn want_job(&mut self, value: String) {
        if self.jobs_asked.get(&value).is_some() {
            return;
        }
        self.jobs_asked.insert(value.clone(), ());
        let key = format!("traceo:job:{value}");
        self.send(Request::Lookup { what: Wanted::Job(value), key, deadline: Instant::now() + JOB_LOOKUP_HOLD });
    }
}

fn arrival(ex: &Exchange) -> u64 {
    ex.response_last_ns.unwrap_or(ex.request_last_ns)
}

fn span_value(trace: TraceId, span: SpanId) -> String {
    format!("{trace}-{span}")
}

fn parse_span(s: &str) -> Option<SpanRef> {
    let (t, sp) = s.split_once('-')?;
    Some(SpanRef { trace_id: TraceId::parse(t)?, span_id: SpanId::parse(sp)? })
}

/// Where both ends of one exchange meet, plus a digest of its request line and body size
/// (so that a coincidence of positions cannot meet another request; the digest keeps the
/// target out of Redis).
///
/// - The TCP sequence numbers of the request's and the response's first bytes, when the
///   kernel read them (plaintext over TCP): both ends number the bytes alike, and NAT (a
///   Kubernetes Service, a masquerading node) rewrites addresses and ports but not them.
///   They start from each connection's random initial numbers, 64 bits in all, so two
///   exchanges meet by chance about once in 2^64 even before the digest. Only a SHA-256 of
///   numbers and request goes to Redis: a live connection's numbers are no one else's business.
/// - Else (TLS plaintext, whose bytes are not the TCP stream's) the connection as both ends
///   name it and the request's position on it: right only where no NAT sits between them.
///
/// `None` where nothing is comparable: no addresses, loopback (both ends are on this host,
/// stitched locally), a parse that lost its place, and for positions a connection open
/// before the agent came (they count from there).
fn conn_key(ex: &Exchange, server: bool) -> Option<String> {
    if ex.flags.after_loss || ex.flags.parse_error || ex.db.is_some() {
        return None;
    }
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (local, peer) = (canon(ex.local?), canon(ex.peer?));
    if local.ip().is_loopback() || peer.ip().is_loopback() {
        return None;
    }
    let line = format!("{} {} {}", ex.method, ex.target, ex.request_body_bytes);
    let digest = crate::fnv::fnv1a(line.as_bytes());
    if let Some([request, response]) = ex.tcp_seq {
        use sha2::Digest;
        let hash = sha2::Sha256::new()
            .chain_update(request.to_be_bytes())
            .chain_update(response.to_be_bytes())
            .chain_update(line.as_bytes())
            .finalize();
        let mut key = b"traceo:conn:tcp:".to_vec();
        crate::correlate::push_hex(&mut key, &hash[..16]);
        return String::from_utf8(key).ok();
    }
    if ex.flags.midstream {
        return None;
    }
    let (client, srv) = if server { (peer, local) } else { (local, peer) };
    Some(format!("traceo:conn:{client}>{srv}#{}:{digest:016x}", ex.request_seq))
}

/// Redis, reconnected on demand; failures counted and logged once.
struct Store {
    client: redis::Client,
    conn: tokio::sync::Mutex<(Option<redis::aio::MultiplexedConnection>, Option<Instant>)>,
    counts: Arc<Counts>,
    warned: AtomicBool,
}

const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

impl Store {
    fn new(client: redis::Client, counts: Arc<Counts>) -> Store {
        Store { client, conn: tokio::sync::Mutex::new((None, None)), counts, warned: AtomicBool::new(false) }
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) {
        self.counts.errors.inc();
        if !self.warned.swap(true, Relaxed) {
            log::warn!("shared state: {what}: {e} (host-local tracing goes on; errors are counted)");
        } else {
            log::debug!("shared state: {what}: {e}");
        }
    }

    /// A connection, or `None` (at most one connection attempt a second).
    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = &guard.0 {
            return Some(c.clone());
        }
        if guard.1.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        guard.1 = Some(Instant::now());
        match tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_multiplexed_async_connection()).await {
            Ok(Ok(c)) => {
                if self.warned.swap(false, Relaxed) {
                    log::info!("shared state: connected again");
                }
                guard.0 = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                self.failed("cannot connect", e);
                None
            }
            Err(_) => {
                self.failed("cannot connect", "timed out");
                None
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, query: Query) -> Result<T, ()> {
        let Some(mut c) = self.connection().await else {
            self.counts.errors.inc();
            return Err(());
        };
        let sent = async {
            match query {
                Query::One(cmd) => cmd.query_async::<T>(&mut c).await,
                Query::Many(pipe) => pipe.query_async::<T>(&mut c).await,
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, sent).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.conn.lock().await.0 = None;
                self.failed("command failed", e);
                Err(())
            }
            Err(_) => {
                self.conn.lock().await.0 = None;
                self.failed("command failed", "timed out");
                Err(())
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<String>, ()> {
        self.run(Query::One(redis::cmd("GET").arg(key).clone())).await
    }

    /// `key`'s value, polled until found or `deadline`.
    async fn poll(&self, key: &str, deadline: Instant) -> Option<String> {
        let mut wait = Duration::from_millis(50);
        loop {
            if let Ok(Some(v)) = self.get(key).await {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            tokio::time::sleep(wait.min(deadline - now)).await;
            wait = (wait * 2).min(Duration::from_millis(400));
        }
    }

    /// Polls `key` until found or `deadline` (the far side may publish a little later).
    async fn lookup(&self, what: Wanted, key: String, deadline: Instant) -> Answer {
        self.counts.lookups.inc();
        let found = self.poll(&key, deadline).await;
        let counter = if found.is_some() { &self.counts.hits } else { &self.counts.misses };
        counter.inc();
        match what {
            Wanted::Conn(trace) => {
                let provisional = found.as_deref().is_some_and(|v| v.ends_with('?'));
                let mut span = found.as_deref().and_then(|v| parse_span(v.trim_end_matches('?')));
                if provisional {
                    if let Some(s) = span.as_mut() {
                        // The far side's trace was undecided: wait for its final id, or give up.
                        match self.poll(&format!("traceo:trace:{}", s.trace_id), Instant::now() + FINAL_HOLD).await {
                            Some(to) if TraceId::parse(&to).is_some() => {
                                s.trace_id = TraceId::parse(&to).expect("checked")
                            }
                            _ => span = None,
                        }
                    }
                }
                // The client's trace may have moved again since (a hop or two).
                for _ in 0..2 {
                    let Some(s) = span.as_mut() else { break };
                    match self.get(&format!("traceo:trace:{}", s.trace_id)).await {
                        Ok(Some(to)) => match TraceId::parse(&to) {
                            Some(t) if t != s.trace_id => s.trace_id = t,
                            _ => break,
                        },
                        _ => break,
                    }
                }
                Answer::Conn(trace, span)
            }
            Wanted::Job(value) => {
                let origin = found.as_deref().and_then(|v| {
                    let (span, service) = v.split_once(' ')?;
                    Some((parse_span(span)?, service.to_owned()))
                });
                Answer::Job(value, origin)
            }
        }
    }
}

enum Query {
    One(redis::Cmd),
    Many(redis::Pipeline),
}

/// Publishes waiting together go in one round trip.
const MAX_BATCH: usize = 256;
/// Lookups polling Redis at once at most; past it, a lookup misses at once (counted dropped).
const MAX_LOOKUPS: usize = 2048;

async fn serve(
    store: Arc<Store>,
    mut rx: tokio::sync::mpsc::Receiver<Request>,
    answers: std::sync::mpsc::Sender<Answer>,
) {
    let lookups = Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS));
    while let Some(first) = rx.recv().await {
        let (mut pipe, mut n) = (redis::pipe(), 0);
        let mut next = Some(first);
        while let Some(r) = next.take() {
            match r {
                Request::Publish { key, value, ttl_s } => {
                    pipe.cmd("SET").arg(key).arg(value).arg("EX").arg(ttl_s).ignore();
                    n += 1;
                }
                Request::Lookup { what, key, deadline } => match lookups.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (store, answers) = (store.clone(), answers.clone());
                        tokio::spawn(async move {
                            let _ = answers.send(store.lookup(what, key, deadline).await);
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        store.counts.dropped.inc();
                        let _ = answers.send(match what {
                            Wanted::Conn(trace) => Answer::Conn(trace, None),
                            Wanted::Job(value) => Answer::Job(value, None),
                        });
                    }
                },
            }
            if n < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if n > 0 {
            let _: Result<(), ()> = store.run(Query::Many(pipe)).await;
        }
    }
}

#[cfg(test)]
#[path = "shared_state_tests.rs"]
mod tests;
