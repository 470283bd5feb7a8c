//! The subcommands, wiring stages together.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;

use crate::{
    cli::{RecordArgs, ReplayArgs, RunArgs},
    event_json::EventPrinter,
    live::{self, LiveOptions},
    metrics::{
        Metrics, MetricsConfig,
        server::{self, Readiness},
    },
    output::LineSink,
    record::RecordWriter,
    source::{EventSource, FileSource},
};

/// Loopback by default: the metrics reveal what the host's services do.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

fn seconds(d: Option<f64>) -> anyhow::Result<Option<Duration>> {
    d.map(|s| Duration::try_from_secs_f64(s).context("--duration must be a positive number of seconds")).transpose()
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let sel = args.selection.resolve()?;
    let mut sink = LineSink::open(args.log.as_deref().or(sel.log.as_deref()))?;
    let mut printer = EventPrinter::new(sel.services.iter().map(|s| s.name.clone()).collect());
    let metrics = Arc::new(Metrics::new(MetricsConfig::default()));
    let ready = Readiness::default();
    if let Some(addr) = server::parse_addr(
        args.metrics_addr.as_deref().or(sel.metrics_addr.as_deref()).unwrap_or(DEFAULT_METRICS_ADDR),
    )? {
        server::spawn(addr, metrics.clone(), ready.clone()).await?;
    }
    let opts = LiveOptions { duration: seconds(args.duration)?, metrics: Some(metrics), ready };
    let summary = live::trace(
        &sel,
        opts,
        |event| sink.line(&printer.to_json(event).to_string()),
        |s| log::debug!("{} events, {} lost", s.events, s.lost),
    )
    .await?;
    sink.flush()?;
    log::info!("{} events", summary.events);
    Ok(())
}

pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    let sel = args.selection.resolve()?;
    let mut writer = RecordWriter::create(&args.out, &live::record_meta(&sel))?;
    let mut failed = None;
    let summary = live::trace(
        &sel,
        LiveOptions { duration: seconds(args.duration)?, ..LiveOptions::default() },
        |event| {
            if failed.is_none() {
                if let Err(e) = writer.write(event) {
                    failed = Some(e);
                }
            }
            Ok(())
        },
        |s| log::info!("recording: {} events, {} lost in the kernel", s.events, s.lost),
    )
    .await?;
    let (events, bytes) = (writer.events, writer.bytes);
    writer.finish()?;
    if let Some(e) = failed {
        return Err(e.context(format!("recording to {} stopped", args.out.display())));
    }
    log::info!(
        "recorded {events} events ({:.1} MiB) to {}; {} lost in the kernel",
        bytes as f64 / (1 << 20) as f64,
        args.out.display(),
        summary.lost
    );
    Ok(())
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let mut source = FileSource::open(&args.file)?;
    let mut sink = LineSink::open(args.log.as_deref())?;
    let mut printer = EventPrinter::new(source.reader.meta.services.clone());
    let mut count = 0u64;
    while let Some(event) = source.next_event().await? {
        count += 1;
        sink.line(&printer.to_json(&event).to_string())?;
    }
    sink.flush()?;
    log::info!("replayed {count} events from {}", args.file.display());
    Ok(())
}
