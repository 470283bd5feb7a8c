//! The database parsers on protocol bytes as libpq/asyncpg and redis-py write them, split
//! every way, and on arbitrary bytes.

use bytes::Bytes;
use proptest::prelude::*;

use super::postgres::PgParser;
use super::redis::RedisParser;
use super::{DbOp, OpEvent};
use crate::events::Direction::{self, Egress, Ingress};
use crate::http::{SegKind, Segment};

fn seg(bytes: &[u8], t: u64) -> Segment {
    Segment {
        kind: SegKind::Bytes(Bytes::copy_from_slice(bytes)),
        pid: 7,
        tid: 8,
        start_ns: t,
        end_ns: t + 1,
        task_ctx: 0,
        seq_end: None,
    }
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn startup() -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0app\0database\0shop\0\0");
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

fn pg_conversation() -> Vec<(Direction, Vec<u8>)> {
    let mut be_auth = msg(b'R', &3u32.to_be_bytes());
    let mut ok = msg(b'R', &0u32.to_be_bytes());
    ok.extend(msg(b'S', b"server_version\x0016\0"));
    ok.extend(msg(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]));
    ok.extend(msg(b'Z', b"I"));
    be_auth.truncate(be_auth.len());
    // Extended: prepare a named statement, then execute it twice pipelined.
    let mut prepare = msg(b'P', b"s1\0SELECT id FROM audit_logs WHERE user_id = $1 AND note = 'secret'\0\0\0");
    prepare.extend(msg(b'D', b"Ss1\0"));
    prepare.extend(msg(b'S', b""));
    let mut prepared = msg(b'1', b"");
    prepared.extend(msg(b't', &[0, 1, 0, 0, 0, 23]));
    prepared.extend(msg(b'T', &[0, 0]));
    prepared.extend(msg(b'Z', b"I"));
    let bind = |v: &[u8]| {
        let mut b = b"\0s1\0\0\0\0\x01".to_vec();
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v);
        b.extend_from_slice(&[0, 0]);
        b
    };
    let mut exec2 = msg(b'B', &bind(b"5"));
    exec2.extend(msg(b'E', b"\0\0\0\0\0"));
    exec2.extend(msg(b'B', &bind(b"6")));
    exec2.extend(msg(b'E', b"\0\0\0\0\0"));
    exec2.extend(msg(b'S', b""));
    let mut rows = msg(b'2', b"");
    rows.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
    rows.extend(msg(b'C', b"SELECT 1\0"));
    rows.extend(msg(b'2', b""));
    rows.extend(msg(b'C', b"SELECT 0\0"));
    rows.extend(msg(b'Z', b"I"));
    // Simple query failing with a unique violation.
    let q = msg(b'Q', b"INSERT INTO users (email) VALUES ('a@b.c')\0");
    let mut err =
        msg(b'E', b"SERROR\0VERROR\0C23505\0Mduplicate key value violates unique constraint \"users_email_key\"\0\0");
    err.extend(msg(b'Z', b"I"));
    vec![
        (Egress, startup()),
        (Ingress, be_auth),
        (Egress, msg(b'p', b"hunter2\0")),
        (Ingress, ok),
        (Egress, prepare),
        (Ingress, prepared),
        (Egress, exec2),
        (Ingress, rows),
        (Egress, q),
        (Ingress, err),
    ]
}

fn run_pg(chunks: &[(Direction, Vec<u8>)], split: usize) -> Vec<DbOp> {
    let mut p = PgParser::default();
    let mut ev = Vec::new();
    let mut t = 0;
    for (d, bytes) in chunks {
        for piece in bytes.chunks(split.max(1)) {
            t += 10;
            p.parse(*d, seg(piece, t), &mut ev);
        }
    }
    p.finish(&mut ev);
    let starts = ev.iter().filter(|e| matches!(e, OpEvent::Start(_))).count();
    let ops: Vec<DbOp> =
        ev.into_iter().filter_map(|e| if let OpEvent::Done(op) = e { Some(*op) } else { None }).collect();
    assert_eq!(starts, ops.len(), "every announced operation is reported");
    ops
}

#[test]
fn postgres_extended_and_simple_queries_however_split() {
    for split in [1, 2, 3, 7, 64, 100_000] {
        let ops = run_pg(&pg_conversation(), split);
        assert_eq!(ops.len(), 3, "split {split}: {ops:#?}");
        for op in &ops[..2] {
            assert_eq!(op.operation.as_deref(), Some("SELECT"));
            assert_eq!(op.collection.as_deref(), Some("audit_logs"));
            assert_eq!(op.namespace.as_deref(), Some("shop"));
            assert_eq!(op.query_text.as_deref(), Some("SELECT id FROM audit_logs WHERE user_id = $1 AND note = ?"));
            assert_eq!(op.span_name(), "SELECT audit_logs");
            assert!(op.reply.is_some() && op.status_code.is_none());
        }
        assert_eq!((ops[0].rows, ops[1].rows), (Some(1), Some(0)));
        assert_eq!(ops[2].span_name(), "INSERT users");
        assert_eq!(ops[2].status_code.as_deref(), Some("23505"));
        assert_eq!(ops[2].query_text.as_deref(), Some("INSERT INTO users (email) VALUES (?)"));
        assert_eq!(ops[2].error_type().as_deref(), Some("23505"));
        let all = format!("{ops:?}");
        assert!(!all.contains("hunter2") && !all.contains("secret") && !all.contains("a@b.c"), "{all}");
    }
}

#[test]
fn postgres_ssl_refused_then_startup_and_prepare_error() {
    let mut ssl = 8u32.to_be_bytes().to_vec();
    ssl.extend_from_slice(&80_877_103u32.to_be_bytes());
    assert!(super::postgres::detect(&ssl) && super::postgres::detect(&startup()));
    let mut prepare = msg(b'P', b"\0SELEC oops\0\0\0");
    prepare.extend(msg(b'S', b""));
    let mut err = msg(b'E', b"SERROR\0C42601\0Msyntax error\0\0");
    err.extend(msg(b'Z', b"I"));
    let chunks = vec![(Egress, ssl), (Ingress, b"N".to_vec()), (Egress, startup()), (Egress, prepare), (Ingress, err)];
    let ops = run_pg(&chunks, 1000);
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].status_code.as_deref(), Some("42601"));
    assert_eq!(ops[0].operation.as_deref(), Some("SELEC"));
}

#[test]
fn postgres_session_joined_midway_is_recognised_and_read() {
    let conv = pg_conversation();
    // From the prepared statement's first use on: the Parse is seen, the startup is not.
    let later: Vec<_> = conv[4..].to_vec();
    assert!(super::postgres::detect_midstream(&later[0].1) && super::postgres::detect_midstream(&later[2].1));
    assert!(
        !super::postgres::detect_midstream(b"POST / HTTP/1.1\r\n")
            && !super::postgres::detect_midstream(b"*1\r\n$4\r\nPING\r\n")
    );
    let mut p = PgParser::midstream();
    let mut ev = Vec::new();
    for (i, (d, b)) in later.iter().enumerate() {
        p.parse(*d, seg(b, i as u64), &mut ev);
    }
    let names: Vec<_> = ev
        .iter()
        .filter_map(|e| if let OpEvent::Done(op) = e { Some((op.span_name(), op.namespace.clone())) } else { None })
        .collect();
    assert_eq!(
        names,
        [
            ("SELECT audit_logs".to_owned(), None),
            ("SELECT audit_logs".to_owned(), None),
            ("INSERT users".to_owned(), None)
        ]
    );
}

/// Through the whole tracker: a pool connection opened before the agent came (announced as
/// existing) is read as PostgreSQL, not claimed by HTTP's lenient midstream parser.
#[test]
fn a_pool_connection_open_before_the_agent_is_read_as_postgres() {
    use crate::http::tests::script::{Script, run};
    let mut s = Script::opened(1, crate::events::OpenHow::Existing);
    for (d, b) in &pg_conversation()[4..] {
        s.data(*d, b, b.len() as u64, crate::events::Syscall::Write);
    }
    let (xs, stats) = run(&s.take());
    let names: Vec<_> = xs.iter().filter_map(|x| x.db.as_ref()).map(|op| op.span_name()).collect();
    assert_eq!(names, ["SELECT audit_logs", "SELECT audit_logs", "INSERT users"], "{xs:#?}");
    assert_eq!((stats.db_connections, stats.exchanges), (1, 0));
}

fn redis_conversation() -> Vec<(Direction, Vec<u8>)> {
    vec![
        (Egress, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n".to_vec()),
        (Ingress, b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n".to_vec()),
        // A pipeline: SET, GET, INCR on a string, then an error.
        (
            Egress,
            b"*3\r\n$3\r\nSET\r\n$7\r\nuser:42\r\n$6\r\nsecret\r\n*2\r\n$3\r\nGET\r\n$7\r\nuser:42\r\n*2\r\n$4\r\nINCR\r\n$7\r\nuser:42\r\n"
                .to_vec(),
        ),
        (Ingress, b"+OK\r\n$6\r\nsecret\r\n-ERR value is not an integer or out of range\r\n".to_vec()),
        (Egress, b"*1\r\n$4\r\nPING\r\n".to_vec()),
        (Ingress, b"|1\r\n+key-popularity\r\n%0\r\n+PONG\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n".to_vec()),
        (Egress, b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n".to_vec()),
        (Ingress, b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n".to_vec()),
    ]
}

fn run_redis(chunks: &[(Direction, Vec<u8>)], split: usize) -> (Vec<DbOp>, RedisParser) {
    let mut p = RedisParser::default();
    let mut ev = Vec::new();
    let mut t = 0;
    for (d, bytes) in chunks {
        for piece in bytes.chunks(split.max(1)) {
            t += 10;
            p.parse(*d, seg(piece, t), &mut ev);
        }
    }
    let ops = ev.into_iter().filter_map(|e| if let OpEvent::Done(op) = e { Some(*op) } else { None }).collect();
    (ops, p)
}

#[test]
fn redis_pipeline_errors_resp3_and_pubsub_however_split() {
    for split in [1, 2, 5, 13, 100_000] {
        let (ops, p) = run_redis(&redis_conversation(), split);
        let names: Vec<_> = ops.iter().map(|o| o.span_name()).collect();
        assert_eq!(names, ["HELLO", "SET", "GET", "INCR", "PING"], "split {split}");
        assert_eq!(ops[3].status_code.as_deref(), Some("ERR"));
        assert_eq!(ops[1].query_text.as_deref(), Some("SET ? ?"));
        assert!(ops.iter().all(|o| o.reply.is_some()));
        assert_eq!(p.unpaired_messages, 4, "push, subscribe command, its confirmation, a message");
        assert!(!format!("{ops:?}").contains("secret") && !format!("{ops:?}").contains("user:42"));
    }
    assert!(super::redis::detect(b"*1\r\n$4\r\nPING\r\n") && !super::redis::detect(b"GET / HTTP/1.1\r\n"));
}

#[test]
fn redis_keys_are_kept_only_when_asked() {
    let mut p = RedisParser::new(true);
    let mut ev = Vec::new();
    p.parse(Egress, seg(b"*3\r\n$3\r\nSET\r\n$7\r\nuser:42\r\n$6\r\nsecret\r\n", 1), &mut ev);
    p.parse(Ingress, seg(b"+OK\r\n", 2), &mut ev);
    let text: Vec<_> =
        ev.iter().filter_map(|e| if let OpEvent::Done(op) = e { op.query_text.clone() } else { None }).collect();
    assert_eq!(text, ["SET user:42 ?"]);
}

#[test]
fn redis_large_value_with_uncaptured_bytes_keeps_framing() {
    let mut p = RedisParser::default();
    let mut ev = Vec::new();
    p.parse(Egress, seg(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n", 1), &mut ev);
    p.parse(Ingress, seg(b"$100000\r\nabc", 2), &mut ev);
    let gap = Segment {
        kind: SegKind::Gap(100_000 - 3 + 2),
        pid: 7,
        tid: 8,
        start_ns: 3,
        end_ns: 4,
        task_ctx: 0,
        seq_end: None,
    };
    p.parse(Ingress, gap, &mut ev);
    p.parse(Ingress, seg(b"+PONG\r\n", 5), &mut ev);
    let done: Vec<_> =
        ev.iter().filter_map(|e| if let OpEvent::Done(op) = e { Some(op.span_name()) } else { None }).collect();
    assert_eq!(done, ["GET", "PING"]);
}

proptest! {
    #[test]
    fn arbitrary_bytes_and_splits_never_panic(
        chunks in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..24),
    ) {
        let mut pg = PgParser::default();
        let mut rd = RedisParser::default();
        let mut ev = Vec::new();
        // Start each parser past detection, as a real connection would.
        pg.parse(Egress, seg(&startup(), 0), &mut ev);
        for (i, (egress, bytes)) in chunks.iter().enumerate() {
            let d = if *egress { Egress } else { Ingress };
            pg.parse(d, seg(bytes, i as u64), &mut ev);
            rd.parse(d, seg(bytes, i as u64), &mut ev);
        }
        pg.finish(&mut ev);
        rd.finish(&mut ev);
    }

    #[test]
    fn real_conversations_cut_anywhere_give_the_same_operations(cuts in proptest::collection::vec(1usize..40, 1..8)) {
        let whole = run_pg(&pg_conversation(), 100_000);
        let mut p = PgParser::default();
        let mut ev = Vec::new();
        let mut t = 0;
        for (d, bytes) in pg_conversation() {
            let mut rest: &[u8] = &bytes;
            let mut k = 0;
            while !rest.is_empty() {
                let n = cuts[k % cuts.len()].min(rest.len());
                t += 10;
                p.parse(d, seg(&rest[..n], t), &mut ev);
                rest = &rest[n..];
                k += 1;
            }
        }
        p.finish(&mut ev);
        let names: Vec<_> = ev.iter().filter_map(|e| if let OpEvent::Done(op) = e { Some((op.span_name(), op.status_code.clone(), op.rows)) } else { None }).collect();
        let want: Vec<_> = whole.iter().map(|op| (op.span_name(), op.status_code.clone(), op.rows)).collect();
        prop_assert_eq!(names, want);
    }
}

#[test]
fn an_operation_is_a_client_span_named_per_the_conventions_with_its_line() {
    use crate::correlate::{SpanId, TraceId};
    use crate::http::{ConnInfo, RouteNormalizer, TraceContext, Tracked, WallClock};
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AV;

    let info = ConnInfo {
        conn_id: 9,
        service: "engine".into(),
        local: "127.0.0.1:40000".parse().ok(),
        peer: "127.0.0.1:5432".parse().ok(),
        ..ConnInfo::default()
    };
    let segs: Vec<(Direction, Segment)> =
        pg_conversation().into_iter().enumerate().map(|(i, (d, b))| (d, seg(&b, i as u64 * 100))).collect();
    let mut db = super::detect(&segs[..1], &super::DbOptions::default()).expect("PostgreSQL from its startup");
    let mut tracked = Vec::new();
    let routes = RouteNormalizer::new(&[]);
    for (d, s) in segs {
        db.feed(d, s, &info, &routes, &mut |t| tracked.push(t));
    }
    let announced = tracked.iter().filter(|t| matches!(t, Tracked::Request(_))).count();
    let mut exchanges: Vec<_> = tracked.into_iter().filter_map(Tracked::into_exchange).collect();
    assert_eq!((announced, exchanges.len()), (3, 3));
    let ex = &mut exchanges[2];
    ex.trace = Some(TraceContext {
        trace_id: TraceId([1; 16]),
        span_id: SpanId([2; 8]),
        parent: Some(SpanId([3; 8])),
        link: Some(crate::http::Link::Task),
        trace_state: None,
    });
    let clock = WallClock::default();
    let span = crate::spans::span(ex, &clock).expect("a span");
    let mut wire = Vec::new();
    assert!(crate::spans::encode_span(ex, &clock, &mut crate::spans::ConnRuns::default(), &mut wire));
    assert_eq!(wire, prost::Message::encode_to_vec(&span), "the export path's bytes are prost's");
    assert_eq!(span.name, "INSERT users");
    assert_eq!(span.kind, 3, "CLIENT");
    assert_eq!(span.parent_span_id, vec![3; 8]);
    let attr = |k: &str| {
        span.attributes.iter().find(|a| a.key == k).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            AV::StringValue(s) => Some(s.clone()),
            AV::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
    };
    assert_eq!(attr("db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(attr("db.namespace").as_deref(), Some("shop"));
    assert_eq!(attr("db.operation.name").as_deref(), Some("INSERT"));
    assert_eq!(attr("db.collection.name").as_deref(), Some("users"));
    assert_eq!(attr("db.query.text").as_deref(), Some("INSERT INTO users (email) VALUES (?)"));
    assert_eq!(attr("db.response.status_code").as_deref(), Some("23505"));
    assert_eq!(attr("error.type").as_deref(), Some("23505"));
    assert_eq!((attr("server.address").as_deref(), attr("server.port").as_deref()), (Some("127.0.0.1"), Some("5432")));
    assert_eq!(span.status.as_ref().map(|s| s.code), Some(2), "error status");
    let line: serde_json::Value = serde_json::from_str(&ex.to_json_line(&clock)).expect("JSON");
    assert_eq!(line["kind"], "operation");
    assert_eq!(line["status_code"], "23505");
    assert_eq!(line["parent_span_id"], "0303030303030303");
    assert_eq!(exchanges[0].db.as_ref().and_then(|d| d.rows), Some(1));
}
