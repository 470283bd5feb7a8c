//! The log join's rules on scripted writes and exchanges.

use super::*;
use crate::correlate::{SpanId, TraceId};
use crate::events::{Direction, Meta, Syscall};
use crate::http::TraceContext;
use crate::http::tests::script::{Script, get, one, run, status};

const PID: u32 = 7;

/// A server exchange of conn `conn` on thread `tid`, from `start` to `end`, its response
/// written by context `ctx`, its trace named by `conn`.
fn exchange(conn: u64, tid: u32, start: u64, end: u64, ctx: u64, code: u16) -> Box<Exchange> {
    let mut s = Script::accepted(conn);
    s.recv(&get("/x")).send(&status(code, "x"));
    let mut ex = one(&run(&s.take()).0).clone();
    (ex.pid, ex.tid, ex.response_tid, ex.request_seq) = (PID, tid, tid, 0);
    (ex.request_first_ns, ex.request_last_ns) = (start, start + 1);
    (ex.response_first_ns, ex.response_last_ns) = (Some(end - 1), Some(end));
    ex.response_ctx = ctx;
    ex.trace = Some(TraceContext {
        trace_id: TraceId([conn as u8; 16]),
        span_id: SpanId([conn as u8; 8]),
        parent: None,
        link: None,
        trace_state: None,
    });
    Box::new(ex)
}

fn seen(ex: &Exchange) -> RequestSeen {
    RequestSeen::of(ex)
}

fn write(tid: u32, ts: u64, ctx: u64, text: &str) -> Data {
    Data {
        meta: Meta { pid: PID, tid, service: None, ts_ns: ts },
        conn_id: 0,
        fd: 2,
        syscall: Syscall::Write,
        direction: Direction::Egress,
        enter_ns: ts,
        exit_ns: ts,
        ret: text.len() as i64,
        total_len: text.len() as u64,
        truncated: false,
        read_failed: false,
        no_payload: false,
        after_loss: false,
        payload: bytes::Bytes::copy_from_slice(text.as_bytes()),
        task_ctx: ctx,
        tcp_seq: None,
    }
}

/// (message, owner's trace byte or 0) of every record.
type Records = Vec<(String, u8)>;

/// The records, and (conn, exception type) of the exchanges.
fn outcome(outs: Vec<LogOut>) -> (Records, Vec<(u64, Option<String>)>) {
    let (mut records, mut exchanges) = (Vec::new(), Vec::new());
    for o in outs {
        match o {
            LogOut::Exchange(ex, _, recs) => {
                let t = ex.trace_id().map_or(0, |t| t.0[0]);
                records.extend(recs.into_iter().map(|r| (r.message, t)));
                exchanges.push((ex.conn_id, ex.exception.map(|e| e.kind)));
            }
            LogOut::Record(r, owner) => {
                let t = owner.and_then(|o| o.trace_id).map_or(0, |t| u8::from_str_radix(&t[..2], 16).unwrap());
                records.push((r.message, t));
            }
        }
    }
    records.sort();
    exchanges.sort();
    (records, exchanges)
}

#[test]
fn a_threaded_servers_thread_owns_its_records_and_a_third_thread_none() {
    let mut j = LogJoin::new(LogJoinConfig::default(), vec![]);
    let mut outs = Vec::new();
    let (a, b) = (exchange(1, 10, 100, 500, 0, 200), exchange(2, 11, 150, 600, 0, 200));
    j.request_seen(&seen(&a));
    j.request_seen(&seen(&b));
    j.write(&write(11, 300, 0, "INFO:app:b's\n"), &mut |o| outs.push(o));
    j.write(&write(12, 300, 0, "INFO:app:third thread\n"), &mut |o| outs.push(o));
    j.write(&write(10, 50, 0, "INFO:app:before any\n"), &mut |o| outs.push(o));
    j.tick(1_000_000_000, &mut |o| outs.push(o));
    j.exchange(a, None, &mut |o| outs.push(o));
    j.exchange(b, None, &mut |o| outs.push(o));
    j.finish(&mut |o| outs.push(o));
    let (records, _) = outcome(outs);
    assert_eq!(records, vec![("b's".into(), 2), ("before any".into(), 0), ("third thread".into(), 0)]);
    assert_eq!((j.stats.by_thread, j.stats.ambiguous, j.stats.outside), (1, 1, 1));
}

#[test]
fn a_thread_owns_what_it_writes_after_answering_until_it_reads_another_request() {
    const MS: u64 = 1_000_000;
    let mut j = LogJoin::new(LogJoinConfig::default(), vec![]);
    let mut outs = Vec::new();
    // Thread 10 answers a (100-500 ms), then reads c (from 1200 ms); thread 11 serves b
    // (150-2000 ms).
    let a = exchange(1, 10, 100 * MS, 500 * MS, 0, 200);
    let b = exchange(2, 11, 150 * MS, 2000 * MS, 0, 200);
    let c = exchange(3, 10, 1200 * MS, 1300 * MS, 0, 200);
    j.request_seen(&seen(&a));
    j.request_seen(&seen(&b));
    j.exchange(a, None, &mut |o| outs.push(o));
    // a's access line, after its response: b is the lone request in flight, not thread 10's.
    let access = "127.0.0.1 - - [03/Dec/2026:03:00:00 +0000] \"GET /a HTTP/1.1\" 200 1 \"-\" \"x\"";
    j.write(&write(10, 600 * MS, 0, &format!("{access}\n")), &mut |o| outs.push(o));
    // Thread 12 answered nothing: the lone-request rule gives it b.
    j.write(&write(12, 610 * MS, 0, "INFO:app:other thread\n"), &mut |o| outs.push(o));
    j.tick(1000 * MS, &mut |o| outs.push(o));
    // The access line is not decided yet (thread 10 might have begun reading another
    // request); the other thread's record waits for b's exchange.
    assert_eq!(j.backlog().1, 2);
    j.request_seen(&seen(&c));
    j.tick(1250 * MS, &mut |o| outs.push(o));
    assert_eq!(j.backlog().1, 1);
    j.exchange(c, None, &mut |o| outs.push(o));
    // A record with a runtime context never takes this rule (b is in flight, on thread 11).
    j.write(&write(10, 1400 * MS, 0x5, "INFO:app:in a task\n"), &mut |o| outs.push(o));
    j.exchange(b, None, &mut |o| outs.push(o));
    // c's access line, after c's and b's responses: decided at the end (force).
    j.write(&write(10, 2100 * MS, 0, "INFO:app:after c\n"), &mut |o| outs.push(o));
    j.finish(&mut |o| outs.push(o));
    let (records, _) = outcome(outs);
    assert_eq!(
        records,
        vec![(access.into(), 1), ("after c".into(), 3), ("in a task".into(), 0), ("other thread".into(), 2),]
    );
    assert_eq!(j.stats.after_answer, 2);
}

#[test]
fn an_asyncio_task_owns_its_records_and_its_traceback_reaches_the_exchange() {
    let mut j = LogJoin::new(LogJoinConfig::default(), vec![]);
    let mut outs = Vec::new();
    // One loop thread, two requests answered by tasks 0xA and 0xB; task 0xC is a child of 0xB.
    j.task(&TaskCreated {
        meta: Meta { pid: PID, tid: 10, service: None, ts_ns: 140 },
        parent_ctx: 1,
        child_ctx: 0xA,
        task: 0x7000, // a task object (0 would be a context copy)
        entry_ns: 139,
    });
    j.task(&TaskCreated {
        meta: Meta { pid: PID, tid: 10, service: None, ts_ns: 160 },
        parent_ctx: 1,
        child_ctx: 0xB,
        task: 0x7000, // a task object (0 would be a context copy)
        entry_ns: 159,
    });
    j.task(&TaskCreated {
        meta: Meta { pid: PID, tid: 10, service: None, ts_ns: 200 },
        parent_ctx: 0xB,
        child_ctx: 0xC,
        task: 0x7000, // a task object (0 would be a context copy)
        entry_ns: 199,
    });
    let (a, b) = (exchange(1, 10, 100, 500, 0xA, 200), exchange(2, 10, 150, 600, 0xB, 500));
    j.request_seen(&seen(&a));
    j.request_seen(&seen(&b));
    j.write(&write(10, 300, 0xC, "INFO:app:in b's child task\n"), &mut |o| outs.push(o));
    j.write(&write(10, 310, 0xA, "INFO:app:in a\n"), &mut |o| outs.push(o));
    j.write(&write(10, 320, 0xD, "INFO:app:unrelated task\n"), &mut |o| outs.push(o));
    j.exchange(a, None, &mut |o| outs.push(o));
    // After b's 500 went out, its task logs the traceback (uvicorn's order).
    j.exchange(b, None, &mut |o| outs.push(o));
    let tb = "ERROR:    Exception in ASGI application\nTraceback (most recent call last):\n  File \"a.py\", line 1\nValueError: boom\n";
    j.write(&write(10, 700, 0xB, tb), &mut |o| outs.push(o));
    j.write(&write(10, 800, 0xB, "INFO:app:next\n"), &mut |o| outs.push(o));
    j.finish(&mut |o| outs.push(o));
    let (records, exchanges) = outcome(outs);
    assert_eq!(
        records,
        vec![
            ("Exception in ASGI application\nTraceback (most recent call last):\n  File \"a.py\", line 1\nValueError: boom".into(), 2),
            ("in a".into(), 1),
            ("in b's child task".into(), 2),
            ("next".into(), 2),
            ("unrelated task".into(), 0),
        ]
    );
    assert_eq!(exchanges, vec![(1, None), (2, Some("ValueError".into()))]);
    assert_eq!((j.stats.by_task, j.stats.after_answer, j.stats.ambiguous), (2, 2, 1));
}

#[test]
fn a_context_on_another_thread_at_a_finished_tasks_address_is_not_that_task() {
    let mut j = LogJoin::new(LogJoinConfig::default(), vec![]);
    let mut outs = Vec::new();
    j.task(&TaskCreated {
        meta: Meta { pid: PID, tid: 10, service: None, ts_ns: 140 },
        parent_ctx: 1,
        child_ctx: 0xA,
        task: 0x7000, // a task object (0 would be a context copy)
        entry_ns: 139,
    });
    let a = exchange(1, 10, 100, 500, 0xA, 200);
    j.request_seen(&seen(&a));
    j.exchange(a, None, &mut |o| outs.push(o));
    // After a's answer: its task on the loop thread (after-answer), and a thread-pool
    // thread whose copied context sits at 0xA's freed address (nothing).
    j.write(&write(10, 600, 0xA, "INFO:app:a's task\n"), &mut |o| outs.push(o));
    j.write(&write(20, 700, 0xA, "INFO:app:pool thread\n"), &mut |o| outs.push(o));
    j.finish(&mut |o| outs.push(o));
    let (records, _) = outcome(outs);
    assert_eq!(records, vec![("a's task".into(), 1), ("pool thread".into(), 0)]);
}
