//! The live loop shared by `run` and `record`: load, attach, follow processes, feed an
//! `EventSink`, stop on a signal or after `--duration`, detach, report.

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
    sink::EventSink,
    source::{EventSource, RingSource},
    tls::TlsProbes,
    tracking::{PidMap, PortRescanner, ProcessTracker},
};

/// What the live loop reports at its end.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
    pub decode_errors: u64,
}

/// Options of the live loop besides the selection.
#[derive(Default)]
pub struct LiveOptions {
    pub duration: Option<Duration>,
    /// Where the agent's own counters go.
    pub metrics: Option<Arc<Metrics>>,
    /// Set once the probes are attached and the loop runs.
    pub ready: Readiness,
    /// Capture the traced processes' stdout/stderr (`--log-records`, or `record` with it).
    pub capture_logs: bool,
    /// Read TCP sequence numbers in the kernel (`--shared-state` keys connections by them).
    pub read_tcp_seq: bool,
    /// `--node-inject`: the port of the marker sink the injected scripts write to.
    pub node_sink: Option<u16>,
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

/// Per-kind "events read" counters, resolved once.
struct EventCounters([Counter; 9]);

impl EventCounters {
    fn new(metrics: Option<&Metrics>) -> EventCounters {
        let names = ["data", "conn_open", "conn_close", "exec", "fork", "exit", "task", "listen", "log_write"];
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
            Event::Task(_) => 6,
            Event::Listen(_) => 7,
            Event::LogWrite(_) => 8,
        };
        self.0[i].inc();
    }
}

struct Loop<'a, M: PidMap, S: EventSink + ?Sized> {
    tracker: ProcessTracker<M>,
    sink: &'a mut S,
    counters: EventCounters,
    summary: Summary,
}

impl<M: PidMap, S: EventSink + ?Sized> Loop<'_, M, S> {
    /// Let the tracker see every event; pass on those about traced processes.
    fn deliver(&mut self, event: &mut Event) -> anyhow::Result<()> {
        self.counters.count(event);
        if self.tracker.on_event(event) {
            self.summary.events += 1;
            self.sink.event(event)?;
        }
        Ok(())
    }
}

/// The kernel's counters and the source's decode errors, for the agent's metrics (the
/// sink adds its own).
fn pipeline_counts(kernel: &[u64; traceo_ebpf_common::stat::COUNT as usize], decode_errors: u64) -> PipelineCounts {
    PipelineCounts {
        kernel_drops: STAT_NAMES
            .iter()
            .zip(kernel)
            .filter(|(n, _)| !matches!(**n, "data_events" | "reserved_6" | "tls_events" | "log_events"))
            .map(|(n, v)| (*n, *v))
            .collect(),
        decode_errors,
        ..PipelineCounts::default()
    }
}

fn traced_pids<M: PidMap>(tracker: &ProcessTracker<M>) -> std::collections::HashSet<u32> {
    tracker.traced().keys().copied().collect()
}

/// Trace until a signal or the duration, feeding `sink`.
pub async fn trace<S: EventSink + ?Sized>(sel: &Selection, opts: LiveOptions, sink: &mut S) -> anyhow::Result<Summary> {
    let trace_all = sel.services.is_empty();
    let opts_load = LoadOptions {
        capture_bytes: sel.capture_bytes,
        ring_buffer_mib: sel.ring_buffer_mib,
        trace_all,
        capture_logs: opts.capture_logs,
        log_files: opts.capture_logs && !sel.log_files.is_empty(),
        read_tcp_seq: opts.read_tcp_seq,
    };
    let mut probes = loader::load(&opts_load)?;
    probes.spawn_logger()?;
    let mut source = RingSource::new(probes.take_ring()?)?;
    let stats = probes.take_stats()?;
    let mut log_files = probes.take_log_files()?;
    let select_log_files = opts.capture_logs && !sel.log_files.is_empty();
    if select_log_files {
        log_files.refresh(&sel.log_files);
    }
    let tracker = ProcessTracker::new(sel.services.clone(), probes.take_traced_pids()?);
    let counters = EventCounters::new(opts.metrics.as_deref());
    let mut lp = Loop { tracker, sink, counters, summary: Summary::default() };
    probes.attach()?;
    if trace_all {
        log::info!("no --service given: tracing every process but the agent");
    } else {
        lp.tracker.scan();
        if lp.tracker.traced().is_empty() {
            log::warn!("no running process matches the --service selectors yet; waiting for one to start");
        }
    }
    let mut tls = sel.tls.then(|| TlsProbes::start(&mut probes, trace_all));
    let mut runtimes = crate::runtime::Runtimes::default();
    let track_runtimes = sel.runtime && !trace_all;
    // The processes already running are planned here, before "ready" (their probes are in
    // when the agent says so); every later plan is made on the attach worker.
    let mut planner = crate::attach::Planner::new(
        probes.symbol_offsets(),
        crate::runtime::Options { thread_pools: sel.thread_pools, node_sink: opts.node_sink },
    );
    if let Some(tls) = &mut tls {
        // Everything when everything is traced: once, at start (later processes are covered
        // by the system's libssl, probed above).
        let all = if trace_all { crate::procfs::pids().into_iter().collect() } else { traced_pids(&lp.tracker) };
        for pid in tls.refresh(&mut probes, &all) {
            let plan = planner.plan(pid, crate::attach::Wants { tls: true, runtime: false });
            tls.scanned(&mut probes, pid, plan.tls.flatten());
        }
    }
    if track_runtimes {
        for pid in runtimes.refresh(&mut probes, &traced_pids(&lp.tracker)) {
            if let Some(plan) = planner.plan(pid, crate::attach::Wants { tls: false, runtime: true }).runtime {
                runtimes.planned(&mut probes, pid, plan);
            }
        }
    }
    let attach_dropped = opts.metrics.as_ref().map(|m| m.agent.worker_dropped("attach")).unwrap_or_default();
    let mut attacher = crate::attach::AttachWorker::start(planner, attach_dropped)?;
    // The slow rescan (every process's fds) runs on a worker thread.
    let mut rescanner = if !trace_all && lp.tracker.needs_ports() {
        let dropped = opts.metrics.as_ref().map(|m| m.agent.worker_dropped("proc_scan")).unwrap_or_default();
        Some(PortRescanner::start(lp.tracker.listeners(), dropped)?)
    } else {
        None
    };
    opts.ready.set_ready();
    log::info!("ready: probes attached, events flowing");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        let until_deadline = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        tokio::select! {
            event = source.next_event() => {
                let Some(mut event) = event? else { break };
                // Events the source already holds are handled here, not through another turn
                // of this select (each turn polls every branch and arms its timers).
                loop {
                    lp.deliver(&mut event)?;
                    // A process that just became traced gets the system's OpenSSL probes before its
                    // first call (cached offsets: only the attach syscalls); what needs files read
                    // (its own libraries, its runtime) is planned on the attach worker.
                    let started = match &event {
                        Event::Exec(p) | Event::Fork(p) => Some(p.meta.pid),
                        Event::Listen(c) => Some(c.meta.pid),
                        Event::Exit(p) => {
                            attacher.forget(p.meta.pid);
                            None
                        }
                        _ => None,
                    };
                    if let Some(pid) = started {
                        if lp.tracker.traced().contains_key(&pid) {
                            if track_runtimes && matches!(event, Event::Exec(_)) {
                                // A new program: the old one's layout must not be read meanwhile,
                                // nor its probes' files held for it.
                                probes.forget_runtime(pid);
                            }
                            // A new program (or process) is planned; a listen only when its process
                            // was not: planning again may act on it (`--node-inject` opens the
                            // inspector, itself a listen).
                            let replan = track_runtimes && (matches!(event, Event::Exec(_)) || !runtimes.known(pid));
                            let wants = crate::attach::Wants {
                                tls: tls.as_mut().is_some_and(|t| t.track(&mut probes, pid)),
                                runtime: replan,
                            };
                            if replan {
                                runtimes.track(pid);
                            }
                            if !attacher.request(pid, wants) && replan {
                                runtimes.not_asked(pid);
                            }
                        }
                    }
                    if !source.ready_into(&mut event) {
                        lp.sink.caught_up();
                        break;
                    }
                }
            }
            Some(plan) = attacher.plans.recv() => {
                // Made for a program the process no longer runs: the exec asked for another
                // plan, which follows (a gone process's plan still says so).
                let stale = plan.exe.is_some() && !plan.current();
                if let (Some(tls), Some(visibility)) = (&mut tls, plan.tls) {
                    if !stale {
                        tls.scanned(&mut probes, plan.pid, visibility);
                    }
                }
                if let Some(runtime) = plan.runtime {
                    if !stale {
                        runtimes.planned(&mut probes, plan.pid, runtime);
                    }
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(10) {
                    // Bursts (thousands of exchanges held for their traces at once) leave
                    // freed heap behind; give it back so RSS follows what is live.
                    // SAFETY: no preconditions.
                    unsafe { libc::malloc_trim(0) };
                }
                // New servers are caught by their listen event; this slower scan catches
                // listening sockets handed from process to process.
                if ticks.is_multiple_of(10) {
                    if let Some(r) = &rescanner {
                        r.request();
                    }
                }
                if !trace_all {
                    // Processes whose exit event was lost (or that a rescan taken before
                    // their exit brought back) leave the traced set, and their holds go.
                    lp.tracker.prune_dead();
                    let traced = traced_pids(&lp.tracker);
                    let mut wants: std::collections::HashMap<u32, crate::attach::Wants> = Default::default();
                    if let Some(tls) = &mut tls {
                        for pid in tls.refresh(&mut probes, &traced) {
                            wants.entry(pid).or_default().tls = true;
                        }
                    }
                    if track_runtimes {
                        for pid in runtimes.refresh(&mut probes, &traced) {
                            wants.entry(pid).or_default().runtime = true;
                        }
                    }
                    for (pid, w) in wants {
                        if !attacher.request(pid, w) && w.runtime {
                            runtimes.not_asked(pid);
                        }
                    }
                }
                probes.sweep_uprobes();
                if select_log_files {
                    log_files.refresh(&sel.log_files);
                }
                lp.sink.tick(crate::procfs::monotonic_ns())?;
                if let Some(metrics) = &opts.metrics {
                    let mut counts = pipeline_counts(&stats.read(), source.decode_errors);
                    lp.sink.counts(&mut counts);
                    counts.tls_probes = tls.as_ref().map(|t| t.stats).unwrap_or_default();
                    counts.uprobe_links = probes.uprobes().links() as u64;
                    metrics.agent.update(&counts);
                    metrics.tls.update(&counts.tls, &counts.tls_probes);
                    metrics.http.expire(Instant::now());
                }
            }
            Some(snapshot) = async {
                match &mut rescanner {
                    Some(r) => r.snapshots.recv().await,
                    None => std::future::pending().await,
                }
            } => lp.tracker.apply(snapshot),
            _ = sigint.recv() => { log::info!("interrupted"); break; }
            _ = sigterm.recv() => { log::info!("terminated"); break; }
            _ = tokio::time::sleep(until_deadline.unwrap_or(Duration::MAX)), if until_deadline.is_some() => break,
        }
    }
    probes.detach();
    // What the kernel wrote before the detach is still in the ring buffer.
    source.drain(|mut event| lp.deliver(&mut event))?;
    lp.sink.finish()?;
    let kernel = stats.read();
    let mut summary = lp.summary;
    summary.lost = KernelStats::lost(&kernel);
    summary.decode_errors = source.decode_errors;
    let nonzero: Vec<String> =
        STAT_NAMES.iter().zip(kernel).filter(|(_, v)| *v > 0).map(|(n, v)| format!("{n}={v}")).collect();
    log::info!("kernel counters: {}", if nonzero.is_empty() { "all zero".to_owned() } else { nonzero.join(" ") });
    if summary.lost > 0 {
        log::warn!("{} events were lost in the kernel (ring buffer full)", summary.lost);
    }
    Ok(summary)
}
