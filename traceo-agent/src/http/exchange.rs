//! The record that crosses the rest of the pipeline: one request and its response.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::correlate::{Carried, SpanId, TraceId};

use super::headers::KeptHeaders;
use super::parser::{HttpMessage, Version};
use super::route::RouteNormalizer;

/// Seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The process received the request.
    Server,
    /// The process sent the request.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// Why a span has the parent it has (the `traceo.link` attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// A trace context or correlation value carried by the request ties them.
    Propagated,
    /// The two ends of one TCP connection on this host.
    Connection,
    /// The only inbound request in flight on the thread (or in the process) that made the call.
    Thread,
    /// The runtime task that made the call serves the request, or descends from the task
    /// that does (asyncio: the same context, or task lineage from it), or answered it just
    /// before (work after the response: background tasks).
    Task,
    /// Not a parent: several inbound requests could have made the call and nothing certain
    /// tells which, so the call starts its own trace with span links to them.
    Ambiguous,
    /// A span that started its own trace but carried a job key: its parent is the span that
    /// issued the key (the upload, for a webhook). Set by the join stage, not the correlator.
    Job,
}

impl Link {
    /// The links the correlation stage finds (job links are the join stage's).
    pub const ALL: [Link; 5] = [Link::Propagated, Link::Connection, Link::Thread, Link::Task, Link::Ambiguous];

    pub fn as_str(self) -> &'static str {
        match self {
            Link::Propagated => "propagated",
            Link::Connection => "connection",
            Link::Thread => "thread",
            Link::Task => "task",
            Link::Ambiguous => "ambiguous",
            Link::Job => "job",
        }
    }
}

/// Another span, by its ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanRef {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// An exchange's place in a trace, given by the correlation stage (the join stage may move
/// it into a job's trace). Ids stay binary here; they become hex only where they leave the
/// agent (the JSON line, span exporters, exemplars).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `None` for a trace's first span.
    pub parent: Option<SpanId>,
    /// How the parent was found; `None` for a trace's first span (`Ambiguous` for a call that
    /// started its own trace because several requests could have made it).
    pub link: Option<Link>,
    /// W3C `tracestate` of the trace the exchange continues.
    pub trace_state: Option<String>,
}

impl TraceContext {
    /// This span, as another span's link sees it.
    pub fn span(&self) -> SpanRef {
        SpanRef { trace_id: self.trace_id, span_id: self.span_id }
    }
}

/// Things worth knowing about how an exchange was observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// Some bytes were not captured, or a message was cut off by the end of the stream.
    pub truncated: bool,
    /// The connection was joined mid-stream.
    pub midstream: bool,
    pub parse_error: bool,
    /// The connection switched protocols after this exchange (101, CONNECT).
    pub upgraded: bool,
    pub no_response: bool,
    /// Bytes of its connection were lost in the kernel around it: the agent resynchronised
    /// the connection, and this exchange (cut short, or the first one after) is kept out of
    /// the latency histograms.
    pub after_loss: bool,
}

impl Flags {
    /// The set flags' names, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.truncated, "truncated"),
            (self.midstream, "midstream"),
            (self.parse_error, "parse_error"),
            (self.upgraded, "upgraded"),
            (self.no_response, "no_response"),
            (self.after_loss, "after_loss"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// Where an exchange happened (from the connection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn_id: u64,
    /// Shared by the connections of a service (10,000 idle connections kept a small string
    /// each, scattered through the heap).
    pub service: Arc<str>,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub midstream: bool,
    /// Its bytes are TLS plaintext from the OpenSSL probes (the socket carried ciphertext).
    pub tls: bool,
    /// Bytes were lost since its last exchange: the next exchange is flagged `after_loss`.
    pub lossy: bool,
    /// The runtime context that opened it (`Conn::task_ctx`): nginx connects upstream for
    /// one client request, then writes that request later, from another event.
    pub opened_ctx: u64,
}

impl ConnInfo {
    /// The runtime context of a request: the one that wrote its first bytes, else, for the
    /// connection's first request, the one that opened the connection.
    pub fn request_ctx(&self, written_by: u64, seq: u64) -> u64 {
        if written_by == 0 && seq == 0 { self.opened_ctx } else { written_by }
    }
}

/// One HTTP exchange.
///
/// Timestamps are CLOCK_MONOTONIC ns, taken from the data events that carried the bytes:
/// a message's first byte is the carrying syscall's `enter_ns` when the process sent it and
/// its `exit_ns` when the process received it (a blocking read's entry says when the process
/// began waiting, not when the bytes came); its last byte is the carrying syscall's `exit_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The connection's, shared (not copied per exchange).
    pub service: Arc<str>,
    pub role: Role,
    /// Position of the request on its connection (0 for the first one the agent saw); with
    /// `conn_id` it names the request the tracker announced as [`RequestSeen`].
    pub request_seq: u64,
    /// Process and thread that read (server) or wrote (client) the request's first bytes.
    pub pid: u32,
    pub tid: u32,
    pub conn_id: u64,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Seen as TLS plaintext (HTTPS).
    pub tls: bool,
    /// TCP sequence numbers of the request's and the response's first bytes, when the kernel
    /// read both (`--shared-state`): the same at both ends of the connection, through NAT.
    pub tcp_seq: Option<[u32; 2]>,
    /// Borrowed when it is one the parser knows (most): no allocation per exchange.
    pub method: Cow<'static, str>,
    /// Redacted.
    pub target: String,
    /// Shared with the route normaliser's cache (most exchanges repeat a few routes).
    pub route: Arc<str>,
    pub version: Option<Version>,
    /// `None` without a (parseable) response.
    pub status: Option<u16>,
    /// Selected, non-secret headers.
    pub request_headers: KeptHeaders,
    pub response_headers: KeptHeaders,
    pub request_body_bytes: u64,
    pub response_body_bytes: Option<u64>,
    /// First bytes of each body, for later JSON/MCP parsing; never printed.
    pub request_body_prefix: Vec<u8>,
    pub response_body_prefix: Vec<u8>,
    pub request_first_ns: u64,
    pub request_last_ns: u64,
    pub response_first_ns: Option<u64>,
    pub response_last_ns: Option<u64>,
    pub flags: Flags,
    /// Filled by the correlation stage.
    pub trace: Option<TraceContext>,
    /// An outbound request made while serving an inbound one: did it carry the inbound trace
    /// context or correlation id? `None` for other exchanges.
    pub propagated: Option<bool>,
    pub job_id: Option<String>,
    /// How the job ended, as a joined request carrying the key said (`"status"` of its JSON).
    pub job_status: Option<String>,
    /// The span that issued `job_id` (exported as an OTLP span link).
    pub job_origin: Option<SpanRef>,
    /// A call left without a parent because several inbound requests could have made it
    /// (`link` is `Ambiguous`): those requests' spans, exported as span links, never parents.
    pub candidates: Vec<SpanRef>,
    /// The runtime context (`Data::task_ctx`) that wrote the request's first bytes and the
    /// response's first bytes: for a server, the task that answered; for a client, the
    /// task that called. 0 when unknown.
    pub request_ctx: u64,
    pub response_ctx: u64,
    /// The thread that wrote (server) or read (client) the response's first bytes.
    pub response_tid: u32,
    /// What the bodies said as MCP JSON-RPC (filled by the pipeline).
    pub mcp: Option<crate::mcp::McpInfo>,
    /// A database operation (PostgreSQL, Redis) rather than an HTTP exchange.
    pub db: Option<Box<crate::db::DbOp>>,
    /// The exception a traceback written while serving it reports (`--log-records`).
    pub exception: Option<crate::logs::ExceptionInfo>,
    /// The Sentry event the process reported for this request (`sentry::join`).
    pub sentry_event_id: Option<String>,
}

/// A request read (server) or sent (client) in full, announced before its exchange completes
/// so the correlation stage can give it ids while its children are still to come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSeen {
    pub conn_id: u64,
    /// As [`Exchange::request_seq`].
    pub seq: u64,
    pub role: Role,
    pub pid: u32,
    pub tid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// The request's first byte, as [`Exchange::request_first_ns`].
    pub start_ns: u64,
    /// The trace facts of its headers (read here, so the headers are not copied).
    pub carried: Carried,
    /// As [`Exchange::request_ctx`].
    pub task_ctx: u64,
    /// A server request's method and path (`sentry::request_shape`; 0 for clients): a
    /// request still in flight that a Sentry event could describe keeps the event untied.
    pub shape: u64,
}

impl RequestSeen {
    /// The announcement an exchange's request would have made (for exchanges whose
    /// announcement the correlation stage no longer holds).
    pub fn of(ex: &Exchange) -> RequestSeen {
        RequestSeen {
            conn_id: ex.conn_id,
            seq: ex.request_seq,
            role: ex.role,
            pid: ex.pid,
            tid: ex.tid,
            local: ex.local,
            peer: ex.peer,
            start_ns: ex.request_first_ns,
            carried: Carried::from_headers(&ex.request_headers),
            task_ctx: ex.request_ctx,
            shape: 0,
        }
    }
}

/// What the tracker reports, in event order: every exchange is announced by a
/// `Request` with the same `conn_id` and sequence number before it is reported.
// The exchange is boxed once here and handed on as the box through the correlator, the
// joins and the outputs: each hand-off moves a pointer, not the ~700-byte record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracked {
    Request(RequestSeen),
    Exchange(Box<Exchange>),
}

impl Tracked {
    pub fn into_exchange(self) -> Option<Box<Exchange>> {
        match self {
            Tracked::Exchange(ex) => Some(ex),
            Tracked::Request(_) => None,
        }
    }
}

impl Exchange {
    /// Join a request with its response (if any). The messages' fields are moved out of
    /// their boxes one by one (unboxed whole first, each was copied again).
    #[allow(clippy::boxed_local)]
    pub fn build(
        conn: &ConnInfo,
        role: Role,
        request_seq: u64,
        req: Box<HttpMessage>,
        resp: Option<Box<HttpMessage>>,
        routes: &RouteNormalizer,
    ) -> Exchange {
        let target = req.target.unwrap_or_default();
        let flags = Flags {
            truncated: req.truncated || resp.as_ref().is_some_and(|r| r.truncated),
            midstream: conn.midstream,
            parse_error: req.parse_error || resp.as_ref().is_some_and(|r| r.parse_error),
            upgraded: resp.as_ref().is_some_and(|r| r.upgraded),
            no_response: resp.is_none(),
            after_loss: conn.lossy,
        };
        let resp = resp.unwrap_or_default();
        let answered = !flags.no_response;
        // The server that answered: this service, or (a client's call) the address it called.
        let scope: std::borrow::Cow<'_, str> = match role {
            Role::Server => (&*conn.service).into(),
            Role::Client => match conn.peer {
                Some(peer) => format!("{}>{peer}", conn.service).into(),
                None => format!("{}>", conn.service).into(),
            },
        };
        Exchange {
            service: Arc::clone(&conn.service),
            role,
            request_seq,
            pid: req.pid,
            tid: req.tid,
            conn_id: conn.conn_id,
            local: conn.local,
            peer: conn.peer,
            tls: conn.tls,
            tcp_seq: req.tcp_seq.zip(resp.tcp_seq.filter(|_| answered)).map(|(q, r)| [q, r]),
            method: req.method.unwrap_or_default(),
            route: routes.route(&scope, &target, resp.status),
            target,
            version: req.version,
            status: resp.status,
            request_headers: req.headers,
            response_headers: resp.headers,
            request_body_bytes: req.body_size,
            response_body_bytes: answered.then_some(resp.body_size),
            request_body_prefix: req.body_prefix,
            response_body_prefix: resp.body_prefix,
            request_first_ns: req.start_ns,
            request_last_ns: req.end_ns,
            response_first_ns: answered.then_some(resp.start_ns),
            response_last_ns: answered.then_some(resp.end_ns),
            flags,
            trace: None,
            propagated: None,
            job_id: None,
            job_origin: None,
            job_status: None,
            mcp: None,
            db: None,
            exception: None,
            sentry_event_id: None,
            candidates: Vec::new(),
            request_ctx: conn.request_ctx(req.task_ctx, request_seq),
            response_ctx: if answered { resp.task_ctx } else { 0 },
            response_tid: resp.tid,
        }
    }

    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace.as_ref().map(|t| t.trace_id)
    }

    pub fn span_id(&self) -> Option<SpanId> {
        self.trace.as_ref().map(|t| t.span_id)
    }

    pub fn parent_span_id(&self) -> Option<SpanId> {
        self.trace.as_ref().and_then(|t| t.parent)
    }

    /// How the parent was found (see [`TraceContext::link`]).
    pub fn link(&self) -> Option<Link> {
        self.trace.as_ref().and_then(|t| t.link)
    }

    /// Request first byte to response last byte.
    pub fn duration_ns(&self) -> Option<u64> {
        self.response_last_ns.map(|end| end.saturating_sub(self.request_first_ns))
    }

    /// Request first byte to response first byte.
    pub fn ttfb_ns(&self) -> Option<u64> {
        self.response_first_ns.map(|first| first.saturating_sub(self.request_first_ns))
    }

    /// X-Correlation-ID, else X-Request-ID (request first, then response).
    pub fn correlation_id(&self) -> Option<&str> {
        ["x-correlation-id", "x-request-id"]
            .iter()
            .find_map(|name| self.request_headers.get(name).or_else(|| self.response_headers.get(name)))
    }

    pub fn host(&self) -> Option<&str> {
        self.request_headers.get("host")
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.request_headers.get("user-agent")
    }

    /// The response's content type, else the request's.
    pub fn content_type(&self) -> Option<&str> {
        self.response_headers.get("content-type").or_else(|| self.request_headers.get("content-type"))
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.request_headers.get("traceparent")
    }
}
