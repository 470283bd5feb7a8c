//! How export requests travel: OTLP/gRPC through tonic (`grpc`), or OTLP/HTTP posts
//! (`otlp_http`), chosen by `--otlp-protocol`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

use super::Protocol;
use super::export::ExportConfig;
use super::otlp_http::HttpCollector;
use super::signals::Signal;

/// How export requests travel: OTLP/gRPC through tonic, or OTLP/HTTP posts.
#[derive(Clone)]
pub(super) enum Transport {
    Grpc(Channel),
    Http(Arc<HttpCollector>),
}

/// A transport's settings, checked before the exporter thread starts (a mistake is the
/// agent's error at startup, not a log line later).
pub(super) enum Target {
    Grpc(Box<Endpoint>),
    Http(HttpCollector),
}

impl Target {
    pub(super) fn new(cfg: &ExportConfig) -> anyhow::Result<Target> {
        Ok(match cfg.protocol {
            Protocol::Grpc => Target::Grpc(Box::new(
                parse_endpoint(&cfg.endpoint)?.connect_timeout(CONNECT_TIMEOUT).timeout(cfg.timeout),
            )),
            Protocol::HttpProtobuf => Target::Http(HttpCollector::new(&cfg.endpoint, CONNECT_TIMEOUT)?),
        })
    }
}

impl Transport {
    /// Inside the exporter's runtime (tonic's channel starts a task of its own).
    pub(super) fn open(target: Target) -> Transport {
        match target {
            // Lazy: the endpoint may be down now and come up later; tonic reconnects.
            Target::Grpc(endpoint) => Transport::Grpc(endpoint.connect_lazy()),
            Target::Http(collector) => Transport::Http(Arc::new(collector)),
        }
    }

    /// Send one encoded request (its chunks one after another); how many items the
    /// endpoint rejected, and the chunks back for reuse (once written; none if the gRPC
    /// client still held them).
    pub(super) fn send<S: Signal>(
        &self,
        chunks: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Done> + Send + 'static {
        let transport = self.clone();
        async move {
            match transport {
                Transport::Grpc(channel) => {
                    let chunks = Arc::new(chunks);
                    let sent = super::grpc::export::<S::Response>(channel, S::GRPC_PATH, chunks.clone())
                        .await
                        .map(|r| S::rejected(&r))
                        .map_err(|s| format!("{}: {}", s.code(), s.message()));
                    (sent, Arc::try_unwrap(chunks).unwrap_or_default())
                }
                Transport::Http(collector) => {
                    let sent = match tokio::time::timeout(timeout, collector.post(S::HTTP_PATH, &chunks)).await {
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                        Ok(Err(f)) => Err(f.0),
                        // A 2xx says the collector took the batch; a body that is not the
                        // response message (some gateways answer `{}`) rejects nothing.
                        Ok(Ok(answer)) => Ok(S::rejected(&S::Response::decode(answer.as_slice()).unwrap_or_default())),
                    };
                    (sent, chunks)
                }
            }
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An export request's outcome: how many spans or records the endpoint rejected, or why it
/// failed.
pub(super) type Sent = Result<u64, String>;

/// A finished request: its outcome, and its chunks back for reuse.
pub(super) type Done = (Sent, Vec<Vec<u8>>);

/// The endpoint as tonic takes it; refuses what this build cannot reach.
pub fn parse_endpoint(url: &str) -> anyhow::Result<Endpoint> {
    let url = format!("http://{}", without_http_scheme(url)?);
    Endpoint::from_shared(url.clone()).with_context(|| format!("invalid OTLP endpoint {url}"))
}

/// An OTLP endpoint's URL after `http://` (which it may leave out); any other scheme is
/// refused, `https` with the way out (no TLS in this build).
pub(super) fn without_http_scheme(url: &str) -> anyhow::Result<&str> {
    let url = url.trim();
    match url.split_once("://") {
        Some(("http", rest)) => Ok(rest),
        Some(("https", _)) => anyhow::bail!(
            "OTLP endpoint {url}: TLS is not supported yet; use an http:// endpoint (e.g. a local collector)"
        ),
        Some(_) => anyhow::bail!("OTLP endpoint {url}: expected http://HOST:PORT"),
        None => Ok(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_plain_http() {
        assert!(parse_endpoint("127.0.0.1:4317").is_ok());
        assert!(parse_endpoint("http://collector:4317").is_ok());
        let err = format!("{:#}", parse_endpoint("https://collector:4317").unwrap_err());
        assert!(err.contains("TLS is not supported"), "{err}");
        assert!(parse_endpoint("ftp://x").is_err());
    }
}
