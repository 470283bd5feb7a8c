//! The agent's HTTP endpoint: `/metrics` (OpenMetrics), `/health`, `/ready`.
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, GET only, bounded
//! request size. Bound to loopback by default (`--metrics-addr`).
//!
//! It runs on a thread of its own (its own small runtime): encoding a large page or a
//! scraper that reads slowly never takes time from the thread that drains the kernel's ring
//! buffer. At most [`MAX_SCRAPES`] connections are served at once (more are closed at once)
//! and each has [`DEADLINE`] to finish; both cuts are counted in
//! `traceo_agent_scrapes_cut_total{reason}` (`busy`, `deadline`).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::Metrics;

/// What `/ready` reports: probes attached and the pipeline running.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// `--metrics-addr`: an address, or `off`.
pub fn parse_addr(spec: &str) -> anyhow::Result<Option<SocketAddr>> {
    if spec == "off" {
        return Ok(None);
    }
    let addr: SocketAddr = spec
        .parse()
        .with_context(|| format!("--metrics-addr `{spec}` is not IP:PORT (e.g. 127.0.0.1:9464) or `off`"))?;
    if !addr.ip().is_loopback() {
        log::warn!("metrics endpoint bound to {addr}, reachable from other hosts");
    }
    Ok(Some(addr))
}

/// Connections served at once; more are closed unanswered (counted `busy`). Each holds one
/// encoded page at most, so this also bounds the memory scrapes take.
pub const MAX_SCRAPES: usize = 4;
/// A connection not done (request read, page written) in this time is cut (`deadline`).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Bind now (so a taken port is an error at start), serve on a thread of its own.
pub async fn spawn(addr: SocketAddr, metrics: Arc<Metrics>, ready: Readiness) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on --metrics-addr {addr} (in use? choose another port or `off`)"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new()
        .name("traceo-metrics".into())
        .spawn(move || runtime.block_on(serve(listener, metrics, ready)))
        .context("cannot start the metrics thread")?;
    log::info!("metrics on http://{bound}/metrics (also /health, /ready)");
    Ok(bound)
}

async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>, ready: Readiness) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("metrics endpoint: {e}");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.agent.scrape_cut("busy");
            drop(stream);
            continue;
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            if tokio::time::timeout(DEADLINE, respond(stream, &metrics, &ready)).await.is_err() {
                metrics.agent.scrape_cut("deadline");
            }
            drop(slot);
        });
    }
}

/// Served when the scraper accepts it (Prometheus does): the only format with exemplars.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn respond(mut stream: TcpStream, metrics: &Metrics, ready: &Readiness) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return write(&mut stream, "431 Request Header Fields Too Large", "text/plain", "headers too large\n")
                .await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return write(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await;
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" if head.to_ascii_lowercase().contains("application/openmetrics-text") => {
            write(&mut stream, "200 OK", OPENMETRICS, &metrics.encode()).await
        }
        "/metrics" => write(&mut stream, "200 OK", PROMETHEUS_TEXT, &metrics.encode_prometheus_text()).await,
        "/health" => write(&mut stream, "200 OK", "text/plain", "ok\n").await,
        "/ready" if ready.is_ready() => write(&mut stream, "200 OK", "text/plain", "ready\n").await,
        "/ready" => write(&mut stream, "503 Service Unavailable", "text/plain", "probes not attached yet\n").await,
        _ => write(&mut stream, "404 Not Found", "text/plain", "try /metrics, /health or /ready\n").await,
    }
}

async fn write(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addr_parsing() {
        assert_eq!(parse_addr("off").unwrap(), None);
        assert_eq!(parse_addr("127.0.0.1:9464").unwrap(), Some("127.0.0.1:9464".parse().unwrap()));
        let err = format!("{:#}", parse_addr("localhost").unwrap_err());
        assert!(err.contains("IP:PORT"), "{err}");
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        get_accepting(addr, path, "*/*").await
    }

    async fn get_accepting(addr: SocketAddr, path: &str, accept: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let metrics = Arc::new(Metrics::new(super::super::MetricsConfig::default()));
        let ready = Readiness::default();
        let addr = spawn("127.0.0.1:0".parse().unwrap(), metrics, ready.clone()).await.unwrap();
        assert!(get(addr, "/health").await.starts_with("HTTP/1.1 200 OK"));
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 503"));
        ready.set_ready();
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200 OK"));
        let prometheus_accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        let m = get_accepting(addr, "/metrics", prometheus_accept).await;
        assert!(m.contains("application/openmetrics-text") && m.contains("traceo_agent_build_info"), "{m}");
        assert!(m.trim_end().ends_with("# EOF"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("text/plain; version=0.0.4") && !m.contains("# EOF"), "{m}");
        assert!(m.contains("# TYPE traceo_agent_decode_errors_total counter"), "{m}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }
}
