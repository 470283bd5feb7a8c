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
    http::{ConnTracker, Exchange, ParseErrorKind, Role, TrackerConfig, WallClock},
    joins::{JoinEvent, Joins},
    metrics::{Metrics, Observation, PipelineCounts},
    output::LineSink,
    record::RecordWriter,
    spans::SpanOutput,
    tls::TlsBinder,
};

pub trait EventSink {
    fn event(&mut self, event: &Event) -> anyhow::Result<()>;
    /// Called about once a second with the current monotonic time (event time in replay).
    fn tick(&mut self, _now_ns: u64) -> anyhow::Result<()> {
        Ok(())
    }
    /// Add this stage's counters for the agent's metrics.
    fn counts(&self, _counts: &mut PipelineCounts) {}
    /// The end of the events: flush what is pending.
    fn finish(&mut self) -> anyhow::Result<()>;
}

/// `--events`: one JSON object per kernel event.
pub struct EventLines {
    pub printer: EventPrinter,
    pub out: LineSink,
}

impl EventSink for EventLines {
    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
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
    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
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
/// metrics, JSON lines and spans (emitter).
pub struct HttpPipeline {
    tls: TlsBinder,
    tracker: ConnTracker,
    correlator: Correlator,
    emitter: Emitter,
    /// Services with an in-flight gauge, so one whose connections all ended reads 0.
    in_flight_services: HashSet<String>,
}

/// Everything downstream of the correlator, for one resolved exchange at a time: the job
/// joins (which may hold an exchange until its parent has passed), then the outputs.
struct Emitter {
    joins: Joins,
    outputs: Outputs,
}

struct Outputs {
    clock: WallClock,
    metrics: Option<Arc<Metrics>>,
    out: LineSink,
    spans: Option<SpanOutput>,
    /// The first failure to write a line (reported by the next call into the pipeline).
    failed: Option<anyhow::Error>,
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
            emitter: Emitter { joins, outputs: Outputs { clock, metrics, out, spans, failed: None } },
            in_flight_services: HashSet::new(),
        }
    }
}

impl Emitter {
    /// MCP content read from the bodies; the job key joined (see `joins` for which trace a
    /// joined exchange ends up in); then the outputs.
    fn emit(&mut self, mut ex: Exchange) {
        ex.mcp = crate::mcp::parse(&ex);
        let Emitter { joins, outputs } = self;
        joins.observe(ex, &mut |ex, joined| outputs.write(&ex, joined));
    }

    fn tick(&mut self, now_ns: u64) {
        let Emitter { joins, outputs } = self;
        joins.expire_pending(now_ns, &mut |ex, joined| outputs.write(&ex, joined));
        joins.expire(now_ns);
    }

    fn finish(&mut self) {
        let Emitter { joins, outputs } = self;
        joins.finish(&mut |ex, joined| outputs.write(&ex, joined));
    }
}

impl Outputs {
    /// Metrics (the trace id is set, so duration exemplars carry it), the JSON line, the span.
    fn write(&mut self, ex: &Exchange, joined: Option<JoinEvent>) {
        if let Some(m) = &self.metrics {
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
        if self.failed.is_none() && !self.out.is_off() {
            self.failed = self.out.line(&ex.to_json_line(&self.clock)).err();
        }
        if let Some(spans) = &mut self.spans {
            spans.send(ex);
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
    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        let HttpPipeline { tls, tracker, correlator, emitter, .. } = self;
        tls.process(event, &mut |event| {
            correlator.observe(event);
            tracker.handle(event, &mut |t| correlator.push(t, &mut |ex| emitter.emit(ex)));
        });
        emitter.outputs.result()
    }

    fn tick(&mut self, now_ns: u64) -> anyhow::Result<()> {
        let HttpPipeline { tls, tracker, correlator, emitter, in_flight_services } = self;
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
        emitter.outputs.out.flush()?;
        emitter.outputs.result()
    }

    fn counts(&self, counts: &mut PipelineCounts) {
        let s = self.tracker.stats();
        counts.parse_errors = ParseErrorKind::ALL.iter().map(|k| (k.as_str(), s.parse_errors(*k))).collect();
        counts.unpaired_requests = s.unpaired_requests;
        counts.unpaired_responses = s.unpaired_responses;
        counts.non_http_connections = s.non_http_connections;
        counts.db_connections = s.db_connections;
        counts.loss_resyncs = s.loss_resyncs;
        counts.output_dropped = self.emitter.outputs.out.dropped();
        counts.active_connections = s.active_connections;
        counts.correlation = Some(self.correlator.stats());
        counts.tls = self.tls.stats;
        if let Some(spans) = &self.emitter.outputs.spans {
            let c = spans.counts();
            counts.spans_exported = c.exported.load(std::sync::atomic::Ordering::Relaxed);
            counts.spans_dropped = c.dropped().to_vec();
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
        emitter.outputs.out.finish()?;
        emitter.outputs.result()
    }
}
