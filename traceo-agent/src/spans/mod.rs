//! OpenTelemetry spans from exchanges: `attributes` (HTTP semantic conventions), `build`
//! (span, kind, ids, timestamps, resource), `wire` (the span's protobuf bytes), `export`
//! (bounded queue, batches, OTLP/gRPC).

mod attributes;
mod build;
mod export;
mod grpc;
mod wire;

use std::sync::Arc;
use std::time::Duration;

pub use attributes::{Addr, Attrs, SERVER, address, error_type, kv, path_and_query, span_attributes, string};
pub use build::{HostFacts, ResourceEntry, SpanBuilder, encode_span, resource, span, span_name};
pub use export::{ExportConfig, ExportCounts, Exporter, Logs, SpanBlock, Spans, logs_request, parse_endpoint, request};

use crate::http::{Exchange, WallClock};

/// The standard variables, the traces-specific one first.
const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// Where spans go: `--otlp-endpoint`, else the config file's `otlp-endpoint`, else the
/// standard environment variables. `off` (or empty) anywhere in that order means nowhere.
pub fn endpoint(flag: Option<&str>, config: Option<&str>) -> Option<String> {
    let env: Vec<String> = ENDPOINT_VARS.iter().filter_map(|v| std::env::var(v).ok()).collect();
    endpoint_from(flag, config, env.iter().map(String::as_str))
}

fn endpoint_from<'a>(
    flag: Option<&'a str>,
    config: Option<&'a str>,
    mut env: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let chosen = flag.or(config).or_else(|| env.next())?.trim();
    (!chosen.is_empty() && chosen != "off").then(|| chosen.to_owned())
}

/// A block goes to the exporter once it holds this many spans or bytes.
const BLOCK_SPANS: usize = 32;
const BLOCK_BYTES: usize = 32 * 1024;
/// Resources with a block open at most (a resource is a traced process's service: a server's
/// worker processes each have one, and their spans come interleaved). Past it, the fullest
/// block goes.
const MAX_OPEN: usize = 32;

/// Spans built from exchanges and handed to the exporter, in blocks.
pub struct SpanOutput {
    builder: SpanBuilder,
    exporter: Exporter,
    /// The span being encoded: this thread's own buffer, kept (it stays in cache).
    scratch: Vec<u8>,
    /// Spans not yet handed over, a block per resource.
    open: Vec<(Arc<ResourceEntry>, SpanBlock)>,
    /// The block the last span went to (most spans follow one of the same process).
    last: usize,
}

impl SpanOutput {
    pub fn start(endpoint: &str, clock: WallClock, host: HostFacts) -> anyhow::Result<SpanOutput> {
        Ok(SpanOutput {
            builder: SpanBuilder::new(clock, host),
            exporter: Exporter::start(ExportConfig::new(endpoint))?,
            scratch: Vec::with_capacity(1024),
            open: Vec::new(),
            last: 0,
        })
    }

    pub fn send(&mut self, ex: &Exchange) {
        self.scratch.clear();
        let Some(resource) = self.builder.build(ex, &mut self.scratch) else { return };
        let same = |(r, _): &(Arc<ResourceEntry>, SpanBlock)| Arc::ptr_eq(r, &resource);
        let i = match self.open.get(self.last).filter(|o| same(o)) {
            Some(_) => self.last,
            None => match self.open.iter().position(same) {
                Some(i) => i,
                None => {
                    if self.open.len() >= MAX_OPEN {
                        self.send_fullest();
                    }
                    let mut block = self.exporter.spare().unwrap_or_default();
                    block.clear();
                    self.open.push((resource, block));
                    self.open.len() - 1
                }
            },
        };
        self.last = i;
        let block = &mut self.open[i].1;
        block.push(&self.scratch);
        if block.spans >= BLOCK_SPANS || block.bytes.len() >= BLOCK_BYTES {
            let (resource, block) = self.open.swap_remove(i);
            self.exporter.send(resource, block);
        }
    }

    fn send_fullest(&mut self) {
        let fullest = self.open.iter().enumerate().max_by_key(|(_, (_, b))| b.spans).map(|(i, _)| i);
        if let Some(i) = fullest {
            let (resource, block) = self.open.swap_remove(i);
            self.exporter.send(resource, block);
        }
    }

    /// Hand over the spans encoded so far (the pipeline has caught up with its events: they
    /// would otherwise wait for more to fill their block).
    pub fn flush(&mut self) {
        for (resource, block) in self.open.drain(..) {
            self.exporter.send(resource, block);
        }
    }

    pub fn counts(&self) -> &Arc<ExportCounts> {
        self.exporter.counts()
    }

    /// Send what is queued (bounded wait).
    pub fn finish(&mut self) {
        self.flush();
        self.exporter.shutdown(Duration::from_secs(10));
    }
}

impl Drop for SpanOutput {
    /// An agent ending on an error sends (or counts) its open blocks too: before the exporter,
    /// a field, is dropped and shut down.
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod endpoint_tests {
    use super::endpoint_from;

    #[test]
    fn flag_then_config_then_environment_and_off_disables() {
        let env = ["http://env:4317"];
        assert_eq!(
            endpoint_from(Some("http://flag:1"), Some("http://cfg:2"), env.into_iter()).as_deref(),
            Some("http://flag:1")
        );
        assert_eq!(endpoint_from(None, Some("http://cfg:2"), env.into_iter()).as_deref(), Some("http://cfg:2"));
        assert_eq!(endpoint_from(None, None, env.into_iter()).as_deref(), Some("http://env:4317"));
        assert_eq!(endpoint_from(Some("off"), None, env.into_iter()), None);
        assert_eq!(endpoint_from(None, None, std::iter::empty()), None);
        assert_eq!(endpoint_from(None, None, [""].into_iter()), None);
    }
}
