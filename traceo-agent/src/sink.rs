//! What consumes events: the HTTP pipeline, the raw event printer, the record writer. The
//! live loop and replay drive any of them the same way.

use std::{
    collections::HashSet,
    io::BufWriter,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    correlate::{CorrelateConfig, Correlator, IdGen},
    event_json::EventPrinter,
    events::Event,
    http::{ConnTracker, Exchange, ParseErrorKind, Role, Tracked, TrackerConfig, WallClock},
    joins::{JoinEvent, Joins},
    logs::{LogJoin, LogRecord, Owner, join::LogOut},
    metrics::{Metrics, Observation, PipelineCounts},
    output::LineSink,
    record::RecordWriter,
    sentry::{SentryConfig, SentryJoin, SentryOut},
    shared_state::SharedState,
    spans::SpanOutput,
    tls::TlsBinder,
};

pub trait EventSink {
    /// One event, in order. A sink may take what it consumes (the HTTP stage takes a data
    /// event's payload): the caller is done with the event once this returns.
    fn event(&mut self, event: &mut Event) -> anyhow::Result<()>;
    /// Called about once a second with the current monotonic time (event time in replay).
    fn tick(&mut self, _now_ns: u64) -> anyhow::Result<()> {
        Ok(())
    }
    /// Add this stage's counters for the agent's metrics.
    fn counts(&self, _counts: &mut PipelineCounts) {}
    /// The source has no more events for now: hand on what waits to fill a batch.
    fn caught_up(&mut self) {}
    /// The end of the events: flush what is pending.
    fn finish(&mut self) -> anyhow::Result<()>;
}

/// `--events`: one JSON object per kernel event.
pub struct EventLines {
    pub printer: EventPrinter,
    pub out: LineSink,
}

impl EventSink for EventLines {
    fn event(&mut self, event: &mut Event) -> anyhow::Result<()> {
        self.out.line(&self.printer.to_json(event).to_string())
    }
    fn tick(&mut self, _now_ns: u64) -> anyhow::Result<()> {
        self.out.flush()
    }
    fn counts(&self, counts: &mut PipelineCounts) {
        counts.output_dropped = self.out.dropped();
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        self.out.finish()
    }
}

/// `record`: events into a record file, with progress in the log.
pub struct Recorder {
    pub writer: Option<RecordWriter<BufWriter<std::fs::File>>>,
    pub last_progress: Instant,
}

impl EventSink for Recorder {
    fn event(&mut self, event: &mut Event) -> anyhow::Result<()> {
        self.writer.as_mut().map_or(Ok(()), |w| w.write(event))
    }
    fn tick(&mut self, _now_ns: u64) -> anyhow::Result<()> {
        let Some(w) = &mut self.writer else { return Ok(()) };
        w.flush()?;
        if self.last_progress.elapsed() >= Duration::from_secs(5) {
            log::info!("recording: {} events, {:.1} MiB", w.events, w.bytes as f64 / (1 << 20) as f64);
            self.last_progress = Instant::now();
        }
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(w) = self.writer.take() {
            let (events, bytes) = (w.events, w.bytes);
            w.finish()?;
            log::info!("recorded {events} events ({:.1} MiB)", bytes as f64 / (1 << 20) as f64);
        }
        Ok(())
    }
}

/// The HTTP pipeline: events -> TLS plaintext tied to its connection, ciphertext dropped
/// (tls) -> exchanges (tracker) -> trace ids (correlator) -> MCP content and job joins ->
/// log records -> Sentry events tied to failed requests -> metrics, JSON lines and spans
/// (emitter).
pub struct HttpPipeline {
    tls: TlsBinder,
    tracker: ConnTracker,
    correlator: Correlator,
    emitter: Emitter,
    /// Services with an in-flight gauge, so one whose connections all ended reads 0.
    in_flight_services: HashSet<String>,
    /// With log records on: stdout/stderr sockets (the journal's), whose writes are logs.
    stdio: Option<crate::logs::stdio_socket::StdioSockets>,
    /// `--node-inject`: the injected script's markers, which tie outbound writes to their
    /// inbound requests.
    node: Option<crate::runtime::node_marks::NodeMarks>,
}

/// Everything downstream of the correlator, for one resolved exchange at a time: the job
/// joins (which may hold an exchange until its parent has passed), then the outputs.
struct Emitter {
    /// `--shared-state`: cross-host parents (may hold an exchange for the far side's key).
    shared: Option<SharedState>,
    joins: Joins,
    /// `--log-records`: the services' log records, joined to their requests (which it may
    /// hold a while for them).
    logs: Option<LogJoin>,
    outputs: Outputs,
}

struct Outputs {
    /// Holds failed server exchanges a while for the Sentry event reported for them.
    sentry: SentryJoin,
    /// What the Sentry stage let go of, written out at once (kept to reuse its allocation).
    sentry_out: Vec<SentryOut>,
    clock: WallClock,
    metrics: Option<Arc<Metrics>>,
    out: LineSink,
    spans: Option<SpanOutput>,
    /// `--log-records`.
    records: LineSink,
    /// The records as OTLP logs, to the span endpoint.
    log_export: Option<crate::logs::otlp::LogExport>,
    /// The first failure to write a line (reported by the next call into the pipeline).
    failed: Option<anyhow::Error>,
    /// The process (and its service's very string) whose container facts were looked up
    /// last: a process's exchanges come in runs, and the shared table's lock and lookup per
    /// exchange were most of observing them.
    last_process: Option<(u32, Arc<str>)>,
}

impl HttpPipeline {
    pub fn new(
        config: TrackerConfig,
        joins: Joins,
        clock_offset_ns: i64,
        metrics: Option<Arc<Metrics>>,
        out: LineSink,
        spans: Option<SpanOutput>,
        ids: IdGen,
    ) -> Self {
        let clock = WallClock { offset_ns: clock_offset_ns };
        HttpPipeline {
            tls: TlsBinder::default(),
            tracker: ConnTracker::new(config),
            correlator: Correlator::with_ids(CorrelateConfig::default(), ids),
            emitter: Emitter {
                shared: None,
                joins,
                logs: None,
                outputs: Outputs {
                    sentry: SentryJoin::new(SentryConfig::default()),
                    sentry_out: Vec::new(),
                    clock,
                    metrics,
                    out,
                    spans,
                    records: LineSink::off(),
                    log_export: None,
                    failed: None,
                    last_process: None,
                },
            },
            in_flight_services: HashSet::new(),
            stdio: None,
            node: None,
        }
    }

    /// Also look up and publish cross-host parents and job keys (`--shared-state`).
    pub fn with_shared_state(mut self, shared: SharedState) -> Self {
        // A value issued on another host arrives as late as that host's lookup allows.
        self.emitter.joins.hold_awaiting(crate::shared_state::JOB_LOOKUP_HOLD.as_nanos() as u64);
        self.emitter.shared = Some(shared);
        self
    }

    /// Also read the markers of `--node-inject`, sent to 127.0.0.1:`sink_port`.
    pub fn with_node_marks(mut self, sink_port: u16) -> Self {
        self.node = Some(crate::runtime::node_marks::NodeMarks::new(sink_port));
        self
    }

    /// Also join the services' log records to their requests, written to `records`.
    pub fn with_log_records(
        mut self,
        logs: LogJoin,
        records: LineSink,
        export: Option<crate::logs::otlp::LogExport>,
    ) -> Self {
        // Server exchanges reach the Sentry stage up to the log join's grace (plus a tick) later.
        let upstream_ns = logs.grace_ns() + 1_000_000_000;
        self.emitter.outputs.sentry = SentryJoin::new(SentryConfig::after_upstream(upstream_ns));
        self.emitter.logs = Some(logs);
        self.stdio = Some(Default::default());
        self.emitter.outputs.records = records;
        self.emitter.outputs.log_export = export;
        self
    }
}

impl Emitter {
    /// MCP content read from the bodies; the job key joined (see `joins` for which trace a
    /// joined exchange ends up in); then the outputs.
    fn emit(&mut self, mut ex: Box<Exchange>) {
        ex.mcp = crate::mcp::parse(&ex);
        let Some(shared) = &mut self.shared else {
            // No shared state: straight to the joins (no batch to gather).
            let Emitter { joins, logs, outputs, .. } = self;
            joins.observe(ex, &mut |ex, joined| Self::pass(logs, outputs, ex, joined));
            return;
        };
        let mut ready = Vec::new();
        shared.observe(ex, &mut ready);
        self.join(ready);
    }

    /// The job joins, then the outputs; with shared state, what was issued is published
    /// and values nobody here issued are asked for.
    // Exchanges are boxed once and handed through the stages: moves are pointer-sized.
    #[allow(clippy::vec_box)]
    fn join(&mut self, ready: Vec<Box<Exchange>>) {
        let Emitter { shared, joins, logs, outputs } = self;
        if let Some(s) = shared.as_mut() {
            s.take_remote_parents().into_iter().for_each(|p| joins.seen_elsewhere(p));
        }
        for ex in ready {
            joins.observe(ex, &mut |ex, joined| {
                if let Some(s) = shared.as_mut() {
                    s.passed(&ex, joined == Some(JoinEvent::Issued));
                }
                Self::pass(logs, outputs, ex, joined)
            });
        }
        if let Some(s) = shared.as_mut() {
            joins.take_wanted().into_iter().for_each(|v| s.want_job(v));
        }
    }

    /// Answers from the other agents: released exchanges, and job values issued elsewhere.
    fn poll_shared(&mut self) {
        let Some(s) = &mut self.shared else { return };
        let (mut ready, mut jobs) = (Vec::new(), Vec::new());
        s.poll(&mut ready, &mut jobs);
        self.join(ready);
        let Emitter { shared, joins, logs, outputs } = self;
        for (value, span, service) in jobs {
            joins.issued_elsewhere(value, service, span, &mut |ex, joined| {
                if let Some(s) = shared.as_mut() {
                    s.passed(&ex, false);
                }
                Self::pass(logs, outputs, ex, joined)
            });
        }
    }

    /// Through the log join when there is one, then the outputs.
    fn pass(logs: &mut Option<LogJoin>, outputs: &mut Outputs, ex: Box<Exchange>, joined: Option<JoinEvent>) {
        match logs {
            Some(l) => l.exchange(ex, joined, &mut |o| outputs.log_out(o)),
            None => outputs.write(ex, joined),
        }
    }

    fn tick(&mut self, now_ns: u64) {
        self.poll_shared();
        if let Some(s) = &mut self.shared {
            let mut ready = Vec::new();
            s.tick(now_ns, &mut ready);
            self.join(ready);
        }
        let Emitter { joins, logs, outputs, .. } = self;
        joins.expire_pending(now_ns, &mut |ex, joined| Self::pass(logs, outputs, ex, joined));
        joins.expire(now_ns);
        if let Some(l) = logs {
            l.tick(now_ns, &mut |o| outputs.log_out(o));
            if let Some(m) = &outputs.metrics {
                m.logs.update(&l.stats);
            }
        }
        outputs.sentry_tick(Some(now_ns));
    }

    fn finish(&mut self) {
        self.poll_shared();
        if let Some(s) = &mut self.shared {
            let mut ready = Vec::new();
            s.finish(&mut ready);
            self.join(ready);
        }
        let Emitter { joins, logs, outputs, .. } = self;
        joins.finish(&mut |ex, joined| Self::pass(logs, outputs, ex, joined));
        if let Some(l) = logs {
            l.finish(&mut |o| outputs.log_out(o));
            if let Some(m) = &outputs.metrics {
                m.logs.update(&l.stats);
            }
        }
        outputs.sentry_tick(None);
    }
}

impl Outputs {
    /// Metrics at once (the trace id is set, so duration exemplars carry it); the JSON line
    /// and the span once the Sentry stage lets the exchange go (a failed request may wait for
    /// its event's id).
    fn write(&mut self, ex: Box<Exchange>, joined: Option<JoinEvent>) {
        self.measure(&ex, joined);
        let mut out = std::mem::take(&mut self.sentry_out);
        self.sentry.observe(ex, &mut |o| out.push(o));
        self.sentry_passed(out);
    }

    /// The Sentry stage's deadlines at `now_ns`; `None`: the end, let everything go.
    fn sentry_tick(&mut self, now_ns: Option<u64>) {
        let mut out = std::mem::take(&mut self.sentry_out);
        match now_ns {
            Some(now) => self.sentry.tick(now, &mut |o| out.push(o)),
            None => self.sentry.finish(&mut |o| out.push(o)),
        }
        self.sentry_passed(out);
    }

    fn sentry_passed(&mut self, mut out: Vec<SentryOut>) {
        for o in out.drain(..) {
            match o {
                SentryOut::Exchange(ex) => self.export(&ex),
                SentryOut::Event { service, matched } => {
                    if let Some(m) = &self.metrics {
                        m.sentry.event(&service, matched);
                    }
                }
            }
        }
        self.sentry_out = out;
    }

    fn measure(&mut self, ex: &Exchange, joined: Option<JoinEvent>) {
        if let Some(m) = &self.metrics {
            // Metrics exist only live: the pid is a process on this host now.
            let same = self.last_process.as_ref().is_some_and(|(pid, s)| *pid == ex.pid && Arc::ptr_eq(s, &ex.service));
            if !same {
                m.containers.observe(&ex.service, ex.pid);
                self.last_process = Some((ex.pid, ex.service.clone()));
            }
            match &ex.db {
                Some(op) => m.db.observe(&ex.service, op, ex.duration_ns().map(|ns| ns as f64 / 1e9)),
                None => m.http.observe(&observation(ex)),
            }
            if let (Some(info), Role::Server) = (&ex.mcp, ex.role) {
                m.mcp.observe(&ex.service, info, ex.duration_ns().map(|ns| ns as f64 / 1e9));
            }
            if let Some(JoinEvent::Joined { callback_after_ns: Some(after) }) = joined {
                m.jobs.observe_callback(after, ex.job_status.as_deref());
            }
        }
    }

    fn export(&mut self, ex: &Exchange) {
        if self.failed.is_none() && !self.out.is_off() {
            self.failed = self.out.line(&ex.to_json_line(&self.clock)).err();
        }
        if let Some(spans) = &mut self.spans {
            spans.send(ex);
        }
    }

    /// What the log join passes on: an exchange with its records, or a record alone.
    fn log_out(&mut self, o: LogOut) {
        match o {
            LogOut::Exchange(ex, joined, records) => {
                let owner = Owner::of(&ex);
                self.write(ex, joined);
                records.iter().for_each(|r| self.record(r, Some(&owner)));
            }
            LogOut::Record(r, owner) => self.record(&r, owner.as_ref()),
        }
    }

    fn record(&mut self, r: &LogRecord, owner: Option<&Owner>) {
        if let Some(m) = &self.metrics {
            m.logs.record(&r.service, r.severity, r.exception.as_ref().map(|e| e.kind.as_str()));
        }
        if self.failed.is_none() && !self.records.is_off() {
            self.failed = self.records.line(&r.to_json_line(&self.clock, owner)).err();
        }
        if let Some(export) = &mut self.log_export {
            export.send(r, owner);
        }
    }

    fn result(&mut self) -> anyhow::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

/// What the metrics take from an exchange. Client metrics name the server they called: the
/// Host header, else the peer address.
pub fn observation(ex: &Exchange) -> Observation<'_> {
    let server = ex.role == Role::Server;
    Observation {
        service: &ex.service,
        server,
        method: &ex.method,
        route: &ex.route,
        status: ex.status,
        server_address: if server { None } else { ex.host() },
        tls: ex.tls,
        // After a loss its timing may span another exchange's bytes: counted, not timed.
        duration_s: ex.duration_ns().filter(|_| !ex.flags.after_loss).map(|ns| ns as f64 / 1e9),
        request_body_bytes: ex.request_body_bytes,
        response_body_bytes: ex.response_body_bytes.unwrap_or(0),
        trace_id: ex.trace_id(),
        propagated: ex.propagated,
    }
}

impl EventSink for HttpPipeline {
    fn event(&mut self, event: &mut Event) -> anyhow::Result<()> {
        use crate::runtime::node_marks::Pass;
        let mut marked = match self.node.as_mut().map(|n| n.pass(event)) {
            Some(Pass::Drop) => return self.emitter.outputs.result(),
            Some(Pass::Replace(event)) => Some(event),
            Some(Pass::Keep) | None => None,
        };
        let event = marked.as_mut().unwrap_or(event);
        let mut as_log = self.stdio.as_mut().and_then(|s| s.log_write(event));
        let event = as_log.as_mut().unwrap_or(event);
        let HttpPipeline { tls, tracker, correlator, emitter, .. } = self;
        tls.process(event, &mut |event| {
            correlator.observe(event);
            if let Some(logs) = &mut emitter.logs {
                match event {
                    Event::LogWrite(d) => logs.write(d, &mut |o| emitter.outputs.log_out(o)),
                    Event::Task(t) => logs.task(t),
                    Event::Exit(p) => logs.exited(p.meta.pid),
                    _ => {}
                }
            }
            emitter.poll_shared();
            tracker.handle(event, &mut |t| match t {
                Tracked::Request(mut seen) => {
                    if let Some(logs) = &mut emitter.logs {
                        logs.request_seen(&seen);
                    }
                    emitter.outputs.sentry.request_seen(&seen);
                    correlator.push_request(&mut seen, &mut |ex| emitter.emit(ex))
                }
                Tracked::Exchange(ex) => correlator.push_exchange(ex, &mut |ex| emitter.emit(ex)),
            });
        });
        emitter.outputs.result()
    }

    fn tick(&mut self, now_ns: u64) -> anyhow::Result<()> {
        let HttpPipeline { tls, tracker, correlator, emitter, in_flight_services, .. } = self;
        tls.expire(now_ns);
        tracker.expire(now_ns, &mut |t| correlator.push(t, &mut |ex| emitter.emit(ex)));
        correlator.tick(now_ns, &mut |ex| emitter.emit(ex));
        emitter.tick(now_ns);
        if let Some(m) = &emitter.outputs.metrics {
            let now = tracker.in_flight_by_service();
            for gone in in_flight_services.iter().filter(|s| !now.contains_key(s.as_str())) {
                m.http.set_in_flight(gone, 0);
            }
            for (service, n) in &now {
                m.http.set_in_flight(service, *n);
            }
            *in_flight_services = now.into_keys().map(str::to_owned).collect();
            m.jobs.update(&emitter.joins.stats);
        }
        // What the hold and the joins let go of on this tick.
        self.caught_up();
        let outputs = &mut self.emitter.outputs;
        outputs.out.flush()?;
        outputs.records.flush()?;
        outputs.result()
    }

    fn caught_up(&mut self) {
        if let Some(spans) = &mut self.emitter.outputs.spans {
            spans.flush();
        }
    }

    fn counts(&self, counts: &mut PipelineCounts) {
        let s = self.tracker.stats();
        counts.parse_errors = ParseErrorKind::ALL.iter().map(|k| (k.as_str(), s.parse_errors(*k))).collect();
        counts.unpaired_requests = s.unpaired_requests;
        counts.unpaired_responses = s.unpaired_responses;
        counts.non_http_connections = s.non_http_connections;
        counts.db_connections = s.db_connections;
        counts.loss_resyncs = s.loss_resyncs;
        counts.output_dropped = self.emitter.outputs.out.dropped() + self.emitter.outputs.records.dropped();
        counts.active_connections = s.active_connections;
        counts.correlation = Some(self.correlator.stats());
        counts.tls = self.tls.stats;
        if let Some(spans) = &self.emitter.outputs.spans {
            let c = spans.counts();
            counts.spans_exported = c.exported.load(std::sync::atomic::Ordering::Relaxed);
            counts.spans_dropped = c.dropped().to_vec();
        }
        if let Some(node) = &self.node {
            counts.node_markers = node.stats.by_reason().to_vec();
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let HttpPipeline { tls, tracker, correlator, emitter, .. } = self;
        tls.finish();
        tracker.finish(&mut |t| correlator.push(t, &mut |ex| emitter.emit(ex)));
        correlator.finish(&mut |ex| emitter.emit(ex));
        emitter.finish();
        if let Some(m) = &emitter.outputs.metrics {
            m.jobs.update(&emitter.joins.stats);
        }
        if let Some(spans) = &mut emitter.outputs.spans {
            spans.finish();
        }
        if let Some(export) = &mut emitter.outputs.log_export {
            export.finish();
        }
        emitter.outputs.out.finish()?;
        emitter.outputs.records.finish()?;
        emitter.outputs.result()
    }
}
