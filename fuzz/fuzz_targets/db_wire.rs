//! The database wire parsers (PostgreSQL frontend/backend protocol, Redis RESP) on arbitrary
//! byte streams, cut at arbitrary points, with gaps and ends of stream.
//!
//! Input: one flag byte, then pieces separated by `\xff\xfe`. Flags: bits 0-1 the parser
//! (PostgreSQL from the startup, PostgreSQL joined midstream, Redis, Redis keeping keys).
//! Each piece starts with a control byte: bit 0 the direction (0 the client's bytes, 1 the
//! server's), bit 1 the piece is a gap of its length instead of bytes, bit 2 an end of
//! stream follows it. Every operation reported must be well-formed: a span name, an error
//! type, and no query text longer than the parser's bound.

#![no_main]

mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use traceo_agent::db::{OpEvent, postgres::PgParser, redis::RedisParser, sql};
use traceo_agent::events::Direction;
use traceo_agent::http::{SegKind, Segment};

enum Parser {
    Pg(Box<PgParser>),
    Redis(Box<RedisParser>),
}

impl Parser {
    fn parse(&mut self, dir: Direction, seg: Segment, out: &mut Vec<OpEvent>) {
        match self {
            Parser::Pg(p) => p.parse(dir, seg, out),
            Parser::Redis(p) => p.parse(dir, seg, out),
        }
    }
}

fn check(events: &mut Vec<OpEvent>) {
    for e in events.drain(..) {
        if let OpEvent::Done(op) = e {
            assert!(!op.span_name().is_empty());
            let _ = op.error_type();
            if let Some(q) = &op.query_text {
                // Sanitised text is cut near MAX_QUERY_CHARS (a few bytes over: a whole
                // character and an ellipsis).
                assert!(q.len() <= sql::MAX_QUERY_CHARS + 16, "query text of {} bytes", q.len());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut parser = match flags & 3 {
        0 => Parser::Pg(Box::default()),
        1 => Parser::Pg(Box::new(PgParser::midstream())),
        2 => Parser::Redis(Box::new(RedisParser::new(false))),
        _ => Parser::Redis(Box::new(RedisParser::new(true))),
    };
    let mut events = Vec::new();
    let mut t = 1_000u64;
    for piece in common::pieces(rest) {
        let Some((&ctl, bytes)) = piece.split_first() else { continue };
        let dir = if ctl & 1 == 0 { Direction::Egress } else { Direction::Ingress };
        let kind = if ctl & 2 != 0 {
            SegKind::Gap(bytes.len() as u64 * 997)
        } else {
            SegKind::Bytes(Bytes::copy_from_slice(bytes))
        };
        t += 1_000;
        parser.parse(
            dir,
            Segment { kind, pid: 1, tid: 1, start_ns: t, end_ns: t + 10, task_ctx: 0, seq_end: None },
            &mut events,
        );
        if ctl & 4 != 0 {
            t += 1_000;
            let eof =
                Segment { kind: SegKind::Eof, pid: 1, tid: 1, start_ns: t, end_ns: t, task_ctx: 0, seq_end: None };
            parser.parse(dir, eof, &mut events);
        }
        check(&mut events);
    }
    match &mut parser {
        Parser::Pg(p) => p.finish(&mut events),
        Parser::Redis(p) => p.finish(&mut events),
    }
    check(&mut events);
});
