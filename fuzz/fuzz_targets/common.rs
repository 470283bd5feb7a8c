//! What the fuzz targets share: the agent's HTTP pipeline, stage for stage as
//! `traceo_agent::sink::HttpPipeline` runs it (TLS binder -> correlator -> connection tracker
//! -> MCP -> joins -> JSON line and metric observation), minus the output threads, so the
//! exchanges stay in the process; and the split-marker input format.

#![allow(dead_code)]

use std::hint::black_box;

use traceo_agent::correlate::{CorrelateConfig, Correlator, IdGen};
use traceo_agent::events::Event;
use traceo_agent::http::{ConnTracker, Exchange, TrackerConfig, WallClock};
use traceo_agent::joins::Joins;
use traceo_agent::tls::TlsBinder;

/// Separates the pieces of an input (a dictionary entry, so libFuzzer inserts it whole).
pub const MARK: &[u8] = b"\xff\xfe";

/// Split `data` at every `MARK`.
pub fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(MARK.len()).position(|w| w == MARK) {
        out.push(&rest[..at]);
        rest = &rest[at + MARK.len()..];
    }
    out.push(rest);
    out
}

struct Emitter {
    joins: Joins,
    clock: WallClock,
    exchanges: u64,
}

impl Emitter {
    fn emit(&mut self, mut ex: Box<Exchange>) {
        ex.mcp = traceo_agent::mcp::parse(&ex);
        let Emitter { joins, clock, exchanges } = self;
        joins.observe(ex, &mut |ex, joined| write(clock, exchanges, &ex, joined.is_some()));
    }
}

/// What `Outputs::write` does with an exchange, short of the sinks.
pub fn write(clock: &WallClock, exchanges: &mut u64, ex: &Exchange, joined: bool) {
    *exchanges += 1;
    let line = ex.to_json_line(clock);
    // Every JSON line is one valid JSON object.
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("a JSON line parses");
    assert!(parsed.is_object());
    black_box((traceo_agent::sink::observation(ex), joined));
}

pub struct Pipeline {
    tls: TlsBinder,
    tracker: ConnTracker,
    correlator: Correlator,
    emitter: Emitter,
}

impl Pipeline {
    pub fn new(max_connections: usize) -> Pipeline {
        let config = TrackerConfig {
            service_names: vec!["svc".into()],
            max_connections,
            extra_headers: vec!["referer".into(), "x-fuzz".into()],
            routes: vec!["/api/v1/jobs/{job_id}".into()],
            ..TrackerConfig::default()
        };
        Pipeline {
            tls: TlsBinder::default(),
            tracker: ConnTracker::new(config),
            correlator: Correlator::with_ids(CorrelateConfig::default(), IdGen::seeded(7)),
            emitter: Emitter {
                joins: Joins::new(vec!["job_id".into()], 3_600_000_000_000, 64),
                clock: WallClock { offset_ns: 1_700_000_000_000_000_000 },
                exchanges: 0,
            },
        }
    }

    pub fn event(&mut self, event: &Event) {
        let Pipeline { tls, tracker, correlator, emitter } = self;
        // The stages take a data event's payload: the caller keeps its own.
        tls.process(&mut event.clone(), &mut |event| {
            correlator.observe(event);
            tracker.handle(event, &mut |t| correlator.push(t, &mut |ex| emitter.emit(ex)));
        });
    }

    pub fn tick(&mut self, now_ns: u64) {
        let Pipeline { tls, tracker, correlator, emitter } = self;
        tls.expire(now_ns);
        tracker.expire(now_ns, &mut |t| correlator.push(t, &mut |ex| emitter.emit(ex)));
        correlator.tick(now_ns, &mut |ex| emitter.emit(ex));
        let Emitter { joins, clock, exchanges } = emitter;
        joins.expire_pending(now_ns, &mut |ex, j| write(clock, exchanges, &ex, j.is_some()));
        joins.expire(now_ns);
        black_box(tracker.in_flight_by_service());
    }

    /// Flush everything; the number of exchanges that came out.
    pub fn finish(mut self) -> u64 {
        let Pipeline { tls, tracker, correlator, emitter } = &mut self;
        tls.finish();
        tracker.finish(&mut |t| correlator.push(t, &mut |ex| emitter.emit(ex)));
        correlator.finish(&mut |ex| emitter.emit(ex));
        let Emitter { joins, clock, exchanges } = emitter;
        joins.finish(&mut |ex, j| write(clock, exchanges, &ex, j.is_some()));
        let stats = tracker.stats();
        assert_eq!(stats.active_connections, 0, "finish flushes every connection");
        black_box(correlator.stats());
        self.emitter.exchanges
    }
}
