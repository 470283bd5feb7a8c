//! The subcommands, wiring a source to a sink.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    cli::{HttpArgs, RecordArgs, ReplayArgs, RunArgs},
    correlate::IdGen,
    event_json::EventPrinter,
    http::{TrackerConfig, WallClock},
    joins::Joins,
    live::{self, LiveOptions},
    logs::{LogJoin, join::LogJoinConfig, otlp::LogExport},
    metrics::{
        Metrics, MetricsConfig,
        server::{self, Readiness},
    },
    output::{LineSink, WhenFull},
    record::RecordWriter,
    sink::{EventLines, EventSink, HttpPipeline, Recorder},
    source::{EventSource, FileSource},
    spans::{self, HostFacts, SpanOutput},
};

/// Loopback by default: the metrics reveal what the host's services do.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// A seed that names one recording: where and when it was made.
fn recording_seed(meta: &crate::record::RecordMeta) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&meta.hostname, meta.clock_offset_ns, &meta.services).hash(&mut h);
    h.finish()
}

fn seconds(d: Option<f64>) -> anyhow::Result<Option<Duration>> {
    d.map(|s| Duration::try_from_secs_f64(s).context("--duration must be a positive number of seconds")).transpose()
}

fn tracker_config(services: Vec<String>, http: &HttpArgs) -> TrackerConfig {
    // Business keys can travel in headers (job_id, job-id, x-job-id): keep those too.
    let key_headers = http.join_keys().flat_map(|k| {
        let dashed = k.replace('_', "-");
        [k.to_owned(), dashed.clone(), format!("x-{dashed}")]
    });
    TrackerConfig {
        service_names: services,
        routes: http.routes.clone(),
        extra_headers: http.headers.iter().cloned().chain(key_headers).collect(),
        db: crate::db::DbOptions { redis_keys: http.db_keys },
        ..TrackerConfig::default()
    }
}

fn joins(http: &HttpArgs) -> Joins {
    Joins::new(http.join_keys().map(str::to_owned).collect(), http.join_ttl_secs * 1_000_000_000, 100_000)
}

/// Where the HTTP pipeline's results go besides the JSON lines.
struct Exports {
    metrics: Option<Arc<Metrics>>,
    /// Trace and span ids: random live; in replay derived from the recording, so replaying
    /// one file gives the same ids every time (and a backend deduplicates a re-export).
    ids: IdGen,
    /// The OTLP endpoint, if any.
    otlp: Option<spans::OtlpTarget>,
    host: HostFacts,
    /// `--shared-state`: the other hosts' agents, through Redis (live only).
    shared: Option<crate::shared_state::SharedState>,
    /// `--node-inject`: the marker sink's port (live only).
    node_sink: Option<u16>,
}

/// `--events` prints kernel events; otherwise the HTTP pipeline prints exchanges (and
/// exports spans when an OTLP endpoint is set).
fn output_sink(
    events: bool,
    services: Vec<String>,
    http: &HttpArgs,
    clock_offset_ns: i64,
    exports: Exports,
    out: LineSink,
    records: LineSink,
) -> anyhow::Result<Box<dyn EventSink>> {
    if events {
        return Ok(Box::new(EventLines { printer: EventPrinter::new(services), out }));
    }
    let clock = WallClock { offset_ns: clock_offset_ns };
    let log_export = match (&exports.otlp, records.is_off()) {
        (Some(target), false) => Some(LogExport::start(target, clock, exports.host.clone())?),
        _ => None,
    };
    let spans = exports.otlp.map(|target| SpanOutput::start(&target, clock, exports.host)).transpose()?;
    let config = tracker_config(services.clone(), http);
    let mut pipeline =
        HttpPipeline::new(config, joins(http), clock_offset_ns, exports.metrics, out, spans, exports.ids);
    if let Some(shared) = exports.shared {
        pipeline = pipeline.with_shared_state(shared);
    }
    if let Some(port) = exports.node_sink {
        pipeline = pipeline.with_node_marks(port);
    }
    if records.is_off() {
        return Ok(Box::new(pipeline));
    }
    let logs = LogJoin::new(LogJoinConfig::default(), services);
    Ok(Box::new(pipeline.with_log_records(logs, records, log_export)))
}

/// `--log-records`: off unless asked for (command line, else config file).
fn log_records(arg: Option<&str>, file: Option<&str>, when_full: WhenFull) -> anyhow::Result<LineSink> {
    match arg.or(file) {
        None | Some("off") => Ok(LineSink::off()),
        Some(spec) => LineSink::open(Some(spec), when_full),
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let sel = args.selection.resolve()?;
    // The config file's `db-keys` (the flag turns it on too).
    let http = HttpArgs { db_keys: args.http.db_keys || sel.db_keys, ..args.http.clone() };
    let out = LineSink::open(args.log.as_deref().or(sel.log.as_deref()), WhenFull::Drop)?;
    let defaults = MetricsConfig::default();
    let max_series = args.max_series.or(sel.max_series).unwrap_or(defaults.max_series);
    if max_series == 0 {
        anyhow::bail!("--max-series must be at least 1");
    }
    let series_ttl = args.series_ttl.or(sel.series_ttl).map_or(defaults.series_ttl, Duration::from_secs);
    let metrics = Arc::new(Metrics::new(MetricsConfig { max_series, series_ttl }));
    let ready = Readiness::default();
    let addr = args.metrics_addr.as_deref().or(sel.metrics_addr.as_deref()).unwrap_or(DEFAULT_METRICS_ADDR);
    if let Some(addr) = server::parse_addr(addr)? {
        server::spawn(addr, metrics.clone(), ready.clone()).await?;
    }
    let services = sel.services.iter().map(|s| s.name.clone()).collect();
    let exports = Exports {
        metrics: Some(metrics.clone()),
        ids: IdGen::from_entropy(),
        otlp: spans::target(&args.otlp, sel.otlp_endpoint.as_deref(), sel.otlp_protocol.as_deref())?,
        host: HostFacts { host_name: Some(crate::procfs::hostname()), live: true },
        shared: match args.shared_state.as_deref().or(sel.shared_state.as_deref()) {
            None | Some("off") => None,
            Some(url) => {
                let counts = metrics.shared_state.clone();
                Some(crate::shared_state::SharedState::start(url, args.http.join_ttl_secs, counts)?)
            }
        },
        node_sink: if sel.node_inject { Some(crate::runtime::node_marks::start_sink()?) } else { None },
    };
    let node_sink = exports.node_sink;
    let read_tcp_seq = exports.shared.is_some();
    let records = log_records(args.log_records.as_deref(), sel.log_records.as_deref(), WhenFull::Drop)?;
    // With --events the log writes are printed as events.
    let capture_logs = !records.is_off();
    let mut sink = output_sink(args.events, services, &http, crate::procfs::clock_offset_ns(), exports, out, records)?;
    let opts = LiveOptions {
        duration: seconds(args.duration)?,
        metrics: Some(metrics),
        ready,
        capture_logs,
        read_tcp_seq,
        node_sink,
    };
    let summary = live::trace(&sel, opts, sink.as_mut()).await?;
    log::info!("{} events", summary.events);
    Ok(())
}

pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    let sel = args.selection.resolve()?;
    if sel.node_inject {
        anyhow::bail!("--node-inject works with `run` only (its markers are read live): drop it from `record`");
    }
    let writer = RecordWriter::create(&args.out, &live::record_meta(&sel))?;
    let mut sink = Recorder { writer: Some(writer), last_progress: Instant::now() };
    let opts = LiveOptions { duration: seconds(args.duration)?, capture_logs: args.logs, ..LiveOptions::default() };
    let summary = live::trace(&sel, opts, &mut sink).await?;
    log::info!("wrote {}; {} events lost in the kernel", args.out.display(), summary.lost);
    Ok(())
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let mut source = FileSource::open(&args.file)?;
    let meta = source.reader.meta.clone();
    let out = LineSink::open(args.log.as_deref(), WhenFull::Wait)?;
    let exports = Exports {
        metrics: None,
        ids: IdGen::seeded(recording_seed(&meta)),
        otlp: spans::target(&args.otlp, None, None)?,
        host: HostFacts { host_name: Some(meta.hostname.clone()), live: false },
        shared: None,
        node_sink: None,
    };
    let records = log_records(args.log_records.as_deref(), None, WhenFull::Wait)?;
    let mut sink = output_sink(args.events, meta.services, &args.http, meta.clock_offset_ns, exports, out, records)?;
    let count = replay_into(&mut source, sink.as_mut()).await?;
    log::info!("replayed {count} events from {}", args.file.display());
    Ok(())
}

/// Feed a file's events to a sink, ticking by event time so idle connections expire as
/// they did live.
async fn replay_into(source: &mut FileSource, sink: &mut dyn EventSink) -> anyhow::Result<u64> {
    let mut count = 0u64;
    let mut last_tick = 0u64;
    while let Some(mut event) = source.next_event().await? {
        count += 1;
        let now = event.meta().ts_ns;
        if now >= last_tick + 1_000_000_000 {
            if last_tick != 0 {
                sink.tick(now)?;
            }
            last_tick = now;
        }
        sink.event(&mut event)?;
    }
    sink.finish()?;
    Ok(count)
}
