//! What consumes events: the HTTP pipeline, the raw event printer, the record writer. The
//! live loop and replay drive any of them the same way.

use std::{
    collections::HashSet,
    io::BufWriter,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    event_json::EventPrinter,
    events::Event,
    http::{ConnTracker, Exchange, ParseErrorKind, Role, TrackerConfig, WallClock},
    metrics::{Metrics, Observation, PipelineCounts},
    output::LineSink,
    record::RecordWriter,
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
    fn finish(&mut self) -> anyhow::Result<()> {
        self.out.flush()
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
        let Some(w) = &self.writer else { return Ok(()) };
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

/// The HTTP pipeline: events -> exchanges -> JSON lines and metrics.
pub struct HttpPipeline {
    tracker: ConnTracker,
    clock: WallClock,
    metrics: Option<Arc<Metrics>>,
    out: LineSink,
    /// Services with an in-flight gauge, so one whose connections all ended reads 0.
    in_flight_services: HashSet<String>,
}

impl HttpPipeline {
    pub fn new(config: TrackerConfig, clock_offset_ns: i64, metrics: Option<Arc<Metrics>>, out: LineSink) -> Self {
        HttpPipeline {
            tracker: ConnTracker::new(config),
            clock: WallClock { offset_ns: clock_offset_ns },
            metrics,
            out,
            in_flight_services: HashSet::new(),
        }
    }
}

/// Deliver one exchange: a JSON line, and an observation for the metrics.
fn emit(
    ex: Exchange,
    clock: &WallClock,
    metrics: Option<&Metrics>,
    out: &mut LineSink,
    failed: &mut Option<anyhow::Error>,
) {
    if let Some(m) = metrics {
        m.http.observe(&observation(&ex));
    }
    if failed.is_none() {
        *failed = out.line(&ex.to_json_line(clock)).err();
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
        duration_s: ex.duration_ns().map(|ns| ns as f64 / 1e9),
        request_body_bytes: ex.request_body_bytes,
        response_body_bytes: ex.response_body_bytes.unwrap_or(0),
        trace_id: ex.trace_id.as_deref(),
    }
}

impl EventSink for HttpPipeline {
    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        let HttpPipeline { tracker, clock, metrics, out, .. } = self;
        let mut failed = None;
        tracker.handle(event, &mut |t| {
            if let Some(ex) = t.into_exchange() {
                emit(ex, clock, metrics.as_deref(), out, &mut failed)
            }
        });
        failed.map_or(Ok(()), Err)
    }

    fn tick(&mut self, now_ns: u64) -> anyhow::Result<()> {
        let HttpPipeline { tracker, clock, metrics, out, in_flight_services } = self;
        let mut failed = None;
        tracker.expire(now_ns, &mut |t| {
            if let Some(ex) = t.into_exchange() {
                emit(ex, clock, metrics.as_deref(), out, &mut failed)
            }
        });
        if let Some(m) = metrics {
            let now = tracker.in_flight_by_service();
            for gone in in_flight_services.iter().filter(|s| !now.contains_key(s.as_str())) {
                m.http.set_in_flight(gone, 0);
            }
            for (service, n) in &now {
                m.http.set_in_flight(service, *n);
            }
            *in_flight_services = now.into_keys().map(str::to_owned).collect();
        }
        out.flush()?;
        failed.map_or(Ok(()), Err)
    }

    fn counts(&self, counts: &mut PipelineCounts) {
        let s = self.tracker.stats();
        counts.parse_errors = ParseErrorKind::ALL.iter().map(|k| (k.as_str(), s.parse_errors(*k))).collect();
        counts.unpaired_requests = s.unpaired_requests;
        counts.unpaired_responses = s.unpaired_responses;
        counts.non_http_connections = s.non_http_connections;
        counts.active_connections = s.active_connections;
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let HttpPipeline { tracker, clock, metrics, out, .. } = self;
        let mut failed = None;
        tracker.finish(&mut |t| {
            if let Some(ex) = t.into_exchange() {
                emit(ex, clock, metrics.as_deref(), out, &mut failed)
            }
        });
        out.flush()?;
        failed.map_or(Ok(()), Err)
    }
}
