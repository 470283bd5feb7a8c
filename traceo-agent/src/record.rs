//! Record files: decoded events on disk, so the whole pipeline can be replayed without root.
//!
//! Format (all integers little-endian), documented in README.md ("Record files"):
//! ```text
//! magic    8 bytes  "TRACEORC"
//! version  u16      FORMAT_VERSION; readers accept every version up to their own
//! meta_len u32      then meta_len bytes of JSON (RecordMeta)
//! records  { len u32, tag u8, body (len - 1 bytes), crc u32 }*   until end of file
//! ```
//! `crc` (version 2 on) is the CRC-32 of tag and body: a flipped byte is reported with its
//! offset, never replayed as an event.
//! Tags and bodies are listed at `encode`. A truncated last record (a recorder killed
//! mid-write) is reported and ignored; anything else malformed is an error naming the offset.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    net::{IpAddr, SocketAddr},
    path::Path,
};

use std::os::unix::fs::OpenOptionsExt as _;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::events::{Conn, Data, Direction, Event, Family, Meta, OpenHow, Proc, Syscall, TaskCreated};

pub const MAGIC: &[u8; 8] = b"TRACEORC";
/// 2: data and connection bodies end with the task context; task-creation records; a CRC-32
/// after each record.
pub const FORMAT_VERSION: u16 = 2;
/// Larger records are corruption, not data (a data event carries at most 16 KiB).
const MAX_RECORD: usize = 1 << 20;

/// What a record file says about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordMeta {
    pub agent_version: String,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC (ns) when recording began: event timestamps
    /// plus this are wall-clock nanoseconds since the Unix epoch.
    pub clock_offset_ns: i64,
    pub hostname: String,
    pub capture_bytes: u32,
    /// `--service` names by index.
    pub services: Vec<String>,
}

const TAG_DATA: u8 = 1;
const TAG_CONN_OPEN: u8 = 2;
const TAG_CONN_CLOSE: u8 = 3;
const TAG_EXEC: u8 = 4;
const TAG_FORK: u8 = 5;
const TAG_EXIT: u8 = 6;
const TAG_TASK: u8 = 7;
const TAG_LISTEN: u8 = 8;
/// A log write: the body of a data record.
const TAG_LOG_WRITE: u8 = 9;

pub struct RecordWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    pub events: u64,
    pub bytes: u64,
}

impl RecordWriter<BufWriter<File>> {
    pub fn create(path: &Path, meta: &RecordMeta) -> anyhow::Result<Self> {
        // Owner-only: a record holds traffic (secrets are masked, but the rest is private too).
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create record file {}", path.display()))?;
        RecordWriter::new(BufWriter::with_capacity(1 << 20, file), meta)
    }
}

impl<W: Write> RecordWriter<W> {
    pub fn new(mut out: W, meta: &RecordMeta) -> anyhow::Result<Self> {
        let json = serde_json::to_vec(meta)?;
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&(json.len() as u32).to_le_bytes())?;
        out.write_all(&json)?;
        Ok(RecordWriter { out, buf: Vec::with_capacity(32 * 1024), events: 0, bytes: 0 })
    }

    pub fn write(&mut self, event: &Event) -> anyhow::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        encode(event, &mut self.buf);
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[4..]);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.buf).context("writing record file")?;
        self.events += 1;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Push what is buffered to the file (the recorder does it every second, so a recorder
    /// killed with -9 leaves a file that replays up to its last second).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("flushing record file")
    }

    pub fn finish(mut self) -> anyhow::Result<W> {
        self.out.flush().context("flushing record file")?;
        Ok(self.out)
    }
}

fn put_meta(m: &Meta, b: &mut Vec<u8>) {
    b.extend_from_slice(&m.pid.to_le_bytes());
    b.extend_from_slice(&m.tid.to_le_bytes());
    b.extend_from_slice(&m.service.unwrap_or(u32::MAX).to_le_bytes());
    b.extend_from_slice(&m.ts_ns.to_le_bytes());
}

fn put_str(s: &str, b: &mut Vec<u8>) {
    let s = &s.as_bytes()[..s.len().min(255)];
    b.push(s.len() as u8);
    b.extend_from_slice(s);
}

/// Address: 0 = none, 4 = IPv4 (4 bytes), 6 = IPv6 (16 bytes), then the port (u16).
fn put_addr(a: &Option<SocketAddr>, b: &mut Vec<u8>) {
    match a {
        None => b.push(0),
        Some(SocketAddr::V4(v4)) => {
            b.push(4);
            b.extend_from_slice(&v4.ip().octets());
            b.extend_from_slice(&v4.port().to_le_bytes());
        }
        Some(SocketAddr::V6(v6)) => {
            b.push(6);
            b.extend_from_slice(&v6.ip().octets());
            b.extend_from_slice(&v6.port().to_le_bytes());
        }
    }
}

fn family_code(f: Family) -> u16 {
    match f {
        Family::Unix => 1,
        Family::Inet => 2,
        Family::Inet6 => 10,
        Family::Other(n) => n,
    }
}

/// Bodies: Data = meta, conn_id u64, fd i32, syscall u8 (its `Syscall` code),
/// direction u8 (1 egress, 2 ingress), flags u8 (1 truncated, 2 read_failed, 4 no_payload,
/// 8 after_loss),
/// enter_ns u64, exit_ns u64, ret i64, total_len u64, payload_len u32, payload.
/// Conn = meta, conn_id u64, fd i32, how u8 (0 close, 1 accepted, 2 connected, 3 existing),
/// family u16, sock_type u16, local addr, peer addr, comm str, ret i64.
/// Proc = meta, parent_pid u32 (0 = none), comm str.
/// Version 2: Data and Conn end with task_ctx u64 (Conn then after_loss u8); Listen is a
/// Conn body; Task = meta, parent_ctx u64, child_ctx u64, task u64, then entry_ns u64 (added
/// later: a body without it was entered when it returned). Data then ends with tcp_seq u32
/// when the kernel read one (added later: a body without it has none).
fn encode(event: &Event, b: &mut Vec<u8>) {
    match event {
        Event::Data(d) | Event::LogWrite(d) => {
            b.push(if matches!(event, Event::LogWrite(_)) { TAG_LOG_WRITE } else { TAG_DATA });
            put_meta(&d.meta, b);
            b.extend_from_slice(&d.conn_id.to_le_bytes());
            b.extend_from_slice(&d.fd.to_le_bytes());
            let sc = d.syscall.code() as u8;
            b.push(sc);
            b.push(if d.direction == Direction::Egress { 1 } else { 2 });
            b.push(
                d.truncated as u8 | (d.read_failed as u8) << 1 | (d.no_payload as u8) << 2 | (d.after_loss as u8) << 3,
            );
            for v in [d.enter_ns, d.exit_ns, d.ret as u64, d.total_len] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            // Secrets never reach the disk (masked in place: lengths and framing unchanged).
            let payload = if matches!(event, Event::LogWrite(_)) {
                crate::logs::redact::scrub_log(&d.payload)
            } else {
                crate::scrub::scrub(&d.payload)
            };
            b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            b.extend_from_slice(&payload);
            b.extend_from_slice(&d.task_ctx.to_le_bytes());
            if let Some(seq) = d.tcp_seq {
                b.extend_from_slice(&seq.to_le_bytes());
            }
        }
        Event::Task(t) => {
            b.push(TAG_TASK);
            put_meta(&t.meta, b);
            for v in [t.parent_ctx, t.child_ctx, t.task, t.entry_ns] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        Event::ConnOpen(c) | Event::ConnClose(c) | Event::Listen(c) => {
            b.push(match event {
                Event::ConnOpen(_) => TAG_CONN_OPEN,
                Event::ConnClose(_) => TAG_CONN_CLOSE,
                _ => TAG_LISTEN,
            });
            put_meta(&c.meta, b);
            b.extend_from_slice(&c.conn_id.to_le_bytes());
            b.extend_from_slice(&c.fd.to_le_bytes());
            b.push(match c.how {
                None => 0,
                Some(OpenHow::Accepted) => 1,
                Some(OpenHow::Connected) => 2,
                Some(OpenHow::Existing) => 3,
            });
            b.extend_from_slice(&family_code(c.family).to_le_bytes());
            b.extend_from_slice(&c.sock_type.to_le_bytes());
            put_addr(&c.local, b);
            put_addr(&c.peer, b);
            put_str(&c.comm, b);
            b.extend_from_slice(&c.ret.to_le_bytes());
            b.extend_from_slice(&c.task_ctx.to_le_bytes());
            b.push(c.after_loss as u8);
        }
        Event::Exec(p) | Event::Fork(p) | Event::Exit(p) => {
            b.push(match event {
                Event::Exec(_) => TAG_EXEC,
                Event::Fork(_) => TAG_FORK,
                _ => TAG_EXIT,
            });
            put_meta(&p.meta, b);
            b.extend_from_slice(&p.parent_pid.unwrap_or(0).to_le_bytes());
            put_str(&p.comm, b);
        }
    }
}

/// Checked little-endian reads over one record body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("record body too short");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("length checked by take"))
    }
    fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn meta(&mut self) -> anyhow::Result<Meta> {
        let (pid, tid, service) = (self.u32()?, self.u32()?, self.u32()?);
        Ok(Meta { pid, tid, service: (service != u32::MAX).then_some(service), ts_ns: self.u64()? })
    }
    fn string(&mut self) -> anyhow::Result<String> {
        let n = self.u8()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn addr(&mut self) -> anyhow::Result<Option<SocketAddr>> {
        let ip = match self.u8()? {
            0 => return Ok(None),
            4 => IpAddr::from(self.array::<4>()?),
            6 => IpAddr::from(self.array::<16>()?),
            other => bail!("bad address tag {other}"),
        };
        Ok(Some(SocketAddr::new(ip, self.u16()?)))
    }
}

fn decode_v1(tag: u8, body: &[u8]) -> anyhow::Result<Event> {
    let mut c = Cursor(body);
    let meta = c.meta()?;
    Ok(match tag {
        TAG_DATA | TAG_LOG_WRITE => {
            let conn_id = c.u64()?;
            let fd = c.u32()? as i32;
            let sc = c.u8()? as usize;
            let syscall = Syscall::from_code(sc as u16).context("bad syscall code")?;
            let direction = match c.u8()? {
                1 => Direction::Egress,
                2 => Direction::Ingress,
                other => bail!("bad direction {other}"),
            };
            let flags = c.u8()?;
            let (enter_ns, exit_ns, ret, total_len) = (c.u64()?, c.u64()?, c.u64()? as i64, c.u64()?);
            let n = c.u32()? as usize;
            let payload = Bytes::copy_from_slice(c.take(n)?);
            // Version 1 bodies end at the payload.
            let task_ctx = if c.0.len() >= 8 { c.u64()? } else { 0 };
            let tcp_seq = if c.0.len() >= 4 { Some(c.u32()?) } else { None };
            let data = Data {
                meta,
                conn_id,
                fd,
                syscall,
                direction,
                enter_ns,
                exit_ns,
                ret,
                total_len,
                truncated: flags & 1 != 0,
                read_failed: flags & 2 != 0,
                no_payload: flags & 4 != 0,
                after_loss: flags & 8 != 0,
                payload,
                task_ctx,
                tcp_seq,
            };
            if tag == TAG_LOG_WRITE { Event::LogWrite(data) } else { Event::Data(data) }
        }
        TAG_CONN_OPEN | TAG_CONN_CLOSE | TAG_LISTEN => {
            let conn_id = c.u64()?;
            let fd = c.u32()? as i32;
            let how = match c.u8()? {
                0 => None,
                1 => Some(OpenHow::Accepted),
                2 => Some(OpenHow::Connected),
                3 => Some(OpenHow::Existing),
                other => bail!("bad open kind {other}"),
            };
            let family = match c.u16()? {
                1 => Family::Unix,
                2 => Family::Inet,
                10 => Family::Inet6,
                n => Family::Other(n),
            };
            let conn = Conn {
                meta,
                conn_id,
                fd,
                how,
                family,
                sock_type: c.u16()?,
                local: c.addr()?,
                peer: c.addr()?,
                comm: c.string()?,
                ret: c.u64()? as i64,
                // Version 1 bodies end here.
                task_ctx: if c.0.len() >= 8 { c.u64()? } else { 0 },
                after_loss: !c.0.is_empty() && c.u8()? != 0,
            };
            match tag {
                TAG_CONN_OPEN => Event::ConnOpen(conn),
                TAG_CONN_CLOSE => Event::ConnClose(conn),
                _ => Event::Listen(conn),
            }
        }
        TAG_EXEC | TAG_FORK | TAG_EXIT => {
            let parent = c.u32()?;
            let proc = Proc { meta, parent_pid: (parent != 0).then_some(parent), comm: c.string()? };
            match tag {
                TAG_EXEC => Event::Exec(proc),
                TAG_FORK => Event::Fork(proc),
                _ => Event::Exit(proc),
            }
        }
        TAG_TASK => {
            let (parent_ctx, child_ctx, task) = (c.u64()?, c.u64()?, c.u64()?);
            let entry_ns = if c.0.len() >= 8 { c.u64()? } else { meta.ts_ns };
            Event::Task(TaskCreated { meta, parent_ctx, child_ctx, task, entry_ns })
        }
        other => bail!("unknown record tag {other}"),
    })
}

pub struct RecordReader<R: Read> {
    input: R,
    pub meta: RecordMeta,
    pub version: u16,
    offset: u64,
    body: Vec<u8>,
    /// Set when the file ended inside a record.
    pub truncated_tail: bool,
}

impl RecordReader<BufReader<File>> {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open record file {}", path.display()))?;
        RecordReader::new(BufReader::with_capacity(1 << 20, file))
            .with_context(|| format!("{} is not a readable traceo record file", path.display()))
    }
}

/// Fill `buf` completely; Ok(false) at a clean end of input before any byte.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> anyhow::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => bail!("unexpected end of file"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

impl<R: Read> RecordReader<R> {
    pub fn new(mut input: R) -> anyhow::Result<Self> {
        let mut head = [0u8; 14];
        if !read_full(&mut input, &mut head).context("reading the header")? || &head[..8] != MAGIC {
            bail!("missing the TRACEORC magic: not a record file (make one with `traceo-agent record --out FILE`)");
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version == 0 || version > FORMAT_VERSION {
            bail!(
                "record format version {version} is newer than this agent reads (up to {FORMAT_VERSION}): \
                 replay it with the traceo-agent that recorded it, or a newer one"
            );
        }
        let meta_len = u32::from_le_bytes([head[10], head[11], head[12], head[13]]) as usize;
        if meta_len > MAX_RECORD {
            bail!("corrupt header: metadata length {meta_len}");
        }
        let mut meta = vec![0u8; meta_len];
        read_full(&mut input, &mut meta).context("reading the metadata")?;
        let meta: RecordMeta = serde_json::from_slice(&meta).context("corrupt metadata")?;
        Ok(RecordReader { input, meta, version, offset: 14 + meta_len as u64, body: Vec::new(), truncated_tail: false })
    }

    /// The next event, `None` at the end of the file.
    pub fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        let mut len = [0u8; 4];
        match read_full(&mut self.input, &mut len) {
            Ok(false) => return Ok(None),
            Ok(true) => {}
            Err(_) => {
                self.truncated_tail = true;
                return Ok(None);
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > MAX_RECORD {
            bail!("corrupt record at byte {}: length {len}", self.offset);
        }
        let crc_len = if self.version >= 2 { 4 } else { 0 };
        self.body.resize(len + crc_len, 0);
        if read_full(&mut self.input, &mut self.body).is_err() {
            self.truncated_tail = true;
            return Ok(None);
        }
        if crc_len > 0 {
            let (record, crc) = self.body.split_at(len);
            if crc32fast::hash(record).to_le_bytes() != crc {
                bail!("damaged record at byte {}: its checksum does not match (the file was altered)", self.offset);
            }
        }
        // Matched, not `with_context(..)?`: that re-wrapping copied every event once more.
        match decode_v1(self.body[0], &self.body[1..len]) {
            Ok(event) => {
                self.offset += (4 + len + crc_len) as u64;
                Ok(Some(event))
            }
            Err(e) => Err(e.context(format!("corrupt record at byte {}", self.offset))),
        }
    }
}

/// Events of every kind, for tests across modules.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::events::Syscall;

    fn meta(pid: u32) -> Meta {
        Meta { pid, tid: pid + 1, service: Some(0), ts_ns: 123 }
    }

    pub(crate) fn sample_events() -> Vec<Event> {
        let conn = Conn {
            meta: meta(7),
            conn_id: 99,
            fd: 4,
            how: Some(OpenHow::Accepted),
            family: Family::Inet6,
            sock_type: 1,
            local: Some("[::1]:8000".parse().unwrap()),
            peer: Some("[::1]:40000".parse().unwrap()),
            comm: "uvicorn".into(),
            ret: 4,
            task_ctx: traceo_ebpf_common::CONN_CTX | 42,
            after_loss: false,
        };
        vec![
            Event::ConnOpen(conn.clone()),
            Event::Data(Data {
                meta: meta(7),
                conn_id: 99,
                fd: 4,
                syscall: Syscall::Recvfrom,
                direction: Direction::Ingress,
                enter_ns: 1,
                exit_ns: 2,
                ret: 18,
                total_len: 18,
                truncated: false,
                read_failed: false,
                no_payload: false,
                after_loss: false,
                payload: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
                task_ctx: 0x7f00_1234,
                tcp_seq: Some(0xfffe_0001),
            }),
            Event::Data(Data {
                meta: Meta { service: None, ..meta(7) },
                conn_id: 99,
                fd: 4,
                syscall: Syscall::Sendfile,
                direction: Direction::Egress,
                enter_ns: 3,
                exit_ns: 4,
                ret: 5000,
                total_len: 5000,
                truncated: true,
                read_failed: true,
                no_payload: true,
                after_loss: false,
                payload: Bytes::new(),
                task_ctx: 0,
                tcp_seq: None,
            }),
            Event::ConnClose(Conn { how: None, local: None, peer: None, after_loss: true, ..conn.clone() }),
            Event::Fork(Proc { meta: meta(8), parent_pid: Some(7), comm: "python3".into() }),
            Event::Exec(Proc { meta: meta(8), parent_pid: None, comm: "uvicorn".into() }),
            Event::Exit(Proc { meta: meta(8), parent_pid: None, comm: "uvicorn".into() }),
            Event::Task(TaskCreated {
                meta: meta(7),
                parent_ctx: 0x7f00_0010,
                child_ctx: 0x7f00_0020,
                task: 0x7f00_0030,
                entry_ns: 6,
            }),
            Event::Listen(Conn { how: None, peer: None, after_loss: false, task_ctx: 0, ..conn.clone() }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample_events;
    use super::*;

    fn write_all(events: &[Event]) -> Vec<u8> {
        let meta = RecordMeta { agent_version: "t".into(), capture_bytes: 16384, ..RecordMeta::default() };
        let mut w = RecordWriter::new(Vec::new(), &meta).expect("header");
        for e in events {
            w.write(e).expect("write");
        }
        w.finish().expect("finish")
    }

    fn read_all(bytes: &[u8]) -> anyhow::Result<(Vec<Event>, bool)> {
        let mut r = RecordReader::new(bytes)?;
        let mut out = vec![];
        while let Some(e) = r.next_event()? {
            out.push(e);
        }
        Ok((out, r.truncated_tail))
    }

    #[test]
    fn every_event_kind_round_trips() {
        let events = sample_events();
        let (back, truncated) = read_all(&write_all(&events)).expect("reads back");
        assert_eq!(back, events);
        assert!(!truncated);
    }

    #[test]
    fn truncated_tail_is_reported_not_fatal() {
        let bytes = write_all(&sample_events());
        let (back, truncated) = read_all(&bytes[..bytes.len() - 3]).expect("reads the complete records");
        assert_eq!(back.len(), sample_events().len() - 1);
        assert!(truncated);
    }

    #[test]
    fn newer_versions_and_foreign_files_are_refused_with_the_reason() {
        let mut bytes = write_all(&sample_events());
        bytes[8] = 9;
        let err = format!("{:#}", read_all(&bytes).unwrap_err());
        assert!(err.contains("version 9 is newer"), "{err}");
        let err = format!("{:#}", read_all(b"GET / HTTP/1.1\r\n").unwrap_err());
        assert!(err.contains("not a record file"), "{err}");
    }

    #[test]
    fn every_flipped_byte_is_reported_never_replayed_as_an_event() {
        let events = sample_events();
        let bytes = write_all(&events);
        let first_record = 14 + u32::from_le_bytes(bytes[10..14].try_into().unwrap()) as usize;
        // Flip each byte of the records in turn: an error naming the damage, or a cut-short
        // tail reported as such; never different events read as if the file were sound.
        for i in first_record..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            match read_all(&b) {
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(e.contains("byte"), "flip at {i}: {e}");
                }
                Ok((back, truncated)) => assert!(truncated && events.starts_with(&back), "flip at {i} read as sound"),
            }
        }
        let mut b = bytes.clone();
        b[first_record + 4] = 77; // the first record's tag
        let err = format!("{:#}", read_all(&b).unwrap_err());
        assert!(err.contains(&format!("damaged record at byte {first_record}")), "{err}");
    }
}
