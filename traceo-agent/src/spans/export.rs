//! OTLP export: a bounded queue the pipeline fills without waiting, drained by a thread of
//! the agent's own that sends batches over OTLP/gRPC (tonic) or OTLP/HTTP (`otlp_http`).
//!
//! Why OTLP messages built here rather than the OpenTelemetry SDK (`opentelemetry_sdk` +
//! `opentelemetry-otlp` 0.33 build here too): the SDK ties one resource to a tracer
//! provider, and we need one per traced process of each service; its spans take their ids
//! from an id generator and their parents from a context, where ours come decided by the
//! correlation stage with the kernel's timestamps; and its batch processor drops spans
//! without telling us how many. `ExportTraceServiceRequest`s from `opentelemetry-proto`
//! sent by its tonic client are the same OTLP/gRPC on the wire, with our own bounds.
//!
//! The export traffic is never traced: the exporter is a thread of the agent's process,
//! which the kernel programs skip.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::build::ResourceEntry;
use super::signals::{Signal, Spans};
use super::transport::{Done, Target, Transport};
use super::{OtlpTarget, Protocol};

#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// `http://host:port` (a bare `host:port` gets `http://`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Spans waiting for export at most; more are dropped and counted.
    pub max_queue: usize,
    /// Spans per export request at most; also how many queued wake the exporter thread.
    pub max_batch: usize,
    /// A partial batch is sent after this long.
    pub interval: Duration,
    /// One export request's deadline.
    pub timeout: Duration,
}

impl ExportConfig {
    pub fn new(target: &OtlpTarget) -> ExportConfig {
        ExportConfig {
            endpoint: target.endpoint.clone(),
            protocol: target.protocol,
            // Four batches.
            max_queue: 4 * MAX_BATCH,
            max_batch: MAX_BATCH,
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Running totals, shared with the exporter thread.
#[derive(Debug, Default)]
pub struct ExportCounts {
    pub exported: AtomicU64,
    /// The queue was full (the endpoint is slower than the traffic, or down).
    pub dropped_queue_full: AtomicU64,
    /// The export request failed (endpoint down, timeout, refused).
    pub dropped_export_failed: AtomicU64,
    /// The endpoint accepted the request but rejected these spans (partial success).
    pub dropped_rejected: AtomicU64,
    /// Times the exporter thread woke (an idle one does not).
    pub wakeups: AtomicU64,
}

impl ExportCounts {
    pub fn dropped(&self) -> [(&'static str, u64); 3] {
        [
            ("queue_full", self.dropped_queue_full.load(Ordering::Relaxed)),
            ("export_failed", self.dropped_export_failed.load(Ordering::Relaxed)),
            ("rejected", self.dropped_rejected.load(Ordering::Relaxed)),
        ]
    }
}

/// Spans or records per export request at most, by default. Each request costs the exporter
/// thread two wake-ups (the batch, the answer) and a connection's round trip, whatever its
/// size: over OTLP/HTTP under uvicorn its thread took 0.43 us per span in batches of 512, 0.31
/// in batches of 2,048 (3 paired rounds); over gRPC 0.70 -> 0.52. A batch also ends at
/// [`MAX_BATCH_BYTES`].
const MAX_BATCH: usize = 2048;
/// Encoded bytes a batch ends at (at the first item that reaches it; the resources' headers
/// add a little): half the 4 MiB a gRPC server takes by default, so a batch of long spans is
/// not refused whole.
const MAX_BATCH_BYTES: usize = 2 << 20;

/// The exporter thread is woken once a batch's worth of spans or records waits
/// (`max_batch`), and takes what waits at least every `DRAIN` otherwise; with nothing queued,
/// batched or in flight it sleeps until the next item (`Inbox::idle`). Each wake-up cost the
/// pipeline thread a syscall and often its CPU (the woken thread ran in its place): woken
/// every 64 spans, the exporter thread took 0.60 us per span under uvicorn, 0.49 woken at 512.
const DRAIN: Duration = Duration::from_millis(100);

/// Items queued for the exporter thread, and whether the pipeline is done with them.
struct Inbox<I> {
    items: Vec<(Arc<ResourceEntry>, I)>,
    /// Their weight ([`Signal::weight`]).
    queued: usize,
    /// Their size ([`Signal::size`]): a batch's bytes wake the exporter thread too.
    queued_bytes: usize,
    /// Items the exporter thread is done with (span blocks), for the pipeline to fill again:
    /// a buffer allocated by one thread and freed by the other cost more than encoding a
    /// third of a span's attributes. At most [`Signal::MAX_SPARE`] are kept.
    spare: Vec<I>,
    closed: bool,
    /// The exporter thread found nothing to do and sleeps without its timers: the next item
    /// wakes it. (Its drain and batch timers woke it 28 times a second with no traffic, 1.2 ms
    /// of CPU a second on a 2-vCPU VM.)
    idle: bool,
}

/// The queue between the pipeline and the exporter thread.
struct Queue<I> {
    inbox: Mutex<Inbox<I>>,
    wake: Notify,
}

impl<I> Queue<I> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox<I>> {
        // A panic while holding it leaves a plain Vec and a flag: still sound to use.
        self.inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub struct Exporter<S: Signal = Spans> {
    queue: Option<Arc<Queue<S::Item>>>,
    /// Spare items taken from the inbox (all at once, under a lock taken anyway).
    stash: Vec<S::Item>,
    max_queue: usize,
    /// Queued weight that wakes the exporter thread: a batch's.
    wake_at: usize,
    counts: Arc<ExportCounts>,
    thread: Option<JoinHandle<()>>,
    finished: std::sync::mpsc::Receiver<()>,
    endpoint: String,
}

impl<S: Signal> Exporter<S> {
    pub fn start(cfg: ExportConfig) -> anyhow::Result<Exporter<S>> {
        let target = Target::new(&cfg)?;
        let queue = Arc::new(Queue {
            inbox: Mutex::new(Inbox {
                items: Vec::new(),
                queued: 0,
                queued_bytes: 0,
                spare: Vec::new(),
                closed: false,
                idle: false,
            }),
            wake: Notify::new(),
        });
        let rx = queue.clone();
        let counts = Arc::new(ExportCounts::default());
        let (done_tx, finished) = std::sync::mpsc::channel();
        let worker = Worker::<S> {
            cfg: cfg.clone(),
            counts: counts.clone(),
            health: Health::default(),
            in_flight: Vec::new(),
            started: 0,
            signal: Default::default(),
        };
        let thread = std::thread::Builder::new()
            .name("traceo-otlp".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt.block_on(worker.run(target, rx)),
                    Err(e) => log::error!("OTLP export disabled: cannot start its runtime: {e}"),
                }
                let _ = done_tx.send(());
            })
            .context("cannot start the OTLP export thread")?;
        log::info!("exporting {} over OTLP/{} to {}", S::WHAT, cfg.protocol.transport(), cfg.endpoint);
        Ok(Exporter {
            queue: Some(queue),
            stash: Vec::new(),
            max_queue: cfg.max_queue.max(1),
            wake_at: cfg.max_batch.max(1),
            counts,
            thread: Some(thread),
            finished,
            endpoint: cfg.endpoint,
        })
    }

    pub fn counts(&self) -> &Arc<ExportCounts> {
        &self.counts
    }

    /// An item the exporter thread is done with, to fill again (a span buffer), if any.
    pub fn spare(&mut self) -> Option<S::Item> {
        self.stash.pop()
    }

    /// Queue an item; never waits (past the queue's bound it is dropped, counted).
    pub fn send(&mut self, resource: Arc<ResourceEntry>, item: S::Item) {
        let Some(queue) = &self.queue else { return };
        let weight = S::weight(&item);
        let mut inbox = queue.lock();
        if self.stash.is_empty() {
            std::mem::swap(&mut inbox.spare, &mut self.stash);
        }
        if inbox.queued + weight > self.max_queue {
            drop(inbox);
            self.counts.dropped_queue_full.fetch_add(weight as u64, Ordering::Relaxed);
            return;
        }
        let size = S::size(&item);
        inbox.items.push((resource, item));
        // On crossing a batch's weight or bytes (long spans make a batch by bytes first).
        let wake = (inbox.queued < self.wake_at && inbox.queued + weight >= self.wake_at)
            || (inbox.queued_bytes < MAX_BATCH_BYTES && inbox.queued_bytes + size >= MAX_BATCH_BYTES)
            || std::mem::take(&mut inbox.idle);
        inbox.queued += weight;
        inbox.queued_bytes += size;
        drop(inbox);
        if wake {
            queue.wake.notify_one();
        }
    }

    /// Send what is queued, waiting at most `timeout`; what is left then is lost.
    pub fn shutdown(&mut self, timeout: Duration) {
        let Some(queue) = self.queue.take() else { return };
        let pending = {
            let mut inbox = queue.lock();
            inbox.closed = true;
            inbox.queued
        };
        queue.wake.notify_one();
        match self.finished.recv_timeout(timeout) {
            Ok(()) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(_) => log::warn!(
                "OTLP export to {} did not finish within {timeout:?}; {pending} queued {} and those of the requests still in flight were not sent",
                self.endpoint,
                S::WHAT
            ),
        }
        let c = &self.counts;
        let dropped: u64 = c.dropped().iter().map(|(_, n)| n).sum();
        log::info!("{}: {} exported, {dropped} dropped", S::WHAT, c.exported.load(Ordering::Relaxed));
    }
}

impl<S: Signal> Drop for Exporter<S> {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(5));
    }
}

/// Export requests in flight at most. One at a time could not keep up with nginx's full load
/// on two cores: the thread waited for each answer (a collector sharing those cores answers
/// in milliseconds) while the queue overflowed.
const IN_FLIGHT: usize = 4;

/// Whether the endpoint is failing, as the requests' outcomes tell it (logged once per
/// outage, and its end). Requests end out of order: only one started after the request that
/// last changed the state says what the endpoint does now (an older one's timeout is not a
/// new outage, nor an older success its end).
#[derive(Default)]
struct Health {
    failing: bool,
    /// The send number of the request whose outcome last changed `failing`.
    changed_by: u64,
}

impl Health {
    /// Request `number` (in start order, from 1) ended; `Some(failing)` when the state changes.
    fn outcome(&mut self, number: u64, ok: bool) -> Option<bool> {
        if number <= self.changed_by || ok != self.failing {
            return None;
        }
        self.changed_by = number;
        self.failing = !ok;
        Some(self.failing)
    }
}

struct Worker<S: Signal> {
    cfg: ExportConfig,
    counts: Arc<ExportCounts>,
    health: Health,
    /// Each request in flight: its weight and send number.
    in_flight: Vec<(tokio::task::Id, u64, u64)>,
    /// Requests started so far.
    started: u64,
    signal: std::marker::PhantomData<S>,
}

impl<S: Signal> Worker<S> {
    async fn run(mut self, target: Target, queue: Arc<Queue<S::Item>>) {
        let transport = Transport::open(target);
        let mut batch: Vec<(Arc<ResourceEntry>, S::Item)> = Vec::with_capacity(self.cfg.max_batch);
        let mut timer = tokio::time::interval(self.cfg.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = tokio::time::interval(DRAIN);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut taken = Vec::new();
        let mut sending = JoinSet::new();
        let mut idle = false;
        loop {
            // Each pass but the first follows a wake-up.
            self.counts.wakeups.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = queue.wake.notified() => {}
                _ = drain.tick(), if !idle => {}
                _ = timer.tick(), if !idle => {
                    if !batch.is_empty() {
                        self.export(&transport, &mut batch, &queue, &mut sending).await;
                    }
                    continue;
                }
                Some(done) = sending.join_next_with_id(), if !sending.is_empty() => {
                    self.finished(done, &queue);
                    continue;
                }
            }
            let closed = {
                let mut inbox = queue.lock();
                std::mem::swap(&mut inbox.items, &mut taken);
                inbox.queued = 0;
                inbox.queued_bytes = 0;
                // Nothing came and nothing waits: sleep until `send` sees the flag. Set under
                // the lock `send` takes, so no item can slip in unseen.
                let was_idle = idle;
                idle = taken.is_empty() && batch.is_empty() && sending.is_empty();
                inbox.idle = idle;
                if was_idle && !idle {
                    // Tick from now, not at once for the time slept.
                    drain.reset();
                    timer.reset();
                }
                inbox.closed
            };
            batch.append(&mut taken);
            while let Some(at) = full_batch::<S>(&batch, self.cfg.max_batch) {
                let rest = batch.split_off(at);
                self.export(&transport, &mut batch, &queue, &mut sending).await;
                batch = rest;
            }
            if closed {
                break;
            }
        }
        while !batch.is_empty() {
            let at = full_batch::<S>(&batch, self.cfg.max_batch).unwrap_or(batch.len());
            let rest = batch.split_off(at);
            self.export(&transport, &mut batch, &queue, &mut sending).await;
            batch = rest;
        }
        while let Some(done) = sending.join_next_with_id().await {
            self.finished(done, &queue);
        }
    }

    /// Start sending `batch` (once fewer than [`IN_FLIGHT`] requests are).
    async fn export(
        &mut self,
        transport: &Transport,
        batch: &mut Vec<(Arc<ResourceEntry>, S::Item)>,
        queue: &Queue<S::Item>,
        sending: &mut JoinSet<Done>,
    ) {
        while sending.len() >= IN_FLIGHT {
            if let Some(done) = sending.join_next_with_id().await {
                self.finished(done, queue);
            }
        }
        let n = batch.iter().map(|(_, item)| S::weight(item) as u64).sum::<u64>();
        let sent = transport.send::<S>(S::body(batch), self.cfg.timeout);
        batch.clear();
        let id = sending.spawn(sent).id();
        self.started += 1;
        self.in_flight.push((id, n, self.started));
    }

    /// Count what a request sent, or lost, and hand its chunks back to be filled again.
    fn finished(&mut self, done: Result<(tokio::task::Id, Done), tokio::task::JoinError>, queue: &Queue<S::Item>) {
        let (id, sent) = match done {
            Ok((id, (sent, chunks))) => {
                recycle::<S>(queue, chunks);
                (id, sent)
            }
            // A panic inside the client: that request's spans are lost, the rest goes on.
            Err(e) => (e.id(), Err(format!("the request ended abnormally: {e}"))),
        };
        let at = self.in_flight.iter().position(|(i, ..)| *i == id);
        let (n, number) = at.map_or((0, 0), |at| {
            let (_, n, number) = self.in_flight.swap_remove(at);
            (n, number)
        });
        match sent {
            Ok(rejected) => {
                self.counts.dropped_rejected.fetch_add(rejected, Ordering::Relaxed);
                self.counts.exported.fetch_add(n.saturating_sub(rejected), Ordering::Relaxed);
                if self.health.outcome(number, true).is_some() {
                    log::info!("OTLP export to {} works again", self.cfg.endpoint);
                }
            }
            Err(why) => {
                self.counts.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                if self.health.outcome(number, false).is_some() {
                    log::warn!(
                        "OTLP export to {} failed ({why}); {} are dropped until it recovers",
                        self.cfg.endpoint,
                        S::WHAT
                    );
                }
            }
        }
    }
}

/// Hand the chunks worth reusing (span blocks) back to the pipeline, up to [`Signal::MAX_SPARE`].
fn recycle<S: Signal>(queue: &Queue<S::Item>, chunks: Vec<Vec<u8>>) {
    if S::MAX_SPARE == 0 || chunks.is_empty() {
        return;
    }
    let mut inbox = queue.lock();
    let room = S::MAX_SPARE.saturating_sub(inbox.spare.len());
    inbox.spare.extend(chunks.into_iter().filter_map(S::reuse).take(room));
}

/// Where a batch of at least `max` spans or records, or [`MAX_BATCH_BYTES`], ends, when
/// `items` make one (items are not split: a batch may pass either by less than one item).
fn full_batch<S: Signal>(items: &[(Arc<ResourceEntry>, S::Item)], max: usize) -> Option<usize> {
    let (mut weight, mut bytes) = (0, 0);
    items
        .iter()
        .position(|(_, item)| {
            weight += S::weight(item);
            bytes += S::size(item);
            weight >= max || bytes >= MAX_BATCH_BYTES
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::signals::{Item, SpanBlock, block};

    #[test]
    fn only_a_request_started_after_the_last_change_changes_the_health() {
        let mut h = Health::default();
        assert_eq!(h.outcome(1, true), None, "working, and still working");
        // Requests 2 to 6 in flight; 3 times out first: an outage.
        assert_eq!(h.outcome(3, false), Some(true));
        assert_eq!(h.outcome(2, true), None, "2 was sent before 3 failed: no news");
        assert_eq!(h.outcome(4, false), None, "failing already");
        assert_eq!(h.outcome(6, true), Some(false), "sent after the change and answered: works again");
        assert_eq!(h.outcome(5, false), None, "sent before 6: an older failure is no new outage");
        assert_eq!(h.outcome(7, false), Some(true));
    }

    #[test]
    fn batches_count_spans_not_blocks() {
        let r = Arc::new(ResourceEntry { service: "s".into(), pid: 1, resource: Default::default() });
        let items: Vec<Item> = [30, 30, 30, 5].into_iter().map(|n| (r.clone(), block(0, n))).collect();
        assert_eq!(full_batch::<Spans>(&items, 60), Some(2));
        assert_eq!(full_batch::<Spans>(&items, 61), Some(3));
        assert_eq!(full_batch::<Spans>(&items, 96), None);
        // Long spans end a batch by its bytes first.
        let long = || {
            let mut b = block(0, 2);
            b.bytes.resize(MAX_BATCH_BYTES / 2, 0);
            b
        };
        let items: Vec<Item> = (0..4).map(|_| (r.clone(), long())).collect();
        assert_eq!(full_batch::<Spans>(&items, MAX_BATCH), Some(2));
    }

    /// A collector counting the most requests it held at once; `slow`, it answers a request
    /// only once another one arrives (or after 2 s), else at once.
    #[derive(Clone, Default)]
    struct Collector {
        slow: bool,
        active: Arc<AtomicU64>,
        most: Arc<AtomicU64>,
    }

    #[tonic::async_trait]
    impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Collector {
        async fn export(
            &self,
            _request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
        ) -> Result<
            tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
            tonic::Status,
        > {
            let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.slow && self.most.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.active.fetch_sub(1, Ordering::SeqCst);
            Ok(tonic::Response::new(Default::default()))
        }
    }

    /// An OTLP/gRPC collector on a thread of its own: its port, what stops it, its thread.
    fn collector<T>(service: T) -> (u16, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)
    where
        T: opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService,
    {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let service = TraceServiceServer::new(service);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("the collector failed");
            });
        });
        (port, stop, server)
    }

    fn one_span(exporter: &mut Exporter<Spans>, r: &Arc<ResourceEntry>) {
        let mut b = SpanBlock::default();
        b.push(&[]);
        exporter.send(r.clone(), b);
    }

    fn wait_exported(exporter: &Exporter<Spans>, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while exporter.counts().exported.load(Ordering::Relaxed) < n {
            assert!(std::time::Instant::now() < deadline, "span {n} was not exported within 5 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn an_idle_exporter_sleeps_until_the_next_span() {
        let (port, stop, server) = collector(Collector::default());
        let cfg = ExportConfig::new(&OtlpTarget { endpoint: format!("127.0.0.1:{port}"), protocol: Protocol::Grpc });
        let mut exporter = Exporter::<Spans>::start(cfg).expect("exporter");
        let r = Arc::new(ResourceEntry { service: "s".into(), pid: 1, resource: Default::default() });
        one_span(&mut exporter, &r);
        wait_exported(&exporter, 1);
        // The answer came; the next drain tick finds nothing and the thread goes idle.
        std::thread::sleep(DRAIN * 3);
        let woke = || exporter.counts().wakeups.load(Ordering::Relaxed);
        let before = woke();
        std::thread::sleep(Duration::from_secs(1));
        // Ticking, it would have woken about 12 times (drain and batch timers).
        assert!(woke() - before <= 1, "woke {} times in 1 s with nothing to do", woke() - before);
        // The next span wakes it and leaves within the batch interval.
        one_span(&mut exporter, &r);
        wait_exported(&exporter, 2);
        exporter.shutdown(Duration::from_secs(5));
        let _ = stop.send(());
        server.join().expect("collector thread");
    }

    #[test]
    fn requests_overlap_while_the_collector_is_slow_to_answer() {
        let slow = Collector { slow: true, ..Collector::default() };
        let (port, stop, server) = collector(slow.clone());
        // A batch per span: four requests, each held until another one comes.
        let mut cfg =
            ExportConfig::new(&OtlpTarget { endpoint: format!("127.0.0.1:{port}"), protocol: Protocol::Grpc });
        cfg.max_batch = 1;
        let mut exporter = Exporter::<Spans>::start(cfg).expect("exporter");
        let r = Arc::new(ResourceEntry { service: "s".into(), pid: 1, resource: Default::default() });
        for _ in 0..4 {
            one_span(&mut exporter, &r);
        }
        exporter.shutdown(Duration::from_secs(20));
        let _ = stop.send(());
        server.join().expect("collector thread");
        assert_eq!(exporter.counts().exported.load(Ordering::Relaxed), 4);
        assert!(slow.most.load(Ordering::SeqCst) >= 2, "the exporter sent one request at a time");
    }
}
