//! What the exporter sends: OTLP traces (span blocks encoded by the pipeline) and logs, each
//! item under its resource, and how a batch of them becomes one export request.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
    collector::trace::v1::ExportTraceServiceResponse,
    common::v1::InstrumentationScope,
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
};
use prost::Message as _;

use super::build::ResourceEntry;
use super::wire;

/// What an exporter sends, each item under its resource: spans, or log records.
pub trait Signal: Send + 'static {
    type Item: Send + 'static;
    /// The export call's answer.
    type Response: prost::Message + Default + Send + 'static;
    /// For the agent's log: "spans", "log records".
    const WHAT: &'static str;
    /// Sent items handed back to the pipeline to be filled again, at most.
    const MAX_SPARE: usize;
    /// The export call's gRPC method and OTLP/HTTP path.
    const GRPC_PATH: &'static str;
    const HTTP_PATH: &'static str;
    /// How many spans or records `item` holds: what the queue's bound, the batch size and
    /// the counts are in.
    fn weight(_item: &Self::Item) -> usize {
        1
    }
    /// One batch's export request, encoded. Items left in `items` are handed back to the
    /// pipeline to be filled again (span blocks).
    fn body(items: &mut Vec<(Arc<ResourceEntry>, Self::Item)>) -> Vec<u8>;
    /// How many spans or records the endpoint rejected.
    fn rejected(response: &Self::Response) -> u64;
}

/// OTLP traces, each span already encoded (`build::encode_span`), in blocks.
pub struct Spans;

/// Spans of one resource encoded one after another as `ScopeSpans.spans` fields: what the
/// pipeline hands the exporter thread. A block of spans rather than a buffer per span: one
/// hand-over (a lock) per block, and the request is made of a few long copies.
#[derive(Debug, Default)]
pub struct SpanBlock {
    pub bytes: Vec<u8>,
    pub spans: usize,
}

impl SpanBlock {
    /// Add one encoded span.
    pub fn push(&mut self, span: &[u8]) {
        self.push_with(|b| {
            b.extend_from_slice(span);
            true
        });
    }

    /// Add the span `encode` writes, if it writes one (`true`): in place, not copied in.
    pub fn push_with(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> bool) {
        // Spans are 128 bytes to 16 KiB long: a two-byte length.
        if wire::message_reserving(&mut self.bytes, 2, 2, encode) {
            self.spans += 1;
        }
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans = 0;
    }
}

/// A block buffer larger than this is not reused (a full block of ordinary spans is about
/// half of it).
const MAX_SPARE_BYTES: usize = 64 * 1024;

/// The sent blocks worth reusing: a buffer keeps its largest capacity for good, so one grown
/// by a large span (a long target, a stack trace) is let go, not pinned.
fn keep_reusable(items: &mut Vec<Item>) {
    items.retain(|(_, block)| block.bytes.capacity() <= MAX_SPARE_BYTES);
}

impl Signal for Spans {
    type Item = SpanBlock;
    type Response = ExportTraceServiceResponse;
    const WHAT: &'static str = "spans";
    const MAX_SPARE: usize = 16;
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";
    fn weight(block: &SpanBlock) -> usize {
        block.spans
    }
    fn body(items: &mut Vec<Item>) -> Vec<u8> {
        // Copied into the request: the buffers stay in `items`, to be reused.
        let body = request(items);
        keep_reusable(items);
        body
    }
    fn rejected(response: &ExportTraceServiceResponse) -> u64 {
        response.partial_success.as_ref().map_or(0, |p| p.rejected_spans.max(0) as u64)
    }
}

/// OTLP logs (`--log-records` with an endpoint).
pub struct Logs;

impl Signal for Logs {
    type Item = LogRecord;
    type Response = ExportLogsServiceResponse;
    const WHAT: &'static str = "log records";
    const MAX_SPARE: usize = 0;
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const HTTP_PATH: &'static str = "/v1/logs";
    fn body(items: &mut Vec<(Arc<ResourceEntry>, LogRecord)>) -> Vec<u8> {
        logs_request(std::mem::take(items)).encode_to_vec()
    }
    fn rejected(response: &ExportLogsServiceResponse) -> u64 {
        response.partial_success.as_ref().map_or(0, |p| p.rejected_log_records.max(0) as u64)
    }
}

pub(super) type Item = (Arc<ResourceEntry>, SpanBlock);

fn scope() -> InstrumentationScope {
    InstrumentationScope { name: "traceo".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
}

/// Items grouped under their resources, in the order each resource first came.
fn group<I>(items: impl IntoIterator<Item = (Arc<ResourceEntry>, I)>) -> Vec<(Arc<ResourceEntry>, Vec<I>)> {
    let mut groups: Vec<(Arc<ResourceEntry>, Vec<I>)> = Vec::new();
    // By pid, then the few services of that pid compared: no key String per item.
    let mut by_pid: HashMap<u32, Vec<usize>> = HashMap::new();
    let mut last = None;
    for (resource, item) in items {
        // The very resource of the item before (most are): its group, without a lookup.
        let i = match last.filter(|&i: &usize| Arc::ptr_eq(&groups[i].0, &resource)) {
            Some(i) => i,
            None => {
                let same = by_pid.entry(resource.pid).or_default();
                match same.iter().copied().find(|&i| groups[i].0.service == resource.service) {
                    Some(i) => i,
                    None => {
                        same.push(groups.len());
                        groups.push((resource, Vec::new()));
                        groups.len() - 1
                    }
                }
            }
        };
        groups[i].1.push(item);
        last = Some(i);
    }
    groups
}

/// One encoded `ExportTraceServiceRequest`, spans grouped under their resources:
/// `resource_spans = 1 { resource = 1, scope_spans = 2 { scope = 1, spans = 2 } }` (a
/// block's bytes are its spans' fields already).
pub fn request(items: &[Item]) -> Vec<u8> {
    let scope = scope().encode_to_vec();
    let field = |len: usize| 1 + wire::varint_len(len as u64) + len;
    let mut out = Vec::new();
    for (r, blocks) in group(items.iter().map(|(r, b)| (r.clone(), b.bytes.as_slice()))) {
        let resource = r.resource.encode_to_vec();
        let scope_spans = field(scope.len()) + blocks.iter().map(|b| b.len()).sum::<usize>();
        let resource_spans = field(resource.len()) + field(scope_spans);
        out.reserve(field(resource_spans));
        wire::bytes_header(&mut out, 1, resource_spans);
        wire::bytes(&mut out, 1, &resource);
        wire::bytes_header(&mut out, 2, scope_spans);
        wire::bytes(&mut out, 1, &scope);
        for block in &blocks {
            out.extend_from_slice(block);
        }
    }
    out
}

/// One logs request, records grouped under their resources.
pub fn logs_request(items: Vec<(Arc<ResourceEntry>, LogRecord)>) -> ExportLogsServiceRequest {
    let scope = scope();
    let resource_logs = group(items)
        .into_iter()
        .map(|(r, log_records)| ResourceLogs {
            resource: Some(r.resource.clone()),
            scope_logs: vec![ScopeLogs { scope: Some(scope.clone()), log_records, ..Default::default() }],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

/// A block of `spans` (no bytes) with room for `capacity`, for tests.
#[cfg(test)]
pub(super) fn block(capacity: usize, spans: usize) -> SpanBlock {
    SpanBlock { bytes: Vec::with_capacity(capacity), spans }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ordinary_span_blocks_are_kept_for_reuse() {
        let r = Arc::new(ResourceEntry { service: "s".into(), pid: 1, resource: Default::default() });
        let mut items = vec![(r.clone(), block(16 * 1024, 1)), (r, block(1024 * 1024, 1))];
        keep_reusable(&mut items);
        assert_eq!(items.len(), 1);
        assert!(items[0].1.bytes.capacity() <= MAX_SPARE_BYTES);
    }
}
