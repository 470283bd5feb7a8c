//! An operation's CLIENT span, per the OTel database conventions: named `SELECT audit_logs`
//! (`{db.operation.name} {db.collection.name}`), with db.system.name, db.namespace,
//! db.operation.name, db.collection.name, db.query.text (sanitised),
//! db.response.status_code, db.response.returned_rows, server.address/port; a failed
//! operation has error.type and an error status.

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, Status, span::SpanKind, status::StatusCode},
};

use crate::http::{Exchange, WallClock};

use super::DbOp;

const SAMPLED: u32 = 0x01;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.to_owned()))
}

fn nanos(clock: &WallClock, mono_ns: u64) -> u64 {
    clock
        .wall(mono_ns)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn attributes(ex: &Exchange, op: &DbOp) -> Vec<KeyValue> {
    let mut out = vec![s("db.system.name", op.system.as_str())];
    let opt = [
        ("db.namespace", &op.namespace),
        ("db.operation.name", &op.operation),
        ("db.collection.name", &op.collection),
        ("db.query.text", &op.query_text),
        ("db.response.status_code", &op.status_code),
    ];
    for (k, v) in opt {
        if let Some(v) = v {
            out.push(s(k, v));
        }
    }
    if let Some(rows) = op.rows {
        out.push(kv("db.response.returned_rows", Value::IntValue(i64::try_from(rows).unwrap_or(i64::MAX))));
    }
    if let Some(peer) = ex.peer {
        out.push(s("server.address", &peer.ip().to_canonical().to_string()));
        out.push(kv("server.port", Value::IntValue(i64::from(peer.port()))));
    }
    if let Some(e) = op.error_type() {
        out.push(s("error.type", &e));
    }
    if let Some(link) = ex.link() {
        out.push(s("traceo.link", link.as_str()));
    }
    out
}

pub fn span(ex: &Exchange, op: &DbOp, clock: &WallClock) -> Option<Span> {
    let trace = ex.trace.as_ref()?;
    let end_ns = ex.response_last_ns.unwrap_or(ex.request_last_ns).max(ex.request_first_ns);
    let status = match op.error_type() {
        Some(e) => Status { code: StatusCode::Error as i32, message: e },
        None => Status::default(),
    };
    Some(Span {
        trace_id: trace.trace_id.0.to_vec(),
        span_id: trace.span_id.0.to_vec(),
        trace_state: trace.trace_state.clone().unwrap_or_default(),
        parent_span_id: trace.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: SAMPLED,
        name: op.span_name(),
        kind: SpanKind::Client as i32,
        start_time_unix_nano: nanos(clock, ex.request_first_ns),
        end_time_unix_nano: nanos(clock, end_ns),
        attributes: attributes(ex, op),
        status: Some(status),
        ..Span::default()
    })
}
