//! Command line (clap) and the `--config` TOML file; the file fills what the command line
//! leaves unset.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use traceo_ebpf_common::{MAX_CAPTURE, MAX_SERVICES};

use crate::selector::ServiceSpec;

#[derive(Parser, Debug)]
#[command(
    name = "traceo-agent",
    version,
    about = "Zero-code HTTP tracing of a host's services with eBPF",
    long_about = "Zero-code HTTP tracing of a host's services with eBPF.\n\n\
        traceo attaches kernel programs to the socket syscalls of the processes you select and \
        rebuilds what crosses them. It needs root (or CAP_BPF + CAP_PERFMON) for `run`, `record` \
        and `check`; `replay` works on a record file without privileges.\n\n\
        Start with `traceo-agent check`, then e.g.\n  \
        sudo traceo-agent run --service engine=port:8000 --service mcp=comm:mcp-server"
)]
pub struct Cli {
    /// Log level of the agent's own messages (stderr): error, warn, info, debug, trace.
    #[arg(long, global = true, env = "TRACEO_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Trace the selected processes live: one JSON line per HTTP exchange, and Prometheus metrics.
    Run(RunArgs),
    /// Capture the selected processes' socket events into a record file for `replay`.
    Record(RecordArgs),
    /// Replay a record file through the pipeline (no root needed).
    Replay(ReplayArgs),
    /// Report what this kernel supports and which probes the agent would use, and whether the
    /// TLS of the selected processes can be seen.
    Check(CheckArgs),
    /// Benchmark baseline: attach only an empty program to the same tracepoints, until
    /// Ctrl-C or SIGTERM (used by `cargo xtask bench`).
    #[command(hide = true)]
    BenchFloor(BenchFloorArgs),
}

#[derive(Args, Debug, Default, Clone)]
pub struct BenchFloorArgs {
    /// Attach the bound program instead of the empty one at syscall exit, capturing this
    /// pid's socket data minimally (and discarding it from the ring buffer).
    #[arg(long, value_name = "PID")]
    pub bound_pid: Option<u32>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct CheckArgs {
    /// Also report on these processes (as `run --service`): which TLS library each uses and
    /// whether its HTTPS is visible to the agent. Repeatable.
    #[arg(long = "service", value_name = "NAME=SELECTOR")]
    pub services: Vec<ServiceSpec>,
    /// With --service: trace those processes this many seconds and list the protocols each
    /// spoke (http, postgresql, redis, tls, other). 0: do not observe.
    #[arg(long, value_name = "SECONDS", default_value_t = 3)]
    pub observe: u64,
}

/// Which processes to trace and how much to capture.
#[derive(Args, Debug, Default, Clone)]
pub struct SelectionArgs {
    /// A service and how to find its processes: NAME=SELECTOR, where SELECTOR is pid:N,
    /// comm:NAME, port:N (processes listening on N) or exe:GLOB. Children and processes started
    /// later that match are followed. Repeatable. Without any, every process but the agent is
    /// traced.
    #[arg(long = "service", value_name = "NAME=SELECTOR")]
    pub services: Vec<ServiceSpec>,
    /// Payload bytes captured per syscall [default: 16384, the maximum].
    #[arg(long, value_name = "N")]
    pub capture_bytes: Option<u32>,
    /// Size of the kernel's event ring buffer in MiB, a power of two: what absorbs bursts
    /// between the agent's reads; resident memory twice over [default: 4].
    #[arg(long, value_name = "MIB")]
    pub ring_buffer_mib: Option<u32>,
    /// Do not attach the OpenSSL uprobes: HTTPS is then not traced (its connections are
    /// still recognised as TLS and kept from the HTTP parser).
    #[arg(long)]
    pub no_tls: bool,
    /// Do not track runtimes (CPython asyncio task contexts and lineage, nginx upstreams):
    /// calls made while an event loop serves several requests then get no parent
    /// (`ambiguous`). Saves a few user-memory reads per syscall and one uprobe trap per
    /// asyncio task or proxied request.
    #[arg(long)]
    pub no_runtime: bool,
    /// Also follow CPython thread pools: work `asyncio.to_thread` or anyio's
    /// `to_thread.run_sync` (Starlette's `run_in_threadpool`, FastAPI's sync handlers and
    /// dependencies) runs on a pool thread belongs to the task that handed it over. A probe
    /// on `contextvars.copy_context` costs two uprobe traps per call (about 32 us on a VM):
    /// one per hand-off under uvloop, but several per request on asyncio's default loop,
    /// whose every callback copies a context; and probes are per file, so every process
    /// using that interpreter's `_contextvars` module pays them. Off: calls made on pool
    /// threads get no runtime parent.
    #[arg(long)]
    pub thread_pools: bool,
    /// Tie Node.js outbound calls to the requests they serve: inject a small script into each
    /// traced node process through its inspector (SIGUSR1 opens it on 127.0.0.1:9229 for
    /// about a second; never for a process that is not positively Node.js, that handles
    /// SIGUSR1 itself, or whose port 9229 another process holds). The script keeps each
    /// request in an AsyncLocalStorage and, before an outbound HTTP request's write, sends the
    /// agent two socket fds and a length (never data). It stays until the process restarts and
    /// costs the process CPU (Node's promise hooks). Off: concurrent calls of a node process
    /// get no parent.
    #[arg(long)]
    pub node_inject: bool,
    /// With `--log-records` (or `record --logs`): also capture what the traced processes
    /// write to the files matching this glob (their log files), checked every second.
    /// Repeatable.
    #[arg(long = "log-file", value_name = "GLOB")]
    pub log_file: Vec<String>,
    /// A TOML file with any of these options (keys as the long option names, `service` as a
    /// list); the command line wins where both set one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// How exchanges are described.
#[derive(Args, Debug, Default, Clone)]
pub struct HttpArgs {
    /// A route template such as /api/v1/jobs/{job_id}: paths matching its literal segments get
    /// it as their route. Repeatable. Other paths have ids (numbers, UUIDs, hex, long tokens)
    /// replaced by {id}.
    #[arg(long = "route", value_name = "TEMPLATE")]
    pub routes: Vec<String>,
    /// Another request/response header to keep in exchanges (secrets such as Authorization,
    /// Cookie or API keys are never kept). Repeatable.
    #[arg(long = "header", value_name = "NAME")]
    pub headers: Vec<String>,
    /// A business key joining exchanges across services: when a server's response carries
    /// it (JSON field or header), later requests carrying the value join that exchange's
    /// trace and get its `job_id`. Repeatable [default: job_id].
    #[arg(long = "join-key", value_name = "NAME")]
    pub join_key: Vec<String>,
    /// How long an issued key value waits for its webhook, in seconds.
    #[arg(long = "join-ttl", value_name = "SECS", default_value_t = 3600)]
    pub join_ttl_secs: u64,
    /// Keep Redis keys (each command's first argument) in database operations' query text;
    /// values are never kept. Off by default: keys often carry user ids.
    #[arg(long = "db-keys")]
    pub db_keys: bool,
}

impl HttpArgs {
    /// The configured join keys, or `job_id`.
    pub fn join_keys(&self) -> impl Iterator<Item = &str> {
        let default: &[&str] = if self.join_key.is_empty() { &["job_id"] } else { &[] };
        self.join_key.iter().map(String::as_str).chain(default.iter().copied())
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Where output lines go: a file PATH (appended), `-` for stdout, or `off` [default: -].
    #[arg(long, value_name = "PATH|-|off")]
    pub log: Option<String>,
    /// Print raw kernel events, one JSON object each, instead of HTTP exchanges.
    #[arg(long)]
    pub events: bool,
    /// The traced services' own log records (what they write to stdout and stderr when
    /// those are not sockets), one JSON object each with the trace id of the request that
    /// wrote them: a file PATH (appended), `-` for stdout, or `off` [default: off].
    #[arg(long, value_name = "PATH|-|off")]
    pub log_records: Option<String>,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Serve /metrics, /health and /ready here, or `off` [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR|off")]
    pub metrics_addr: Option<String>,
    /// Distinct HTTP label sets per metric family; past it, new ones fold into
    /// http_route="__overflow__" (counted) [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_series: Option<usize>,
    /// Drop an HTTP label set not updated for this many seconds [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub series_ttl: Option<u64>,
    /// Meet the agents of other hosts in this Redis (redis://HOST:PORT[/DB]): job keys and
    /// client spans are published there (ids only), so a webhook or a server span seen here
    /// joins the trace another host's agent started, or `off` [default: off].
    #[arg(long = "shared-state", value_name = "URL|off")]
    pub shared_state: Option<String>,
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

/// Span export.
#[derive(Args, Debug, Default, Clone)]
pub struct OtlpArgs {
    /// Export spans over OTLP/gRPC to this collector (http://HOST:PORT), or `off`. Default:
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT; unset, no
    /// spans leave the host (the JSON lines still carry the trace ids).
    #[arg(long = "otlp-endpoint", value_name = "URL|off")]
    pub endpoint: Option<String>,
    /// How to send them: `grpc` (OTLP/gRPC, port 4317) or `http/protobuf` (OTLP/HTTP, port
    /// 4318; a base URL gets /v1/traces and /v1/logs added). OTLP/HTTP costs the agent less
    /// CPU per span. Default: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.
    #[arg(long = "otlp-protocol", value_name = "grpc|http/protobuf")]
    pub protocol: Option<String>,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    /// The record file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Also record what the traced processes write to non-socket stdout and stderr (their
    /// logs, redacted), for `replay --log-records`.
    #[arg(long)]
    pub logs: bool,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Print the raw kernel events, one JSON object each, instead of HTTP exchanges.
    #[arg(long)]
    pub events: bool,
    #[command(flatten)]
    pub http: HttpArgs,
    /// The record file (from `traceo-agent record`).
    pub file: PathBuf,
    /// Where output lines go: a file PATH (appended), `-` for stdout, or `off` [default: -].
    #[arg(long, value_name = "PATH|-|off")]
    pub log: Option<String>,
    /// The log records in the file (recorded with `record --logs`), one JSON object each:
    /// a file PATH, `-` for stdout, or `off` [default: off].
    #[arg(long, value_name = "PATH|-|off")]
    pub log_records: Option<String>,
    #[command(flatten)]
    pub otlp: OtlpArgs,
}

/// The `--config` file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(default)]
    pub service: Vec<String>,
    pub capture_bytes: Option<u32>,
    pub ring_buffer_mib: Option<u32>,
    #[serde(default)]
    pub no_tls: bool,
    #[serde(default)]
    pub no_runtime: bool,
    #[serde(default)]
    pub thread_pools: bool,
    #[serde(default)]
    pub node_inject: bool,
    pub log: Option<String>,
    pub log_records: Option<String>,
    #[serde(default)]
    pub log_file: Vec<String>,
    pub metrics_addr: Option<String>,
    pub max_series: Option<usize>,
    pub series_ttl: Option<u64>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub shared_state: Option<String>,
    /// `--db-keys`.
    #[serde(default)]
    pub db_keys: bool,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("--config {} is not valid traceo configuration", path.display()))
    }
}

/// Selection with the config file merged in and defaults applied.
#[derive(Debug, Clone)]
pub struct Selection {
    pub services: Vec<ServiceSpec>,
    pub capture_bytes: u32,
    pub ring_buffer_mib: u32,
    /// Attach the OpenSSL probes.
    pub tls: bool,
    /// Track runtimes (asyncio tasks, nginx upstreams).
    pub runtime: bool,
    /// Follow CPython thread pools (context copies); only with `runtime`.
    pub thread_pools: bool,
    /// Inject the Node.js marker script; only with `runtime`.
    pub node_inject: bool,
    /// Options of `run` and `replay` from the config file (the command line wins).
    pub log: Option<String>,
    pub log_records: Option<String>,
    /// `--log-file` globs.
    pub log_files: Vec<String>,
    pub metrics_addr: Option<String>,
    pub max_series: Option<usize>,
    pub series_ttl: Option<u64>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub shared_state: Option<String>,
    /// The config file's `db-keys` (`--db-keys` turns it on too).
    pub db_keys: bool,
}

impl SelectionArgs {
    pub fn resolve(&self) -> anyhow::Result<Selection> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let services = if self.services.is_empty() {
            file.service
                .iter()
                .map(|s| s.parse().with_context(|| format!("in --config: service `{s}`")))
                .collect::<anyhow::Result<_>>()?
        } else {
            self.services.clone()
        };
        if services.len() > MAX_SERVICES {
            anyhow::bail!("at most {MAX_SERVICES} --service selections, not {}", services.len());
        }
        let capture_bytes = self.capture_bytes.or(file.capture_bytes).unwrap_or(MAX_CAPTURE as u32);
        if capture_bytes == 0 || capture_bytes as usize > MAX_CAPTURE {
            anyhow::bail!("--capture-bytes must be between 1 and {MAX_CAPTURE}, not {capture_bytes}");
        }
        let ring_buffer_mib = self.ring_buffer_mib.or(file.ring_buffer_mib).unwrap_or(4);
        crate::loader::check_ring_buffer_mib(ring_buffer_mib)?;
        let runtime = !(self.no_runtime || file.no_runtime);
        let thread_pools = self.thread_pools || file.thread_pools;
        if thread_pools && !runtime {
            anyhow::bail!(
                "--thread-pools follows the runtime's context copies: it cannot go with --no-runtime (drop one)"
            );
        }
        let node_inject = self.node_inject || file.node_inject;
        if node_inject && !runtime {
            anyhow::bail!("--node-inject is runtime tracking: it cannot go with --no-runtime (drop one)");
        }
        Ok(Selection {
            services,
            capture_bytes,
            ring_buffer_mib,
            tls: !(self.no_tls || file.no_tls),
            runtime,
            thread_pools,
            node_inject,
            log: file.log,
            log_records: file.log_records,
            log_files: if self.log_file.is_empty() { file.log_file } else { self.log_file.clone() },
            metrics_addr: file.metrics_addr,
            max_series: file.max_series,
            series_ttl: file.series_ttl,
            otlp_endpoint: file.otlp_endpoint,
            otlp_protocol: file.otlp_protocol,
            shared_state: file.shared_state,
            db_keys: file.db_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ring_buffer_size_is_refused_with_the_fix() {
        for bad in [0, 3, 2048] {
            let args = SelectionArgs { ring_buffer_mib: Some(bad), ..Default::default() };
            let err = format!("{:#}", args.resolve().unwrap_err());
            assert!(err.contains("power of two from 1 to 1024") && err.contains(&bad.to_string()), "{err}");
        }
        assert!(SelectionArgs { ring_buffer_mib: Some(8), ..Default::default() }.resolve().is_ok());
    }

    #[test]
    fn config_file_fills_unset_options_and_cli_wins() {
        let dir = std::env::temp_dir().join(format!("traceo-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            "service = [\"engine=port:8000\"]\ncapture-bytes = 4096\nlog = \"off\"\nmax-series = 5\nseries-ttl = 60\notlp-endpoint = \"http://c:4318\"\notlp-protocol = \"http/protobuf\"\ndb-keys = true\nlog-records = \"-\"\nlog-file = [\"/var/log/app/*.log\"]\nshared-state = \"redis://r:6379/2\"\n",
        )
        .unwrap();
        let args = SelectionArgs { config: Some(path.clone()), ..Default::default() };
        let sel = args.resolve().expect("valid config");
        assert_eq!(sel.services[0].name, "engine");
        assert_eq!((sel.capture_bytes, sel.log.as_deref()), (4096, Some("off")));
        assert_eq!((sel.max_series, sel.series_ttl), (Some(5), Some(60)));

        assert_eq!(sel.ring_buffer_mib, 4, "the default");
        assert_eq!(sel.otlp_endpoint.as_deref(), Some("http://c:4318"));
        assert_eq!(sel.otlp_protocol.as_deref(), Some("http/protobuf"));
        assert!(sel.db_keys);
        assert_eq!(sel.shared_state.as_deref(), Some("redis://r:6379/2"));
        assert_eq!(
            (sel.log_records.as_deref(), sel.log_files.as_slice()),
            (Some("-"), &["/var/log/app/*.log".to_owned()][..])
        );

        let args = SelectionArgs {
            config: Some(path.clone()),
            capture_bytes: Some(100),
            ring_buffer_mib: Some(16),
            no_tls: false,
            no_runtime: false,
            thread_pools: false,
            node_inject: false,
            services: vec!["mcp=pid:1".parse().unwrap()],
            log_file: vec!["/srv/*.log".into()],
        };
        let sel = args.resolve().expect("valid config");
        assert_eq!((sel.services[0].name.as_str(), sel.capture_bytes, sel.ring_buffer_mib), ("mcp", 100, 16));
        assert_eq!(sel.log_files, vec!["/srv/*.log".to_owned()]);

        std::fs::write(&path, "servic = []\n").unwrap();
        let err = format!("{:#}", SelectionArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err());
        assert!(err.contains("unknown field `servic`"), "{err}");
    }

    #[test]
    fn capture_bytes_is_bounded() {
        let args = SelectionArgs { capture_bytes: Some(1 << 20), ..Default::default() };
        assert!(format!("{:#}", args.resolve().unwrap_err()).contains("between 1 and 16384"));
        assert_eq!(SelectionArgs::default().resolve().unwrap().capture_bytes, 16384);
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "traceo-agent",
            "record",
            "--out",
            "x.trec",
            "--service",
            "a=port:80",
            "--duration",
            "2",
        ])
        .unwrap();
        let Command::Record(r) = cli.command else { panic!("not record") };
        assert_eq!(r.selection.services.len(), 1);
        assert!(Cli::try_parse_from(["traceo-agent", "run", "--service", "a=nope:1"]).is_err());
    }
}
