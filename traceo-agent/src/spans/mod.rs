//! OpenTelemetry spans from exchanges: `attributes` (HTTP semantic conventions), `build`
//! (span, kind, ids, timestamps, resource), `wire` (the span's protobuf bytes), `blocks`
//! (encoded spans gathered per resource), `signals` (what is sent, as export requests),
//! `export` (bounded queue, batches, the exporter thread), `transport` with `grpc` and
//! `otlp_http` (the two OTLP transports).

mod attributes;
mod blocks;
mod build;
mod export;
mod grpc;
mod otlp_http;
mod signals;
mod transport;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use attributes::{Addr, Attrs, SERVER, address, error_type, kv, path_and_query, span_attributes, string};
pub use build::{HostFacts, ResourceEntry, SpanBuilder, encode_span, resource, span, span_name};
pub use export::{ExportConfig, ExportCounts, Exporter};
#[cfg(test)]
use signals::request;
pub use signals::{Logs, SpanBlock, Spans, logs_request};
pub use transport::parse_endpoint;
pub use wire::ConnRuns;

use crate::http::{Exchange, WallClock};

/// The standard variables, the traces-specific one first.
const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];
const PROTOCOL_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"];

/// How spans and log records travel to the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (the collector's port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318): cheaper for the agent per span.
    HttpProtobuf,
}

impl Protocol {
    /// The names OTEL_EXPORTER_OTLP_PROTOCOL uses.
    pub fn parse(name: &str) -> anyhow::Result<Protocol> {
        match name.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => anyhow::bail!("OTLP protocol http/json is not supported; use http/protobuf or grpc"),
            other => anyhow::bail!("unknown OTLP protocol {other:?}: expected grpc or http/protobuf"),
        }
    }

    /// For the agent's log: "gRPC", "HTTP".
    pub fn transport(self) -> &'static str {
        match self {
            Protocol::Grpc => "gRPC",
            Protocol::HttpProtobuf => "HTTP",
        }
    }
}

/// Where spans (and log records) go, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    pub endpoint: String,
    pub protocol: Protocol,
}

/// Where spans go: `--otlp-endpoint`, else the config file's `otlp-endpoint`, else the
/// standard environment variables. `off` (or empty) anywhere in that order means nowhere.
/// The protocol likewise: `--otlp-protocol`, the config file's, the variables, else gRPC.
pub fn target(
    flags: &crate::cli::OtlpArgs,
    config_endpoint: Option<&str>,
    config_protocol: Option<&str>,
) -> anyhow::Result<Option<OtlpTarget>> {
    let env: Vec<String> = ENDPOINT_VARS.iter().filter_map(|v| std::env::var(v).ok()).collect();
    let Some(endpoint) = endpoint_from(flags.endpoint.as_deref(), config_endpoint, env.iter().map(String::as_str))
    else {
        return Ok(None);
    };
    // The first set, and where it came from (a mistake's error names it).
    let env = PROTOCOL_VARS.iter().filter_map(|v| Some((*v, std::env::var(v).ok().filter(|s| !s.is_empty())?)));
    let chosen = [
        ("--otlp-protocol", flags.protocol.clone()),
        ("the config file's otlp-protocol", config_protocol.map(str::to_owned)),
    ]
    .into_iter()
    .filter_map(|(from, v)| Some((from, v?)))
    .chain(env)
    .next();
    let protocol = match chosen {
        Some((from, name)) => Protocol::parse(&name).context(from)?,
        None => Protocol::default(),
    };
    Ok(Some(OtlpTarget { endpoint, protocol }))
}

fn endpoint_from<'a>(
    flag: Option<&'a str>,
    config: Option<&'a str>,
    mut env: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let chosen = flag.or(config).or_else(|| env.next())?.trim();
    (!chosen.is_empty() && chosen != "off").then(|| chosen.to_owned())
}

/// Spans built from exchanges and handed to the exporter, in blocks.
pub struct SpanOutput {
    builder: SpanBuilder,
    exporter: Exporter,
    /// Spans not yet handed over, a block per resource.
    blocks: blocks::OpenBlocks,
    runs: wire::ConnRuns,
}

impl SpanOutput {
    pub fn start(target: &OtlpTarget, clock: WallClock, host: HostFacts) -> anyhow::Result<SpanOutput> {
        Ok(SpanOutput {
            builder: SpanBuilder::new(clock, host),
            exporter: Exporter::start(ExportConfig::new(target))?,
            blocks: blocks::OpenBlocks::default(),
            runs: wire::ConnRuns::default(),
        })
    }

    pub fn send(&mut self, ex: &Exchange) {
        // Encoded straight into its resource's block (an exchange without ids has no span).
        let resource = self.builder.resource(&ex.service, ex.pid);
        let clock = *self.builder.clock();
        let runs = &mut self.runs;
        self.blocks.push_with(resource, &mut self.exporter, |buf| encode_span(ex, &clock, runs, buf));
    }

    /// Hand over the spans encoded so far (the pipeline has caught up with its events: they
    /// would otherwise wait for more to fill their block).
    pub fn flush(&mut self) {
        self.blocks.flush(&mut self.exporter);
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
    use super::{Protocol, endpoint_from};

    #[test]
    fn protocols_by_their_standard_names_and_a_clear_error_otherwise() {
        assert_eq!(Protocol::parse("grpc").ok(), Some(Protocol::Grpc));
        assert_eq!(Protocol::parse(" http/protobuf").ok(), Some(Protocol::HttpProtobuf));
        let e = Protocol::parse("http/json").expect_err("not built").to_string();
        assert!(e.contains("use http/protobuf or grpc"), "{e}");
        let e = Protocol::parse("http").expect_err("unknown").to_string();
        assert!(e.contains("expected grpc or http/protobuf"), "{e}");
    }

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
