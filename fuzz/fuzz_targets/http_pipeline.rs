//! The HTTP/1 pipeline on arbitrary bytes in arbitrary splits, both directions.
//!
//! Input: one header byte, then pieces separated by `\xff\xfe`; each piece after the first
//! starts with a control byte (the first piece is the process receiving, control 0).
//! Header: bits 0-1 how the connection opened (unseen, accepted, connected, existing before
//! the agent), bit 2 TLS (plaintext from the OpenSSL probes, each tied to a ciphertext
//! record on the socket), bit 3 a datagram socket, bits 4-5 the syscalls used.
//! Control: bit 0 the process sends (else receives), bit 1 bytes were lost before it
//! (`after_loss`), bit 2 more moved than was captured, bit 3 the connection closes and a new
//! one with the same id opens first, bit 4 three seconds pass (expiry, holds), bit 5 the
//! read after it is an end of stream, bit 6 a sendfile (length only), bit 7 it goes to a
//! second connection (interleaved, the other role).

#![no_main]

mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use traceo_agent::events::{Conn, Data, Direction, Event, Family, Meta, OpenHow, Proc, Syscall};

const PID: u32 = 4242;
const STEP_NS: u64 = 10_000;

struct Gen {
    now: u64,
    tls: bool,
    sock_type: u16,
    syscalls: (Syscall, Syscall),
}

impl Gen {
    fn meta(&mut self) -> Meta {
        self.now += STEP_NS;
        Meta { pid: PID, tid: PID + 1, service: Some(0), ts_ns: self.now }
    }

    fn conn(&mut self, conn_id: u64, how: Option<OpenHow>, after_loss: bool) -> Conn {
        let (local, peer) = match how {
            Some(OpenHow::Connected) => ("10.0.0.2:51000", "10.0.0.1:8080"),
            _ => ("10.0.0.1:8080", "10.0.0.2:51000"),
        };
        Conn {
            meta: self.meta(),
            conn_id,
            fd: conn_id as i32,
            how,
            family: Family::Inet,
            sock_type: self.sock_type,
            local: how.map(|_| local.parse().expect("address")),
            peer: how.map(|_| peer.parse().expect("address")),
            comm: "svc".into(),
            ret: 0,
            after_loss,
            task_ctx: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        conn_id: u64,
        dir: Direction,
        syscall: Syscall,
        payload: &[u8],
        extra: u64,
        loss: bool,
    ) -> Event {
        let meta = self.meta();
        let total_len = payload.len() as u64 + extra;
        // Sequence numbers near the wrap, on some events only (they may disagree with the lengths).
        let tcp_seq = (!conn_id.is_multiple_of(3)).then_some((meta.ts_ns as u32) ^ 0xffff_ff00);
        Event::Data(Data {
            enter_ns: meta.ts_ns - 1_000,
            exit_ns: meta.ts_ns,
            meta,
            conn_id,
            fd: conn_id as i32,
            syscall,
            direction: dir,
            ret: total_len as i64,
            total_len,
            truncated: extra > 0,
            read_failed: false,
            no_payload: syscall == Syscall::Sendfile,
            after_loss: loss,
            payload: if syscall == Syscall::Sendfile { Bytes::new() } else { Bytes::copy_from_slice(payload) },
            task_ctx: 0,
            tcp_seq,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&header, rest)) = data.split_first() else { return };
    let how =
        [None, Some(OpenHow::Accepted), Some(OpenHow::Connected), Some(OpenHow::Existing)][usize::from(header & 3)];
    let syscalls = [
        (Syscall::Recvfrom, Syscall::Sendto),
        (Syscall::Read, Syscall::Write),
        (Syscall::Readv, Syscall::Writev),
        (Syscall::Recvmsg, Syscall::Sendmsg),
    ][usize::from(header >> 4 & 3)];
    let mut g =
        Gen { now: 1_000_000_000, tls: header & 4 != 0, sock_type: if header & 8 != 0 { 2 } else { 1 }, syscalls };
    let mut pipeline = common::Pipeline::new(8);
    let mut events = Vec::new();
    // Connection 1 in the role the header says; connection 2 in the other.
    if let Some(how) = how {
        events.push(Event::ConnOpen(g.conn(1, Some(how), false)));
        let other = if how == OpenHow::Connected { OpenHow::Accepted } else { OpenHow::Connected };
        events.push(Event::ConnOpen(g.conn(2, Some(other), false)));
    }
    for (i, piece) in common::pieces(rest).into_iter().enumerate() {
        let (ctl, payload) = match (i, piece.split_first()) {
            (0, _) => (0u8, piece),
            (_, Some((&c, p))) => (c, p),
            (_, None) => continue,
        };
        let conn_id = if ctl & 0x80 != 0 { 2 } else { 1 };
        if ctl & 0x08 != 0 {
            events.push(Event::ConnClose(g.conn(conn_id, None, ctl & 0x02 != 0)));
            events.push(Event::ConnOpen(g.conn(conn_id, how.or(Some(OpenHow::Accepted)), false)));
        }
        let dir = if ctl & 1 != 0 { Direction::Egress } else { Direction::Ingress };
        let extra = if ctl & 0x04 != 0 { u64::from(payload.first().copied().unwrap_or(7)) * 97 } else { 0 };
        let loss = ctl & 0x02 != 0;
        if ctl & 0x40 != 0 {
            events.push(g.data(conn_id, Direction::Egress, Syscall::Sendfile, payload, payload.len() as u64, loss));
        } else if g.tls {
            // The ciphertext record on the socket, then the plaintext from the SSL call.
            let mut record = vec![0x17, 0x03, 0x03];
            record.extend_from_slice(&(payload.len().min(0xffff) as u16).to_be_bytes());
            record.extend_from_slice(&payload[..payload.len().min(64)]);
            let (sock, ssl) = if dir == Direction::Egress {
                (g.syscalls.1, Syscall::SslWrite)
            } else {
                (g.syscalls.0, Syscall::SslRead)
            };
            let ssl_ptr = 0x5500_0000_0000 + conn_id;
            if dir == Direction::Ingress {
                events.push(g.data(conn_id, dir, sock, &record, 0, loss));
                events.push(g.data(ssl_ptr, dir, ssl, payload, extra, false));
            } else {
                events.push(g.data(ssl_ptr, dir, ssl, payload, extra, false));
                events.push(g.data(conn_id, dir, sock, &record, 0, loss));
            }
        } else {
            let syscall = if dir == Direction::Egress { g.syscalls.1 } else { g.syscalls.0 };
            events.push(g.data(conn_id, dir, syscall, payload, extra, loss));
        }
        if ctl & 0x20 != 0 {
            events.push(g.data(conn_id, Direction::Ingress, g.syscalls.0, b"", 0, false));
        }
        for ev in events.drain(..) {
            pipeline.event(&ev);
        }
        if ctl & 0x10 != 0 {
            g.now += 3_000_000_000;
            pipeline.tick(g.now);
        }
    }
    events.push(Event::Exit(Proc { meta: g.meta(), parent_pid: None, comm: "svc".into() }));
    for ev in events.drain(..) {
        pipeline.event(&ev);
    }
    g.now += 200_000_000_000;
    pipeline.tick(g.now);
    pipeline.finish();
});
