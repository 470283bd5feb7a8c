//! An OTLP/gRPC trace receiver for assertions (opentelemetry-proto's TraceService on tonic,
//! on an ephemeral port), and the rotel collector as a real third party in the path.

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    logs::v1::LogRecord,
    trace::v1::{Span, span::SpanKind},
};

use super::{Proc, python, wait_for_port};

/// One received span with its resource, flattened for assertions.
#[derive(Clone, Debug)]
pub struct Got {
    pub service: String,
    pub pid: i64,
    pub resource: HashMap<String, String>,
    pub attrs: HashMap<String, String>,
    pub span: Span,
}

impl Got {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    pub fn kind(&self) -> &'static str {
        match SpanKind::try_from(self.span.kind) {
            Ok(SpanKind::Server) => "server",
            Ok(SpanKind::Client) => "client",
            _ => "other",
        }
    }
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
    /// `service kind name target` for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {:?} path={} link={} span={} parent={} trace={}",
            self.service,
            self.kind(),
            self.span.name,
            self.attr("url.path").unwrap_or("?"),
            self.attr("traceo.link").unwrap_or("-"),
            self.span_id(),
            self.parent_id(),
            self.trace_id()
        )
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(attrs: &[KeyValue]) -> HashMap<String, String> {
    attrs
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
    logs: Arc<Mutex<Vec<GotLog>>>,
}

/// One received log record with its resource's service name.
#[derive(Clone, Debug)]
pub struct GotLog {
    pub service: String,
    pub attrs: HashMap<String, String>,
    pub record: LogRecord,
}

impl GotLog {
    pub fn body(&self) -> String {
        match self.record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            other => format!("{other:?}"),
        }
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut logs = self.logs.lock().expect("receiver lock");
        for rl in request.into_inner().resource_logs {
            let resource = flatten(&rl.resource.map(|r| r.attributes).unwrap_or_default());
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for record in rl.scope_logs.into_iter().flat_map(|s| s.log_records) {
                logs.push(GotLog { service: service.clone(), attrs: flatten(&record.attributes), record });
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("receiver lock");
        for rs in request.into_inner().resource_spans {
            let resource = flatten(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            let service = resource.get("service.name").cloned().unwrap_or_default();
            let pid = resource.get("process.pid").and_then(|p| p.parse().ok()).unwrap_or(-1);
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attrs = flatten(&span.attributes);
                spans.push(Got { service: service.clone(), pid, resource: resource.clone(), attrs, span });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver, served from a thread of the test process until dropped.
pub struct Receiver {
    pub port: u16,
    collector: Collector,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").expect("bind the receiver"))
    }

    /// Again on a port it had before (the loss test restarts it).
    pub fn restart_on(port: u16) -> Receiver {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => return Receiver::on(l),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {port}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot bind the receiver again on {port}: {e}"),
            }
        }
    }

    fn on(listener: TcpListener) -> Receiver {
        let port = listener.local_addr().expect("receiver address").port();
        listener.set_nonblocking(true).expect("non-blocking listener");
        let collector = Collector::default();
        // Collectors compress by default (rotel: gzip).
        let service =
            TraceServiceServer::new(collector.clone()).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let logs = LogsServiceServer::new(collector.clone()).accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("receiver runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tonic::transport::Server::builder()
                    .add_service(service)
                    .add_service(logs)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("the OTLP receiver failed");
            });
        });
        Receiver { port, collector, stop: Some(stop), thread: Some(thread) }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> Vec<GotLog> {
        self.collector.logs.lock().expect("receiver lock").clone()
    }

    pub fn spans(&self) -> Vec<Got> {
        self.collector.spans.lock().expect("receiver lock").clone()
    }

    /// Wait until `done` holds for the spans received; panics with them after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                let list: Vec<String> = spans.iter().map(Got::describe).collect();
                panic!("no {what} within {timeout:?}; received {} spans:\n{}", spans.len(), list.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The rotel collector binary from the `rotel` Python package (installed by xtask setup).
pub fn rotel_binary() -> Option<PathBuf> {
    let out = Command::new(python())
        .args(["-c", "import pathlib, rotel; print(pathlib.Path(rotel.__file__).parent / 'rotel-agent')"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

pub fn require_rotel(test: &str) -> bool {
    if rotel_binary().is_some() {
        return true;
    }
    let why = format!("{test} needs the rotel collector in {}: run `cargo xtask setup`", python().display());
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// rotel receiving OTLP/gRPC and OTLP/HTTP on free ports and forwarding to `to` over
/// OTLP/gRPC.
pub struct Rotel {
    _proc: Proc,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Rotel {
    pub fn forwarding(dir: &Path, to: &str) -> Rotel {
        let grpc_port = super::free_port();
        let http_port = super::free_port();
        let log = std::fs::File::create(dir.join("rotel.log")).expect("rotel log");
        let log_err = log.try_clone().expect("rotel log");
        let proc = Proc::spawn(
            Command::new(rotel_binary().expect("rotel-agent"))
                .arg("start")
                .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
                .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
                .args(["--exporter", "otlp", "--otlp-exporter-endpoint", to])
                .args(["--otlp-exporter-protocol", "grpc"])
                .arg("--pid-file")
                .arg(dir.join("rotel.pid"))
                .stdout(log)
                .stderr(log_err),
        );
        wait_for_port(grpc_port);
        wait_for_port(http_port);
        Rotel { _proc: proc, grpc_port, http_port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The OTLP/HTTP base URL (`/v1/traces` is added by the exporter).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}
