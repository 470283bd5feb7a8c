//! An exchange's OTel HTTP semantic-convention attributes. Only what the parser kept
//! reaches here (secret headers are never kept, bodies never leave the exchange); header
//! attributes are filtered once more so a secret can never be exported.

use std::borrow::Cow;
use std::net::SocketAddr;

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};

use crate::http::{Exchange, Role, is_secret_header};

pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
}

pub fn string(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

/// Where attributes go: prost `KeyValue`s (tests, resources, log records) or protobuf bytes
/// (`wire::WireAttrs`, the export path), from the one description of each.
pub trait Attrs {
    fn str(&mut self, key: &str, v: &str);
    /// A string that is `parts` joined (`url.full`): the wire writes them without joining.
    fn str_parts(&mut self, key: &str, parts: &[&str]);
    fn int(&mut self, key: &str, v: impl Into<i64>);
    fn bool(&mut self, key: &str, v: bool);
    /// A one-string array (a kept header's value).
    fn str_array(&mut self, key: &str, v: &str);
    /// The attributes of the connection an exchange came on, which `write` writes: the same
    /// for every exchange of a connection with the same `key` (the wire reuses them).
    fn connection(&mut self, _key: &ConnKey<'_>, write: impl FnOnce(&mut Self)) {
        write(self);
    }
}

/// Everything [`connection_attributes`] reads: equal keys, equal attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnKey<'a> {
    pub conn_id: u64,
    role: Role,
    tls: bool,
    version: Option<crate::http::Version>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    host: Option<&'a str>,
    user_agent: Option<&'a str>,
    tid: u32,
}

impl ConnKey<'_> {
    fn of(ex: &Exchange) -> ConnKey<'_> {
        ConnKey {
            conn_id: ex.conn_id,
            role: ex.role,
            tls: ex.tls,
            version: ex.version,
            local: ex.local,
            peer: ex.peer,
            host: ex.host(),
            user_agent: ex.user_agent(),
            tid: ex.tid,
        }
    }
}

/// A [`ConnKey`] kept (its strings owned, their room reused).
#[derive(Debug, Default)]
pub struct OwnedConnKey {
    key: Option<ConnKey<'static>>,
    host: Option<String>,
    user_agent: Option<String>,
}

impl OwnedConnKey {
    pub fn matches(&self, k: &ConnKey<'_>) -> bool {
        let Some(mine) = &self.key else { return false };
        let plain = |k: &ConnKey<'_>| ConnKey { host: None, user_agent: None, ..*k };
        plain(mine) == plain(k) && self.host.as_deref() == k.host && self.user_agent.as_deref() == k.user_agent
    }

    pub fn set(&mut self, k: &ConnKey<'_>) {
        self.key = Some(ConnKey { host: None, user_agent: None, ..*k });
        let keep = |kept: &mut Option<String>, v: Option<&str>| match v {
            Some(v) => {
                let s = kept.get_or_insert_default();
                s.clear();
                s.push_str(v);
            }
            None => *kept = None,
        };
        keep(&mut self.host, k.host);
        keep(&mut self.user_agent, k.user_agent);
    }
}

impl Attrs for Vec<KeyValue> {
    fn str(&mut self, key: &str, v: &str) {
        self.push(string(key, v));
    }

    fn str_parts(&mut self, key: &str, parts: &[&str]) {
        self.push(string(key, parts.concat()));
    }

    fn int(&mut self, key: &str, v: impl Into<i64>) {
        self.push(kv(key, Value::IntValue(v.into())));
    }

    fn bool(&mut self, key: &str, v: bool) {
        self.push(kv(key, Value::BoolValue(v)));
    }

    fn str_array(&mut self, key: &str, v: &str) {
        let values = vec![AnyValue { value: Some(Value::StringValue(v.to_owned())) }];
        self.push(kv(key, Value::ArrayValue(ArrayValue { values })));
    }
}

/// Methods the conventions name; others are `_OTHER` with the original kept. (A `match`, not
/// a list searched: one length switch and compare per span.)
fn known_method(method: &str) -> bool {
    matches!(method, "CONNECT" | "DELETE" | "GET" | "HEAD" | "OPTIONS" | "PATCH" | "POST" | "PUT" | "TRACE")
}

/// (path, query) of a request target: origin form `/p?q`, absolute form `http://h/p?q`.
pub fn path_and_query(target: &str) -> (&str, Option<&str>) {
    let after_authority = match scheme_end(target) {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find(['/', '?']).map_or("", |j| &rest[j..])
        }
        None => target,
    };
    // By memchr: `split_once` with a char pattern cost more than the rest of this per span.
    match memchr::memchr(b'?', after_authority.as_bytes()) {
        Some(i) => (&after_authority[..i], Some(&after_authority[i + 1..])),
        None => (after_authority, None),
    }
}

/// Where `://` first occurs: each ':' (memchr) checked for the two bytes after it. Per span,
/// `str::find` with a three-byte needle set up a searcher costing more than the whole scan.
fn scheme_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(i) = memchr::memchr(b':', &b[from..]) {
        let at = from + i;
        if b[at + 1..].starts_with(b"//") {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// `host[:port]` from a Host header (`[v6]:port` too).
fn host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((ip, tail)) = rest.split_once(']') {
            return (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    // `host:port` has one ':' (an IPv6 address without brackets has several): by memchr, as
    // `rsplit_once` and `contains` with a char pattern cost several times more per span.
    let b = host.as_bytes();
    match memchr::memchr(b':', b) {
        Some(i) if memchr::memchr(b':', &b[i + 1..]).is_none() => (&host[..i], host[i + 1..].parse().ok()),
        _ => (host, None),
    }
}

/// The low-cardinality reason an exchange failed, if it did: a 5xx status, or no (parseable)
/// response. Borrowed but for a bare status code: nothing allocated per span otherwise.
pub fn error_type(ex: &Exchange) -> Option<Cow<'_, str>> {
    // A traceback written while serving it names the error better than its status does.
    let exception = ex.exception.as_ref().map(|e| Cow::Borrowed(e.kind.as_str()));
    match ex.status {
        Some(s) if s >= 500 => Some(exception.unwrap_or_else(|| Cow::Owned(s.to_string()))),
        // An MCP call that failed inside a 2xx answer (isError, or a JSON-RPC error object).
        Some(_) => ex.mcp.as_ref().and_then(|m| {
            m.messages
                .iter()
                .find(|msg| matches!(msg.outcome, crate::mcp::Outcome::ToolError | crate::mcp::Outcome::RpcError))
                .map(|msg| Cow::Borrowed(msg.outcome.as_str()))
        }),
        None if ex.flags.parse_error => Some(Cow::Borrowed("parse_error")),
        None => Some(exception.unwrap_or(Cow::Borrowed("no_response"))),
    }
}

/// A socket address's IP as text (once, though a span may name it twice) and its port.
pub struct Addr {
    text: IpText,
    port: u16,
}

impl Addr {
    pub fn new(a: SocketAddr) -> Addr {
        let mut text = IpText::default();
        text.put(a.ip().to_canonical());
        Addr { text, port: a.port() }
    }
}

/// `{prefix}.address` and `{prefix}.port`, keys given whole (no string built per span); in
/// line, so the keys are constants where written.
#[inline(always)]
pub fn address(out: &mut impl Attrs, keys: [&str; 2], addr: Option<&Addr>) {
    if let Some(a) = addr {
        out.str(keys[0], a.text.as_str());
        out.int(keys[1], i64::from(a.port));
    }
}

/// An IP address's text (what `Display` writes), on the stack: no allocation per span.
struct IpText {
    buf: [u8; 64],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText { buf: [0; 64], len: 0 }
    }
}

impl IpText {
    fn put(&mut self, ip: std::net::IpAddr) {
        match ip {
            // Dotted decimal, as `Ipv4Addr`'s `Display` writes it (without its formatter).
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            std::net::IpAddr::V6(v6) => {
                let _ = std::fmt::Write::write_fmt(self, format_args!("{v6}"));
            }
        }
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn as_str(&self) -> &str {
        let text = self.buf.get(..self.len).unwrap_or_default();
        debug_assert!(text.is_ascii());
        // SAFETY: `push` writes ASCII digits and dots only, and `write_str` appends a whole
        // `&str` or nothing: the bytes so far are UTF-8. Validating them again cost more than
        // formatting the address.
        unsafe { std::str::from_utf8_unchecked(text) }
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

pub const SERVER: [&str; 2] = ["server.address", "server.port"];
const CLIENT: [&str; 2] = ["client.address", "client.port"];
const PEER: [&str; 2] = ["network.peer.address", "network.peer.port"];

pub fn span_attributes(ex: &Exchange, out: &mut impl Attrs) {
    let method = &*ex.method;
    if known_method(method) {
        out.str("http.request.method", method);
    } else {
        out.str("http.request.method", "_OTHER");
        out.str("http.request.method_original", method);
    }
    let (path, query) = path_and_query(&ex.target);
    out.str("url.path", path);
    if let Some(q) = query {
        // The target was redacted by the parser (`http::redact_target`).
        out.str("url.query", q);
    }
    if let Some(s) = ex.status {
        out.int("http.response.status_code", s);
    }
    match ex.role {
        Role::Server => out.str("http.route", &ex.route),
        Role::Client => {
            let authority = ex.host().map(Cow::Borrowed).or(ex.peer.map(|a| Cow::Owned(a.to_string())));
            if let Some(authority) = authority {
                // A proxy request's target is already absolute.
                if scheme_end(&ex.target).is_some() {
                    out.str("url.full", &ex.target);
                } else {
                    out.str_parts("url.full", &[scheme(ex), "://", &authority, &ex.target]);
                }
            }
            out.str("url.template", &ex.route);
        }
    }
    out.connection(&ConnKey::of(ex), |out| connection_attributes(ex, out));
    out.int("http.request.body.size", i64::try_from(ex.request_body_bytes).unwrap_or(i64::MAX));
    if let Some(n) = ex.response_body_bytes {
        out.int("http.response.body.size", i64::try_from(n).unwrap_or(i64::MAX));
    }
    if let Some(e) = error_type(ex) {
        out.str("error.type", &e);
    }
    if let Some(id) = ex.correlation_id() {
        out.str("traceo.correlation_id", id);
    }
    if let Some(link) = ex.link() {
        out.str("traceo.link", link.as_str());
    }
    if let Some(job) = &ex.job_id {
        out.str("traceo.job_id", job.as_str());
    }
    if let Some(status) = &ex.job_status {
        out.str("traceo.job.status", status.as_str());
    }
    if let Some(mcp) = &ex.mcp {
        mcp_attributes(out, mcp);
    }
    if let Some(p) = ex.propagated {
        out.bool("traceo.propagated", p);
    }
    if let Some(id) = &ex.sentry_event_id {
        out.str("sentry.event_id", id.as_str());
    }
    header_attributes(out, "http.request.header", ex.request_headers.extras());
    header_attributes(out, "http.response.header", ex.response_headers.extras());
}

fn scheme(ex: &Exchange) -> &'static str {
    if ex.tls { "https" } else { "http" }
}

/// What an exchange's connection says (its ends, its protocol) and what a connection's
/// requests nearly always repeat (Host, User-Agent, the thread): all of it from [`ConnKey`].
fn connection_attributes(ex: &Exchange, out: &mut impl Attrs) {
    out.str("url.scheme", scheme(ex));
    if ex.tls {
        out.bool("tls.established", true);
    }
    if let Some(v) = ex.version {
        out.str("network.protocol.version", v.as_str());
    }
    // The server's name: the Host header, else the socket address it was reached at.
    let peer = ex.peer.map(Addr::new);
    let server_socket = match ex.role {
        Role::Server => ex.local,
        Role::Client => ex.peer,
    };
    match ex.host().map(host_port) {
        Some((host, port)) => {
            out.str("server.address", host);
            if let Some(p) = port.or(server_socket.map(|a| a.port())) {
                out.int("server.port", p);
            }
        }
        None => match ex.role {
            Role::Server => address(out, SERVER, ex.local.map(Addr::new).as_ref()),
            Role::Client => address(out, SERVER, peer.as_ref()),
        },
    }
    if ex.role == Role::Server {
        address(out, CLIENT, peer.as_ref());
    }
    address(out, PEER, peer.as_ref());
    if let Some(ua) = ex.user_agent() {
        out.str("user_agent.original", ua);
    }
    out.int("thread.id", ex.tid);
}

/// MCP JSON-RPC facts (the first message of a batch; `mcp.batch.size` says there were more).
fn mcp_attributes(out: &mut impl Attrs, mcp: &crate::mcp::McpInfo) {
    let Some(first) = mcp.messages.first() else { return };
    out.str("mcp.method.name", first.method.as_str());
    if let Some(tool) = &first.tool {
        out.str("mcp.tool.name", tool.as_str());
    }
    if let Some(id) = &first.id {
        out.str("jsonrpc.request.id", id.as_str());
    }
    if let Some(code) = first.error_code {
        out.int("rpc.jsonrpc.error_code", code);
    }
    out.str("mcp.outcome", first.outcome.as_str());
    if let Some(session) = &mcp.session_id {
        out.str("mcp.session.id", session.as_str());
    }
    if mcp.messages.len() > 1 {
        out.int("mcp.batch.size", mcp.messages.len() as i64);
    }
}

/// Headers the user asked to keep (`--header`), as `http.request.header.<name>` arrays.
fn header_attributes<'a>(out: &mut impl Attrs, prefix: &str, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    for (name, value) in headers.filter(|(n, _)| !is_secret_header(n)) {
        out.str_array(&format!("{prefix}.{name}"), value);
    }
}

#[cfg(test)]
mod ip_text_tests {
    use super::IpText;

    #[test]
    fn ip_text_is_display() {
        let ips: [std::net::IpAddr; 7] = [
            "0.0.0.0".parse().unwrap_or_else(|e| panic!("{e}")),
            "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}")),
            "10.20.255.9".parse().unwrap_or_else(|e| panic!("{e}")),
            "192.168.100.199".parse().unwrap_or_else(|e| panic!("{e}")),
            "::1".parse().unwrap_or_else(|e| panic!("{e}")),
            "2001:db8::8a2e:370:7334".parse().unwrap_or_else(|e| panic!("{e}")),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap_or_else(|e| panic!("{e}")),
        ];
        for ip in ips {
            let mut t = IpText::default();
            t.put(ip);
            assert_eq!(t.as_str(), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(n, 0, n, 255 - n));
            let mut t = IpText::default();
            t.put(ip);
            assert_eq!(t.as_str(), ip.to_string());
        }
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
        // The first `://`, as `str::find` finds it.
        for t in ["/a?u=http://x/y", "/a:b:/c?d", "h:x://k/p:", "/p:", ":", "://", "a:/", "a::/", "x:/:/:://", ""] {
            assert_eq!(scheme_end(t), t.find("://"), "{t}");
        }
    }

    #[test]
    fn host_headers_split_into_host_and_port() {
        assert_eq!(host_port("example.com"), ("example.com", None));
        assert_eq!(host_port("example.com:8080"), ("example.com", Some(8080)));
        assert_eq!(host_port("[::1]:9"), ("::1", Some(9)));
        assert_eq!(host_port("::1"), ("::1", None));
        assert_eq!(host_port("a:b:c"), ("a:b:c", None));
        assert_eq!(host_port("h:"), ("h", None));
        assert_eq!(host_port(":80"), ("", Some(80)));
    }
}
