//! An exchange's OTel HTTP semantic-convention attributes. Only what the parser kept
//! reaches here (secret headers are never kept, bodies never leave the exchange); header
//! attributes are filtered once more so a secret can never be exported.

use std::net::SocketAddr;

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};

use crate::http::{Exchange, HeaderSelection, Role, is_secret_header};

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
}

pub fn string(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

fn int(key: &str, v: impl Into<i64>) -> KeyValue {
    kv(key, Value::IntValue(v.into()))
}

/// Methods the conventions name; others are `_OTHER` with the original kept.
const KNOWN_METHODS: [&str; 9] = ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"];

/// (path, query) of a request target: origin form `/p?q`, absolute form `http://h/p?q`.
pub fn path_and_query(target: &str) -> (&str, Option<&str>) {
    let after_authority = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find(['/', '?']).map_or("", |j| &rest[j..])
        }
        None => target,
    };
    match after_authority.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (after_authority, None),
    }
}

/// `host[:port]` from a Host header (`[v6]:port` too).
fn host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((ip, tail)) = rest.split_once(']') {
            return (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

/// The low-cardinality reason an exchange failed, if it did: a 5xx status, or no (parseable)
/// response.
pub fn error_type(ex: &Exchange) -> Option<String> {
    // A traceback written while serving it names the error better than its status does.
    let exception = ex.exception.as_ref().map(|e| e.kind.clone());
    match ex.status {
        Some(s) if s >= 500 => Some(exception.unwrap_or_else(|| s.to_string())),
        // An MCP call that failed inside a 2xx answer (isError, or a JSON-RPC error object).
        Some(_) => ex.mcp.as_ref().and_then(|m| {
            m.messages
                .iter()
                .find(|msg| matches!(msg.outcome, crate::mcp::Outcome::ToolError | crate::mcp::Outcome::RpcError))
                .map(|msg| msg.outcome.as_str().to_owned())
        }),
        None if ex.flags.parse_error => Some("parse_error".to_owned()),
        None => Some(exception.unwrap_or_else(|| "no_response".to_owned())),
    }
}

fn address(out: &mut Vec<KeyValue>, prefix: &str, addr: Option<SocketAddr>) {
    if let Some(a) = addr {
        out.push(string(&format!("{prefix}.address"), a.ip().to_canonical().to_string()));
        out.push(int(&format!("{prefix}.port"), a.port()));
    }
}

pub fn span_attributes(ex: &Exchange) -> Vec<KeyValue> {
    let mut out = Vec::with_capacity(24);
    let method = ex.method.as_str();
    if KNOWN_METHODS.contains(&method) {
        out.push(string("http.request.method", method));
    } else {
        out.push(string("http.request.method", "_OTHER"));
        out.push(string("http.request.method_original", method));
    }
    let (path, query) = path_and_query(&ex.target);
    out.push(string("url.path", path));
    if let Some(q) = query {
        // The target was redacted by the parser (`http::redact_target`).
        out.push(string("url.query", q));
    }
    let scheme = if ex.tls { "https" } else { "http" };
    out.push(string("url.scheme", scheme));
    if ex.tls {
        out.push(kv("tls.established", Value::BoolValue(true)));
    }
    if let Some(v) = ex.version {
        out.push(string("network.protocol.version", v.as_str()));
    }
    if let Some(s) = ex.status {
        out.push(int("http.response.status_code", s));
    }
    // The server's name: the Host header, else the socket address it was reached at.
    let server_socket = match ex.role {
        Role::Server => ex.local,
        Role::Client => ex.peer,
    };
    match ex.host().map(host_port) {
        Some((host, port)) => {
            out.push(string("server.address", host));
            if let Some(p) = port.or(server_socket.map(|a| a.port())) {
                out.push(int("server.port", p));
            }
        }
        None => address(&mut out, "server", server_socket),
    }
    match ex.role {
        Role::Server => {
            out.push(string("http.route", ex.route.as_str()));
            address(&mut out, "client", ex.peer);
        }
        Role::Client => {
            let authority = ex.host().map(str::to_owned).or(ex.peer.map(|a| a.to_string()));
            if let Some(authority) = authority {
                // A proxy request's target is already absolute.
                let full = if ex.target.contains("://") {
                    ex.target.clone()
                } else {
                    format!("{scheme}://{authority}{}", ex.target)
                };
                out.push(string("url.full", full));
            }
            out.push(string("url.template", ex.route.as_str()));
        }
    }
    address(&mut out, "network.peer", ex.peer);
    if let Some(ua) = ex.user_agent() {
        out.push(string("user_agent.original", ua));
    }
    out.push(int("http.request.body.size", i64::try_from(ex.request_body_bytes).unwrap_or(i64::MAX)));
    if let Some(n) = ex.response_body_bytes {
        out.push(int("http.response.body.size", i64::try_from(n).unwrap_or(i64::MAX)));
    }
    if let Some(e) = error_type(ex) {
        out.push(string("error.type", e));
    }
    out.push(int("thread.id", ex.tid));
    if let Some(id) = ex.correlation_id() {
        out.push(string("traceo.correlation_id", id));
    }
    if let Some(link) = ex.link() {
        out.push(string("traceo.link", link.as_str()));
    }
    if let Some(job) = &ex.job_id {
        out.push(string("traceo.job_id", job.as_str()));
    }
    if let Some(status) = &ex.job_status {
        out.push(string("traceo.job.status", status.as_str()));
    }
    if let Some(mcp) = &ex.mcp {
        mcp_attributes(&mut out, mcp);
    }
    if let Some(p) = ex.propagated {
        out.push(kv("traceo.propagated", Value::BoolValue(p)));
    }
    if let Some(id) = &ex.sentry_event_id {
        out.push(string("sentry.event_id", id.as_str()));
    }
    header_attributes(&mut out, "http.request.header", ex.request_headers.iter());
    header_attributes(&mut out, "http.response.header", ex.response_headers.iter());
    out
}

/// MCP JSON-RPC facts (the first message of a batch; `mcp.batch.size` says there were more).
fn mcp_attributes(out: &mut Vec<KeyValue>, mcp: &crate::mcp::McpInfo) {
    let Some(first) = mcp.messages.first() else { return };
    out.push(string("mcp.method.name", first.method.as_str()));
    if let Some(tool) = &first.tool {
        out.push(string("mcp.tool.name", tool.as_str()));
    }
    if let Some(id) = &first.id {
        out.push(string("jsonrpc.request.id", id.as_str()));
    }
    if let Some(code) = first.error_code {
        out.push(int("rpc.jsonrpc.error_code", code));
    }
    out.push(string("mcp.outcome", first.outcome.as_str()));
    if let Some(session) = &mcp.session_id {
        out.push(string("mcp.session.id", session.as_str()));
    }
    if mcp.messages.len() > 1 {
        out.push(int("mcp.batch.size", mcp.messages.len() as i64));
    }
}

/// Headers the user asked to keep (`--header`), as `http.request.header.<name>` arrays.
fn header_attributes<'a>(out: &mut Vec<KeyValue>, prefix: &str, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    for (name, value) in headers.filter(|(n, _)| HeaderSelection::is_extra(n) && !is_secret_header(n)) {
        let values = vec![AnyValue { value: Some(Value::StringValue(value.to_owned())) }];
        out.push(kv(&format!("{prefix}.{name}"), Value::ArrayValue(ArrayValue { values })));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(path_and_query("/a/b?x=1&y=2"), ("/a/b", Some("x=1&y=2")));
        assert_eq!(path_and_query("/a"), ("/a", None));
        assert_eq!(path_and_query("http://h:8/p?q"), ("/p", Some("q")));
        assert_eq!(path_and_query("http://h:8"), ("", None));
        assert_eq!(path_and_query("*"), ("*", None));
    }

    #[test]
    fn host_headers_split_into_host_and_port() {
        assert_eq!(host_port("example.com"), ("example.com", None));
        assert_eq!(host_port("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(host_port("[::1]:9"), ("::1", Some(9)));
        assert_eq!(host_port("::1"), ("::1", None));
    }
}
