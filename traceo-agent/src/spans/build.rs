//! One span per exchange (SERVER for inbound, CLIENT for outbound), and one resource per
//! traced process of a service.

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

use crate::http::{Exchange, Role, SpanRef, WallClock};

use super::attributes::{error_type, kv, span_attributes};

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
    resources: HashMap<(String, u32), Arc<ResourceEntry>>,
}

impl SpanBuilder {
    pub fn new(clock: WallClock, host: HostFacts) -> SpanBuilder {
        SpanBuilder { clock, host, resources: HashMap::new() }
    }

    /// The span of an exchange the correlation stage gave ids to (`None` otherwise).
    pub fn build(&mut self, ex: &Exchange) -> Option<(Arc<ResourceEntry>, Span)> {
        let span = span(ex, &self.clock)?;
        Some((self.resource(&ex.service, ex.pid), span))
    }

    pub fn resource(&mut self, service: &str, pid: u32) -> Arc<ResourceEntry> {
        let key = (service.to_owned(), pid);
        if let Some(r) = self.resources.get(&key) {
            return r.clone();
        }
        if self.resources.len() >= MAX_RESOURCES {
            self.resources.clear();
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
        self.resources.insert(key, entry.clone());
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

fn nanos(clock: &WallClock, mono_ns: u64) -> u64 {
    clock
        .wall(mono_ns)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `METHOD route`, per the conventions' `{method} {target}` with the low-cardinality route.
pub fn span_name(ex: &Exchange) -> String {
    // An MCP exchange is named for what it did: `tools/call upload_csv`, `initialize`.
    if let Some(mcp) = &ex.mcp {
        return mcp.name();
    }
    let method = if ex.method.is_empty() { "HTTP" } else { ex.method.as_str() };
    if ex.route.is_empty() { method.to_owned() } else { format!("{method} {}", ex.route) }
}

/// A joined exchange links to the span that issued its job key (the upload); a call left
/// ambiguous links to each request that could have made it (`traceo.link=candidate`).
fn span_links(ex: &Exchange) -> Vec<SpanLink> {
    let link = |to: &SpanRef, attributes| SpanLink {
        trace_id: to.trace_id.0.to_vec(),
        span_id: to.span_id.0.to_vec(),
        flags: SAMPLED,
        attributes,
        ..SpanLink::default()
    };
    let candidate = || vec![super::attributes::string("traceo.link", "candidate")];
    let job = ex.job_origin.iter().map(|o| link(o, Vec::new()));
    job.chain(ex.candidates.iter().map(|c| link(c, candidate()))).collect()
}

/// The exception a traceback written while serving it reported, per the OTel semantic
/// conventions for exceptions (at the span's end: when it was written is not kept).
fn exception_event(ex: &Exchange, at_unix_ns: u64) -> Vec<SpanEvent> {
    let Some(e) = &ex.exception else { return Vec::new() };
    let s = super::attributes::string;
    let mut attributes = vec![
        s("exception.type", e.kind.as_str()),
        s("exception.message", e.message.as_str()),
        s("exception.stacktrace", e.stacktrace.as_str()),
    ];
    // The same exception as Sentry recorded it (`sentry::join`).
    attributes.extend(ex.sentry_event_id.as_deref().map(|id| s("sentry.event_id", id)));
    vec![SpanEvent {
        time_unix_nano: at_unix_ns,
        name: "exception".to_owned(),
        attributes,
        dropped_attributes_count: 0,
    }]
}

pub fn span(ex: &Exchange, clock: &WallClock) -> Option<Span> {
    let trace = ex.trace.as_ref()?;
    let end_ns = ex.response_last_ns.unwrap_or(ex.request_last_ns).max(ex.request_first_ns);
    // A database operation is a CLIENT span with the database conventions' name and attributes.
    let (name, kind, error, attributes) = match &ex.db {
        Some(op) => (op.span_name(), SpanKind::Client, op.error_type(), crate::db::span::attributes(ex, op)),
        None => {
            let kind = match ex.role {
                Role::Server => SpanKind::Server,
                Role::Client => SpanKind::Client,
            };
            (span_name(ex), kind, error_type(ex), span_attributes(ex))
        }
    };
    let status = match error {
        Some(e) => Status { code: StatusCode::Error as i32, message: e },
        None => Status::default(),
    };
    Some(Span {
        trace_id: trace.trace_id.0.to_vec(),
        span_id: trace.span_id.0.to_vec(),
        trace_state: trace.trace_state.clone().unwrap_or_default(),
        parent_span_id: trace.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: SAMPLED,
        name,
        kind: kind as i32,
        start_time_unix_nano: nanos(clock, ex.request_first_ns),
        end_time_unix_nano: nanos(clock, end_ns),
        attributes,
        links: span_links(ex),
        events: exception_event(ex, nanos(clock, end_ns)),
        status: Some(status),
        ..Span::default()
    })
}
