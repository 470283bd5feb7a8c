//! The live loop shared by `run` and `record`: load, attach, follow processes, hand every
//! event to a sink, stop on a signal or after `--duration`, detach, report.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::Selection,
    events::Event,
    loader::{self, KernelStats, LoadOptions, STAT_NAMES},
    metrics::{Metrics, PipelineCounts, server::Readiness},
    record::RecordMeta,
    source::{EventSource, RingSource},
    tracking::ProcessTracker,
};

/// What the live loop reports at its end.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub decode_errors: u64,
}

pub fn record_meta(sel: &Selection) -> RecordMeta {
    RecordMeta {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        clock_offset_ns: crate::procfs::clock_offset_ns(),
        hostname: crate::procfs::hostname(),
        capture_bytes: sel.capture_bytes,
        services: sel.services.iter().map(|s| s.name.clone()).collect(),
    }
}

/// Options of the live loop besides the selection.
#[derive(Default)]
pub struct LiveOptions {
    pub duration: Option<Duration>,
    /// Where the agent's own counters go; `ready` is set once probes are attached.
    pub metrics: Option<Arc<Metrics>>,
    pub ready: Readiness,
}

/// Per-kind "events read" counters, resolved once.
struct EventCounters([Counter; 6]);

impl EventCounters {
    fn new(metrics: Option<&Metrics>) -> EventCounters {
        let names = ["data", "conn_open", "conn_close", "exec", "fork", "exit"];
        EventCounters(names.map(|kind| metrics.map(|m| m.agent.events_read(kind)).unwrap_or_default()))
    }

    fn count(&self, event: &Event) {
        let i = match event {
            Event::Data(_) => 0,
            Event::ConnOpen(_) => 1,
            Event::ConnClose(_) => 2,
            Event::Exec(_) => 3,
            Event::Fork(_) => 4,
            Event::Exit(_) => 5,
        };
        self.0[i].inc();
    }
}

/// Let the tracker see every event; pass on those about traced processes.
fn deliver<M: crate::tracking::PidMap>(
    event: &Event,
    tracker: &mut ProcessTracker<M>,
    summary: &mut Summary,
    counters: &EventCounters,
    sink: &mut impl FnMut(&Event) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    counters.count(event);
    if tracker.on_event(event) {
        summary.events += 1;
        sink(event)?;
    }
    Ok(())
}

/// The kernel's counters and the source's decode errors, for the agent's metrics.
fn pipeline_counts(kernel: &[u64; traceo_ebpf_common::stat::COUNT as usize], decode_errors: u64) -> PipelineCounts {
    PipelineCounts {
        kernel_drops: STAT_NAMES
            .iter()
            .zip(kernel)
            .filter(|(name, _)| !matches!(**name, "data_events"))
            .map(|(name, v)| (*name, *v))
            .collect(),
        decode_errors,
        ..PipelineCounts::default()
    }
}

/// Trace until a signal or `duration`, passing every event to `sink`; `progress` is called
/// every few seconds with the running counts.
pub async fn trace(
    sel: &Selection,
    opts: LiveOptions,
    mut sink: impl FnMut(&Event) -> anyhow::Result<()>,
    mut progress: impl FnMut(&Summary),
) -> anyhow::Result<Summary> {
    let trace_all = sel.services.is_empty();
    let mut probes = loader::load(&LoadOptions { capture_bytes: sel.capture_bytes, trace_all })?;
    probes.spawn_logger()?;
    let mut source = RingSource::new(probes.take_ring()?)?;
    let stats = probes.take_stats()?;
    let mut tracker = ProcessTracker::new(sel.services.clone(), probes.take_traced_pids()?);
    probes.attach()?;
    if trace_all {
        log::info!("no --service given: tracing every process but the agent");
    } else {
        tracker.scan();
        if tracker.traced().is_empty() {
            log::warn!("no running process matches the --service selectors yet; waiting for one to start");
        }
    }
    opts.ready.set_ready();
    log::info!("ready");
    let counters = EventCounters::new(opts.metrics.as_deref());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut summary = Summary::default();
    let mut last_progress = Instant::now();
    loop {
        let until_deadline = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        tokio::select! {
            event = source.next_event() => {
                let Some(event) = event? else { break };
                deliver(&event, &mut tracker, &mut summary, &counters, &mut sink)?;
            }
            _ = tick.tick() => {
                tracker.rescan_ports();
                if let Some(metrics) = &opts.metrics {
                    metrics.agent.update(&pipeline_counts(&stats.read(), source.decode_errors));
                    metrics.http.expire(Instant::now());
                }
                if last_progress.elapsed() >= Duration::from_secs(5) {
                    summary.lost = KernelStats::lost(&stats.read());
                    progress(&summary);
                    last_progress = Instant::now();
                }
            }
            _ = sigint.recv() => { log::info!("interrupted"); break; }
            _ = sigterm.recv() => { log::info!("terminated"); break; }
            _ = tokio::time::sleep(until_deadline.unwrap_or(Duration::MAX)), if until_deadline.is_some() => break,
        }
    }
    probes.detach();
    // What the kernel wrote before the detach is still in the ring buffer.
    source.drain(|event| deliver(&event, &mut tracker, &mut summary, &counters, &mut sink))?;
    let kernel = stats.read();
    summary.lost = KernelStats::lost(&kernel);
    summary.decode_errors = source.decode_errors;
    let counters: Vec<String> =
        STAT_NAMES.iter().zip(kernel).filter(|(_, v)| *v > 0).map(|(n, v)| format!("{n}={v}")).collect();
    log::info!("kernel counters: {}", if counters.is_empty() { "all zero".to_owned() } else { counters.join(" ") });
    if summary.lost > 0 {
        log::warn!("{} events were lost in the kernel (ring buffer full)", summary.lost);
    }
    Ok(summary)
}
