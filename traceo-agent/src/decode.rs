//! Kernel wire types -> agent events. The only place that knows the ring buffer layout.
//!
//! Payloads are copied into a shared arena (`BytesMut`), so decoding allocates once per
//! arena chunk, not once per event.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use traceo_ebpf_common::{
    self as wire, ConnEvent, DATA_EVENT_HEADER_LEN, EventHeader, NO_SERVICE, ProcEvent, TaskEvent, data_flags,
    direction, family, kind, open_how,
};

use crate::events::{Conn, Data, Direction, Event, Family, Meta, OpenHow, Proc, Syscall, TaskCreated};

/// Why a ring buffer record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its kind requires.
    Short,
    /// A kind, syscall, direction or flag this agent does not know.
    Unknown,
}

impl DecodeError {
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::Short => "short",
            DecodeError::Unknown => "unknown",
        }
    }
}

/// Decodes records, copying payloads into a reusable arena.
pub struct Decoder {
    arena: BytesMut,
}

const ARENA_CHUNK: usize = 1 << 20;

impl Default for Decoder {
    fn default() -> Self {
        Decoder { arena: BytesMut::with_capacity(ARENA_CHUNK) }
    }
}

fn read<T: Copy>(raw: &[u8]) -> Result<T, DecodeError> {
    if raw.len() < size_of::<T>() {
        return Err(DecodeError::Short);
    }
    // SAFETY: length checked; T is a repr(C) wire type valid for any bit pattern;
    // read_unaligned because ring buffer records are only 8-byte aligned by convention.
    Ok(unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<T>()) })
}

fn comm(raw: &[u8; wire::COMM_LEN]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn meta(h: &EventHeader) -> Meta {
    Meta { pid: h.pid, tid: h.tid, service: (h.service != NO_SERVICE).then_some(h.service), ts_ns: h.ts_ns }
}

fn address(fam: u16, addr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match fam {
        family::INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        family::INET6 => IpAddr::V6(Ipv6Addr::from(*addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn syscall_of(id: u16) -> Result<Syscall, DecodeError> {
    Syscall::from_code(id).ok_or(DecodeError::Unknown)
}

impl Decoder {
    /// Decode one ring buffer record.
    pub fn decode(&mut self, raw: &[u8]) -> Result<Event, DecodeError> {
        let header: EventHeader = read(raw)?;
        match header.kind {
            kind::DATA => self.data(raw),
            kind::LOG_WRITE => match self.data(raw)? {
                Event::Data(d) => Ok(Event::LogWrite(d)),
                _ => Err(DecodeError::Unknown),
            },
            kind::CONN_OPEN | kind::CONN_CLOSE | kind::LISTEN => {
                let ev: ConnEvent = read(raw)?;
                let conn = conn(&ev)?;
                Ok(match header.kind {
                    kind::CONN_OPEN => Event::ConnOpen(conn),
                    kind::CONN_CLOSE => Event::ConnClose(conn),
                    _ => Event::Listen(conn),
                })
            }
            kind::PROC_EXEC | kind::PROC_FORK | kind::PROC_EXIT => {
                let ev: ProcEvent = read(raw)?;
                let proc = Proc {
                    meta: meta(&ev.header),
                    parent_pid: (header.kind == kind::PROC_FORK).then_some(ev.parent_pid),
                    comm: comm(&ev.comm),
                };
                Ok(match header.kind {
                    kind::PROC_EXEC => Event::Exec(proc),
                    kind::PROC_FORK => Event::Fork(proc),
                    _ => Event::Exit(proc),
                })
            }
            kind::TASK_CREATED => {
                let ev: TaskEvent = read(raw)?;
                Ok(Event::Task(TaskCreated {
                    meta: meta(&ev.header),
                    parent_ctx: ev.parent_ctx,
                    child_ctx: ev.child_ctx,
                    task: ev.task,
                    entry_ns: ev.entry_ns,
                }))
            }
            _ => Err(DecodeError::Unknown),
        }
    }

    fn data(&mut self, raw: &[u8]) -> Result<Event, DecodeError> {
        if raw.len() < DATA_EVENT_HEADER_LEN {
            return Err(DecodeError::Short);
        }
        let fixed = &raw[..DATA_EVENT_HEADER_LEN];
        let header: EventHeader = read(fixed)?;
        // Field offsets within the fixed part, from the wire type itself.
        macro_rules! field {
            ($name:ident, $ty:ty) => {
                read::<$ty>(&fixed[std::mem::offset_of!(wire::DataEvent, $name)..])?
            };
        }
        let captured = field!(captured, u32) as usize;
        let payload = raw.get(DATA_EVENT_HEADER_LEN..DATA_EVENT_HEADER_LEN + captured).ok_or(DecodeError::Short)?;
        let flags = field!(flags, u8);
        let dir = match field!(direction, u8) {
            direction::EGRESS => Direction::Egress,
            direction::INGRESS => Direction::Ingress,
            _ => return Err(DecodeError::Unknown),
        };
        Ok(Event::Data(Data {
            meta: meta(&header),
            conn_id: field!(conn_id, u64),
            fd: field!(fd, i32),
            syscall: syscall_of(field!(syscall, u16))?,
            direction: dir,
            enter_ns: field!(enter_ns, u64),
            exit_ns: field!(exit_ns, u64),
            ret: field!(ret, i64),
            total_len: field!(total_len, u64),
            truncated: flags & data_flags::TRUNCATED != 0,
            read_failed: flags & data_flags::READ_FAILED != 0,
            no_payload: flags & data_flags::NO_PAYLOAD != 0,
            // An egress call whose start is unknown cannot be ordered against its peer's
            // read: handled as after a loss (the connection resynchronises, nothing guessed).
            after_loss: flags & (data_flags::AFTER_LOSS | data_flags::NO_ENTRY_TIME) != 0,
            payload: self.copy(payload),
            task_ctx: field!(task_ctx, u64),
            tcp_seq: if flags & data_flags::TCP_SEQ != 0 { Some(field!(tcp_seq, u32)) } else { None },
        }))
    }

    /// Copy into the arena: one allocation per chunk, shared by many payloads.
    pub fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.is_empty() {
            return Bytes::new();
        }
        if self.arena.capacity() - self.arena.len() < bytes.len() {
            self.arena = BytesMut::with_capacity(ARENA_CHUNK.max(bytes.len()));
        }
        self.arena.extend_from_slice(bytes);
        self.arena.split().freeze()
    }
}

fn conn(ev: &ConnEvent) -> Result<Conn, DecodeError> {
    let how = match ev.how {
        0 => None,
        open_how::ACCEPTED => Some(OpenHow::Accepted),
        open_how::CONNECTED => Some(OpenHow::Connected),
        open_how::EXISTING => Some(OpenHow::Existing),
        _ => return Err(DecodeError::Unknown),
    };
    let fam = match ev.family {
        family::INET => Family::Inet,
        family::INET6 => Family::Inet6,
        family::UNIX => Family::Unix,
        other => Family::Other(other),
    };
    Ok(Conn {
        meta: meta(&ev.header),
        conn_id: ev.conn_id,
        fd: ev.fd,
        how,
        family: fam,
        sock_type: ev.sock_type,
        local: address(ev.family, &ev.local_addr, ev.local_port),
        peer: address(ev.family, &ev.peer_addr, ev.peer_port),
        comm: comm(&ev.comm),
        ret: ev.ret,
        after_loss: ev.flags & traceo_ebpf_common::data_flags::AFTER_LOSS != 0,
        task_ctx: ev.task_ctx,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use traceo_ebpf_common::syscall;

    /// The bytes the kernel would send for a DataEvent with `payload`.
    pub(crate) fn raw_data(payload: &[u8], dir: u8, sc: u16, flags: u8) -> Vec<u8> {
        let mut ev: wire::DataEvent = unsafe { std::mem::zeroed() };
        ev.header = EventHeader { kind: kind::DATA, pid: 42, tid: 43, service: 0, ts_ns: 1_000 };
        ev.conn_id = 777;
        ev.enter_ns = 900;
        ev.exit_ns = 1_000;
        ev.ret = payload.len() as i64;
        ev.total_len = payload.len() as u64;
        ev.fd = 5;
        ev.captured = payload.len() as u32;
        ev.syscall = sc;
        ev.direction = dir;
        ev.flags = flags;
        ev.data[..payload.len()].copy_from_slice(payload);
        // SAFETY: reading the plain-data struct as bytes.
        let all = unsafe {
            std::slice::from_raw_parts((&ev as *const wire::DataEvent).cast::<u8>(), size_of::<wire::DataEvent>())
        };
        all[..DATA_EVENT_HEADER_LEN + payload.len()].to_vec()
    }

    fn raw_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: plain-data wire struct viewed as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn data_event_round_trip() {
        let raw = raw_data(b"GET / HTTP/1.1\r\n\r\n", direction::INGRESS, syscall::RECVFROM, data_flags::TRUNCATED);
        let Event::Data(d) = Decoder::default().decode(&raw).expect("decodes") else { panic!("not data") };
        assert_eq!(d.meta, Meta { pid: 42, tid: 43, service: Some(0), ts_ns: 1_000 });
        assert_eq!((d.conn_id, d.fd, d.enter_ns, d.exit_ns), (777, 5, 900, 1_000));
        assert_eq!(d.syscall, Syscall::Recvfrom);
        assert_eq!(d.direction, Direction::Ingress);
        assert!(d.truncated && !d.no_payload && !d.read_failed);
        assert_eq!(&d.payload[..], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_send_whose_start_is_unknown_resynchronises_its_connection() {
        let send = |flags| {
            let raw = raw_data(b"GET / HTTP/1.1\r\n\r\n", direction::EGRESS, syscall::WRITE, flags);
            let Event::Data(d) = Decoder::default().decode(&raw).expect("decodes") else { panic!("not data") };
            d.after_loss
        };
        assert!(!send(0));
        assert!(send(data_flags::NO_ENTRY_TIME), "handled as after a loss: never paired on a guessed start");
        assert!(send(data_flags::AFTER_LOSS));
    }

    #[test]
    fn log_write_round_trip() {
        let mut raw = raw_data(b"INFO:app:hello\n", direction::EGRESS, syscall::WRITE, 0);
        raw[..4].copy_from_slice(&kind::LOG_WRITE.to_le_bytes());
        let Event::LogWrite(d) = Decoder::default().decode(&raw).expect("decodes") else { panic!("not a log write") };
        assert_eq!((d.meta.pid, d.meta.tid, d.fd), (42, 43, 5));
        assert_eq!(&d.payload[..], b"INFO:app:hello\n");
    }

    #[test]
    fn conn_event_round_trip_ipv4_and_ipv6() {
        let mut ev = ConnEvent {
            header: EventHeader { kind: kind::CONN_OPEN, pid: 1, tid: 2, service: NO_SERVICE, ts_ns: 3 },
            conn_id: 99,
            family: family::INET,
            sock_type: 1,
            local_port: 8000,
            peer_port: 51000,
            how: open_how::ACCEPTED,
            ..ConnEvent::default()
        };
        ev.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.peer_addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        ev.comm[..7].copy_from_slice(b"uvicorn");
        let Event::ConnOpen(c) = Decoder::default().decode(&raw_of(&ev)).expect("decodes") else { panic!() };
        assert_eq!(c.meta.service, None);
        assert_eq!(c.how, Some(OpenHow::Accepted));
        assert_eq!(c.local, Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(c.peer, Some("10.1.2.3:51000".parse().unwrap()));
        assert_eq!(c.comm, "uvicorn");

        ev.header.kind = kind::CONN_CLOSE;
        ev.how = 0;
        ev.family = family::INET6;
        ev.local_addr = Ipv6Addr::LOCALHOST.octets();
        let Event::ConnClose(c) = Decoder::default().decode(&raw_of(&ev)).expect("decodes") else { panic!() };
        assert_eq!(c.how, None);
        assert_eq!(c.local, Some("[::1]:8000".parse().unwrap()));
    }

    #[test]
    fn proc_events_round_trip() {
        let ev = ProcEvent {
            header: EventHeader { kind: kind::PROC_FORK, pid: 10, tid: 10, service: 1, ts_ns: 5 },
            parent_pid: 9,
            _pad: 0,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        };
        let Event::Fork(p) = Decoder::default().decode(&raw_of(&ev)).expect("decodes") else { panic!() };
        assert_eq!((p.meta.pid, p.parent_pid, p.comm.as_str()), (10, Some(9), "python3"));
    }

    #[test]
    fn short_and_unknown_records_are_errors_not_panics() {
        let raw = raw_data(b"hello", direction::EGRESS, syscall::WRITE, 0);
        let mut dec = Decoder::default();
        for cut in 0..raw.len() {
            assert!(dec.decode(&raw[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        let mut bad = raw.clone();
        bad[0] = 200;
        assert_eq!(dec.decode(&bad), Err(DecodeError::Unknown));
        let bad_dir = raw_data(b"x", 9, syscall::WRITE, 0);
        assert_eq!(dec.decode(&bad_dir), Err(DecodeError::Unknown));
    }

    #[test]
    fn arena_payloads_stay_independent() {
        let mut dec = Decoder::default();
        let a = dec.copy(b"first");
        let b = dec.copy(b"second");
        let big = dec.copy(&vec![7u8; ARENA_CHUNK + 10]);
        assert_eq!((&a[..], &b[..], big.len()), (&b"first"[..], &b"second"[..], ARENA_CHUNK + 10));
    }
}
