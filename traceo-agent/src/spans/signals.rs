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
    /// About how many bytes `item` adds to a request (bounds a batch's size).
    fn size(item: &Self::Item) -> usize;
    /// One batch's export request, encoded: the chunks sent one after another (`items` is
    /// emptied). Span blocks are chunks themselves, moved in rather than copied.
    fn body(items: &mut Vec<(Arc<ResourceEntry>, Self::Item)>) -> Vec<Vec<u8>>;
    /// A sent chunk worth handing back to the pipeline to be filled again (a span block).
    fn reuse(_chunk: Vec<u8>) -> Option<Self::Item> {
        None
    }
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

    pub fn with_capacity(bytes: usize) -> SpanBlock {
        SpanBlock { bytes: Vec::with_capacity(bytes), spans: 0 }
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans = 0;
    }
}

/// A sent chunk is reused as a block buffer when its capacity is in this range: a buffer
/// keeps its largest capacity for good, so one grown by a large span (a long target, a stack
/// trace) is let go, not pinned (a full block of ordinary spans is about half the most); the
/// small chunks (a resource's header, a block flushed nearly empty) would only grow again.
const SPARE_BYTES: std::ops::RangeInclusive<usize> = 4 * 1024..=64 * 1024;

impl Signal for Spans {
    type Item = SpanBlock;
    type Response = ExportTraceServiceResponse;
    const WHAT: &'static str = "spans";
    /// A batch's blocks (64 or more, of up to 32 spans each) and a quarter more: those of a
    /// second request answered before the pipeline took the first's back are freed.
    const MAX_SPARE: usize = 80;
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";
    fn weight(block: &SpanBlock) -> usize {
        block.spans
    }
    fn size(block: &SpanBlock) -> usize {
        block.bytes.len()
    }
    fn body(items: &mut Vec<Item>) -> Vec<Vec<u8>> {
        // Drained: the batch's own vector keeps its room for the next batch.
        request_chunks(items.drain(..))
    }
    fn reuse(mut chunk: Vec<u8>) -> Option<SpanBlock> {
        SPARE_BYTES.contains(&chunk.capacity()).then(|| {
            chunk.clear();
            SpanBlock { bytes: chunk, spans: 0 }
        })
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
    fn size(record: &LogRecord) -> usize {
        record.encoded_len()
    }
    fn body(items: &mut Vec<(Arc<ResourceEntry>, LogRecord)>) -> Vec<Vec<u8>> {
        vec![logs_request(std::mem::take(items)).encode_to_vec()]
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
#[cfg(test)]
pub fn request(items: Vec<Item>) -> Vec<u8> {
    request_chunks(items).concat()
}

/// [`request`] as chunks to send one after another: each resource's header, then the
/// buffers of its blocks themselves (the exporter writes them from where the pipeline
/// encoded them: a copy of every span fewer).
pub fn request_chunks(items: impl IntoIterator<Item = Item>) -> Vec<Vec<u8>> {
    let scope = scope().encode_to_vec();
    let field = |len: usize| 1 + wire::varint_len(len as u64) + len;
    let mut out = Vec::new();
    for (r, blocks) in group(items.into_iter().map(|(r, b)| (r, b.bytes))) {
        let resource = r.resource.encode_to_vec();
        let scope_spans = field(scope.len()) + blocks.iter().map(Vec::len).sum::<usize>();
        let resource_spans = field(resource.len()) + field(scope_spans);
        let mut header = Vec::with_capacity(32 + resource.len() + scope.len());
        wire::bytes_header(&mut header, 1, resource_spans);
        wire::bytes(&mut header, 1, &resource);
        wire::bytes_header(&mut header, 2, scope_spans);
        wire::bytes(&mut header, 1, &scope);
        out.push(header);
        out.extend(blocks);
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
        let reused = |capacity| Spans::reuse(Vec::with_capacity(capacity)).map(|b| b.bytes.capacity());
        assert_eq!(reused(32 * 1024), Some(32 * 1024));
        assert_eq!(reused(1024 * 1024), None, "grown by a large span");
        assert_eq!(reused(200), None, "a resource's header");
        let mut chunk = Vec::with_capacity(16 * 1024);
        chunk.extend_from_slice(b"sent");
        let block = Spans::reuse(chunk).expect("reused");
        assert!(block.bytes.is_empty() && block.spans == 0, "emptied");
    }
}
