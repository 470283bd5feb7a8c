//! MCP JSON-RPC body parsing (`mcp::parse`) and the job-key extraction and joins (`Joins`)
//! on arbitrary bodies, targets and headers.
//!
//! Input: one flag byte, then pieces separated by `\xff\xfe`: request body, response body,
//! request target, request `job-id` header, response `x-job-id` header, `mcp-session-id`.
//! Flags: bits 0-2 the status, bit 3 an SSE response, bit 4 the server's exchange has no
//! trace parent, bit 5 the client's, bit 6 the key is `id` as well as `job_id`.
//! Each input makes three exchanges through MCP parsing and one `Joins`: the server end
//! (which may issue a key), the client end of the same bytes, and a later server request
//! (a webhook or a poll) whose body is the first one's response. Every piece is also read
//! as a Sentry envelope (`sentry::parse`).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use traceo_agent::correlate::{SpanId, TraceId};
use traceo_agent::http::{Exchange, Flags, KeptHeaders, Role, TraceContext, Version, WallClock};
use traceo_agent::joins::Joins;

const STATUSES: [Option<u16>; 8] = [Some(200), Some(202), Some(400), Some(500), None, Some(204), Some(299), Some(100)];

fn exchange(role: Role, n: u8, parts: &[&[u8]], flags: u8, parentless: bool) -> Exchange {
    let part = |i: usize| parts.get(i).copied().unwrap_or(b"");
    let mut request_headers = KeptHeaders::default();
    let mut response_headers = KeptHeaders::default();
    request_headers.push("job-id", part(3));
    response_headers.push("x-job-id", part(4));
    request_headers.push("mcp-session-id", part(5));
    if flags & 8 != 0 {
        response_headers.push("content-type", b"text/event-stream");
    }
    let target = String::from_utf8_lossy(part(2)).into_owned();
    let start = 1_000_000 * u64::from(n);
    Exchange {
        service: if n == 2 { "engine".into() } else { "mcp".into() },
        role,
        request_seq: u64::from(n),
        pid: 1,
        tid: 1,
        conn_id: u64::from(n),
        local: None,
        peer: None,
        tls: false,
        method: "POST".into(),
        route: target.split('?').next().unwrap_or("").into(),
        target,
        version: Some(Version::Http11),
        status: STATUSES[usize::from(flags & 7)],
        request_headers,
        response_headers,
        request_body_bytes: part(0).len() as u64,
        response_body_bytes: Some(part(1).len() as u64),
        request_body_prefix: part(0).to_vec(),
        response_body_prefix: part(1).to_vec(),
        request_first_ns: start,
        request_last_ns: start + 10,
        response_first_ns: Some(start + 20),
        response_last_ns: Some(start + 30),
        flags: Flags::default(),
        trace: Some(TraceContext {
            trace_id: TraceId([n + 1; 16]),
            span_id: SpanId([n + 1; 8]),
            parent: (!parentless).then_some(SpanId([n + 9; 8])),
            link: None,
            trace_state: None,
        }),
        propagated: None,
        job_id: None,
        job_status: None,
        job_origin: None,
        candidates: Vec::new(),
        request_ctx: 0,
        response_ctx: 0,
        response_tid: 1,
        tcp_seq: None,
        mcp: None,
        db: None,
        exception: None,
        sentry_event_id: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let parts = common::pieces(rest);
    // Sentry envelopes are request bodies too (plain or gzip): never a panic.
    for part in &parts {
        let _ = traceo_agent::sentry::parse(part);
    }
    let keys = if flags & 0x40 != 0 { vec!["job_id".to_owned(), "id".to_owned()] } else { vec!["job_id".to_owned()] };
    let mut joins = Joins::new(keys, 3_600_000_000_000, 8);
    let clock = WallClock { offset_ns: 0 };
    let mut exchanges = 0;
    let server = exchange(Role::Server, 0, &parts, flags, flags & 0x10 != 0);
    let client = exchange(Role::Client, 1, &parts, flags, flags & 0x20 != 0);
    // The response of the first comes back as the body of a later request (a webhook).
    let mut swapped = parts.clone();
    if swapped.len() > 1 {
        swapped.swap(0, 1);
    }
    let later = exchange(Role::Client, 2, &swapped, flags, true);
    for mut ex in [server, client, later] {
        ex.mcp = traceo_agent::mcp::parse(&ex);
        if let Some(info) = &ex.mcp {
            assert!(!info.messages.is_empty());
            let _ = info.name();
        }
        joins.observe(Box::new(ex), &mut |ex, joined| common::write(&clock, &mut exchanges, &ex, joined.is_some()));
    }
    joins.expire_pending(u64::MAX / 2, &mut |ex, j| common::write(&clock, &mut exchanges, &ex, j.is_some()));
    joins.finish(&mut |ex, j| common::write(&clock, &mut exchanges, &ex, j.is_some()));
    joins.expire(u64::MAX);
    assert_eq!(exchanges, 3, "every exchange is passed on once");
});
