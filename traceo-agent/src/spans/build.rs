//! One span per exchange (SERVER for inbound, CLIENT for outbound), and one resource per
//! traced process of a service.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    resource::v1::Resource,
    trace::v1::{
        Span, Status,
        span::{Event as SpanEvent, Link as SpanLink, SpanKind},
        status::StatusCode,
    },
};

use crate::http::{Exchange, Role, SpanRef, TraceContext, WallClock};

use super::attributes::{Attrs, error_type, kv, span_attributes};
use super::wire::{self, ConnRuns, WireAttrs};

/// W3C "sampled": every exchange is recorded.
const SAMPLED: u32 = 0x01;
/// Resources cached at most (one per traced process); past it the cache starts over.
const MAX_RESOURCES: usize = 4096;

/// The resource a span belongs to; spans sharing one are sent together.
#[derive(Debug, PartialEq)]
pub struct ResourceEntry {
    pub service: String,
    pub pid: u32,
    pub resource: Resource,
}

/// Where process facts come from: the live host, or nothing beyond the record file
/// (a replayed pid may belong to another process by now).
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub host_name: Option<String>,
    pub live: bool,
}

pub struct SpanBuilder {
    clock: WallClock,
    host: HostFacts,
    /// By pid, then service (a process may serve several): looked up without a key String.
    resources: HashMap<u32, Vec<Arc<ResourceEntry>>>,
    cached: usize,
    /// The one returned last: consecutive spans mostly share it, found without hashing.
    last: Option<Arc<ResourceEntry>>,
}

impl SpanBuilder {
    pub fn new(clock: WallClock, host: HostFacts) -> SpanBuilder {
        SpanBuilder { clock, host, resources: HashMap::new(), cached: 0, last: None }
    }

    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    pub fn resource(&mut self, service: &str, pid: u32) -> Arc<ResourceEntry> {
        if let Some(r) = self.last.as_ref().filter(|r| r.pid == pid && r.service == service) {
            return r.clone();
        }
        let r = self.lookup(service, pid);
        self.last = Some(r.clone());
        r
    }

    fn lookup(&mut self, service: &str, pid: u32) -> Arc<ResourceEntry> {
        if let Some(r) = self.resources.get(&pid).and_then(|rs| rs.iter().find(|r| r.service == service)) {
            return r.clone();
        }
        if self.cached >= MAX_RESOURCES {
            // `last` is replaced by the caller with the entry made below.
            self.resources.clear();
            self.cached = 0;
        }
        let exe = if self.host.live { process_executable_name(pid) } else { None };
        let mut resource = resource(service, pid, exe.as_deref(), self.host.host_name.as_deref());
        if self.host.live {
            // Read once per process: the resource is cached with it.
            let facts = crate::container::read(pid);
            resource
                .attributes
                .extend(facts.attributes().into_iter().map(|(k, v)| kv(k, Value::StringValue(v.to_owned()))));
        }
        let entry = Arc::new(ResourceEntry { service: service.to_owned(), pid, resource });
        self.resources.entry(pid).or_default().push(entry.clone());
        self.cached += 1;
        entry
    }
}

/// The base name of /proc/PID/exe (what the conventions ask for), else the kernel's comm.
fn process_executable_name(pid: u32) -> Option<String> {
    let exe = crate::procfs::exe(pid)?;
    let name = exe.rsplit('/').next().unwrap_or(&exe).trim_end_matches(" (deleted)").to_owned();
    Some(name).filter(|n| !n.is_empty()).or_else(|| crate::procfs::comm(pid))
}

pub fn resource(service: &str, pid: u32, exe: Option<&str>, host: Option<&str>) -> Resource {
    let mut attributes = vec![
        kv("service.name", Value::StringValue(service.to_owned())),
        kv("process.pid", Value::IntValue(i64::from(pid))),
    ];
    if let Some(exe) = exe {
        attributes.push(kv("process.executable.name", Value::StringValue(exe.to_owned())));
    }
    if let Some(host) = host {
        attributes.push(kv("host.name", Value::StringValue(host.to_owned())));
    }
    Resource { attributes, ..Resource::default() }
}

/// `METHOD route`, per the conventions' `{method} {target}` with the low-cardinality route.
pub fn span_name(ex: &Exchange) -> String {
    name(ex).pieces().concat()
}

/// A span's name, kept in pieces (the export path writes them without joining them first).
enum Name<'a> {
    Text(String),
    Http { method: &'a str, route: &'a str },
}

impl Name<'_> {
    fn pieces(&self) -> [&str; 3] {
        match self {
            Name::Text(s) => [s, "", ""],
            Name::Http { method, route: "" } => [method, "", ""],
            Name::Http { method, route } => [method, " ", route],
        }
    }
}

fn name(ex: &Exchange) -> Name<'_> {
    // An MCP exchange is named for what it did: `tools/call upload_csv`, `initialize`.
    if let Some(mcp) = &ex.mcp {
        return Name::Text(mcp.name());
    }
    let method = if ex.method.is_empty() { "HTTP" } else { &*ex.method };
    Name::Http { method, route: &ex.route }
}

/// What a span is made of besides its attributes, worked out once for either encoding.
struct Parts<'a> {
    trace: &'a TraceContext,
    name: Name<'a>,
    kind: SpanKind,
    start: u64,
    end: u64,
    /// `error.type`: an error status with this message.
    error: Option<Cow<'a, str>>,
}

fn parts<'a>(ex: &'a Exchange, clock: &WallClock) -> Option<Parts<'a>> {
    let trace = ex.trace.as_ref()?;
    let end_ns = ex.response_last_ns.unwrap_or(ex.request_last_ns).max(ex.request_first_ns);
    // A database operation is a CLIENT span with the database conventions' name and attributes.
    let (name, kind, error) = match &ex.db {
        Some(op) => (Name::Text(op.span_name()), SpanKind::Client, op.error_type().map(Cow::Owned)),
        None => {
            let kind = match ex.role {
                Role::Server => SpanKind::Server,
                Role::Client => SpanKind::Client,
            };
            (name(ex), kind, error_type(ex))
        }
    };
    let nanos = |mono| clock.unix_nanos(mono).unwrap_or(0);
    let (start, end) = (nanos(ex.request_first_ns), nanos(end_ns));
    Some(Parts { trace, name, kind, start, end, error })
}

fn attributes(ex: &Exchange, out: &mut impl Attrs) {
    match &ex.db {
        Some(op) => crate::db::span::attributes(ex, op, out),
        None => span_attributes(ex, out),
    }
}

/// A joined exchange links to the span that issued its job key (the upload); a call left
/// ambiguous links to each request that could have made it (`traceo.link=candidate`, the
/// `bool`).
fn links(ex: &Exchange) -> impl Iterator<Item = (&SpanRef, bool)> {
    ex.job_origin.iter().map(|o| (o, false)).chain(ex.candidates.iter().map(|c| (c, true)))
}

fn link_attributes(candidate: bool, out: &mut impl Attrs) {
    if candidate {
        out.str("traceo.link", "candidate");
    }
}

/// The exception a traceback written while serving it reported, per the OTel semantic
/// conventions for exceptions (one event at the span's end: when it was written is not kept).
fn exception_attributes(ex: &Exchange, out: &mut impl Attrs) {
    let Some(e) = &ex.exception else { return };
    out.str("exception.type", &e.kind);
    out.str("exception.message", &e.message);
    out.str("exception.stacktrace", &e.stacktrace);
    // The same exception as Sentry recorded it (`sentry::join`).
    if let Some(id) = &ex.sentry_event_id {
        out.str("sentry.event_id", id);
    }
}

/// The span as prost's struct (tests; the export path uses `encode_span`).
pub fn span(ex: &Exchange, clock: &WallClock) -> Option<Span> {
    let p = parts(ex, clock)?;
    let trace = p.trace;
    let mut attrs = Vec::with_capacity(24);
    attributes(ex, &mut attrs);
    let links = links(ex)
        .map(|(to, candidate)| {
            let mut attributes = Vec::new();
            link_attributes(candidate, &mut attributes);
            SpanLink {
                trace_id: to.trace_id.0.to_vec(),
                span_id: to.span_id.0.to_vec(),
                flags: SAMPLED,
                attributes,
                ..SpanLink::default()
            }
        })
        .collect();
    let events = ex
        .exception
        .as_ref()
        .map(|_| {
            let mut attributes = Vec::new();
            exception_attributes(ex, &mut attributes);
            SpanEvent { time_unix_nano: p.end, name: "exception".to_owned(), attributes, dropped_attributes_count: 0 }
        })
        .into_iter()
        .collect();
    let status = match p.error {
        Some(e) => Status { code: StatusCode::Error as i32, message: e.into_owned() },
        None => Status::default(),
    };
    Some(Span {
        trace_id: trace.trace_id.0.to_vec(),
        span_id: trace.span_id.0.to_vec(),
        trace_state: trace.trace_state.clone().unwrap_or_default(),
        parent_span_id: trace.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: SAMPLED,
        name: p.name.pieces().concat(),
        kind: p.kind as i32,
        start_time_unix_nano: p.start,
        end_time_unix_nano: p.end,
        attributes: attrs,
        links,
        events,
        status: Some(status),
        ..Span::default()
    })
}

/// The span as an encoded `Span` message, the bytes prost would write for `span`'s struct
/// (fields in tag order, as prost-derive sorts them; see `wire`).
pub fn encode_span(ex: &Exchange, clock: &WallClock, runs: &mut ConnRuns, buf: &mut Vec<u8>) -> bool {
    let Some(p) = parts(ex, clock) else { return false };
    let t = p.trace;
    wire::opt_bytes(buf, 1, &t.trace_id.0);
    wire::opt_bytes(buf, 2, &t.span_id.0);
    wire::opt_bytes(buf, 3, t.trace_state.as_deref().unwrap_or_default().as_bytes());
    wire::opt_bytes(buf, 4, t.parent.as_ref().map_or(&[][..], |p| &p.0[..]));
    wire::opt_str_parts(buf, 5, &p.name.pieces());
    wire::opt_varint(buf, 6, p.kind as u64);
    wire::opt_fixed64(buf, 7, p.start);
    wire::opt_fixed64(buf, 8, p.end);
    attributes(ex, &mut WireAttrs { buf, field: 9, runs: Some(runs) });
    if ex.exception.is_some() {
        wire::message(buf, 11, |b| {
            wire::opt_fixed64(b, 1, p.end);
            wire::opt_bytes(b, 2, b"exception");
            exception_attributes(ex, &mut WireAttrs::new(b, 3));
        });
    }
    for (to, candidate) in links(ex) {
        wire::message(buf, 13, |b| {
            wire::opt_bytes(b, 1, &to.trace_id.0);
            wire::opt_bytes(b, 2, &to.span_id.0);
            link_attributes(candidate, &mut WireAttrs::new(b, 4));
            wire::opt_fixed32(b, 6, SAMPLED);
        });
    }
    // Status { message = 2, code = 3 }, always present.
    match &p.error {
        Some(e) => {
            let code = StatusCode::Error as u64;
            let message = if e.is_empty() { 0 } else { wire::field_len(e.len()) };
            wire::bytes_header(buf, 15, message + 1 + wire::varint_len(code));
            wire::opt_bytes(buf, 2, e.as_bytes());
            wire::opt_varint(buf, 3, code);
        }
        None => wire::bytes_header(buf, 15, 0),
    }
    wire::opt_fixed32(buf, 16, SAMPLED);
    true
}
