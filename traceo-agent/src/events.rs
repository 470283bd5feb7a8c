//! The agent's own event types: what every stage after the ring buffer works with.
//!
//! Decoded from the kernel's wire types in `decode`, written to and read from record files
//! in `record`. Nothing here depends on the kernel layout.

use std::net::SocketAddr;

use bytes::Bytes;

/// What every event shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Index of the `--service` selection that traced the process; `None` when everything is
    /// traced.
    pub service: Option<u32>,
    /// CLOCK_MONOTONIC nanoseconds when the kernel emitted the event.
    pub ts_ns: u64,
}

/// Seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process sent the bytes.
    Egress,
    /// The process received the bytes.
    Ingress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

/// The syscall behind a data event (defined with the kernel's codes).
pub use traceo_ebpf_common::Syscall;

/// Bytes that crossed one socket syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    pub meta: Meta,
    /// Stable for the life of the connection (the socket's inode number). For TLS plaintext
    /// (`syscall.is_tls()`) the kernel reports the `SSL *` address here; the TLS stage
    /// replaces it with the connection's id once it knows the socket.
    pub conn_id: u64,
    pub fd: i32,
    pub syscall: Syscall,
    pub direction: Direction,
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// The syscall's return value.
    pub ret: i64,
    /// Bytes the syscall moved; `payload` may hold fewer (capture limit, sendfile).
    /// A zero on `Ingress` is the peer's end of stream.
    pub total_len: u64,
    /// Fewer bytes captured than moved.
    pub truncated: bool,
    /// Copying from the process failed part way.
    pub read_failed: bool,
    /// The bytes never passed through a user buffer (sendfile).
    pub no_payload: bool,
    /// An earlier data event of this connection was lost in the kernel (ring buffer full).
    pub after_loss: bool,
    pub payload: Bytes,
    /// The runtime context of the calling thread (CPython: its current
    /// `contextvars.Context`, one per asyncio task); 0 when unknown.
    pub task_ctx: u64,
    /// The TCP sequence number of the first byte moved, when the kernel read it (a TCP
    /// socket, `--shared-state` on): the same on both ends, through NAT.
    pub tcp_seq: Option<u32>,
}

/// A traced CPython process created an asyncio task (or, with `--thread-pools`, copied a
/// context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskCreated {
    pub meta: Meta,
    /// The context the creating code ran in (0 when unknown).
    pub parent_ctx: u64,
    /// The context the new task runs its steps in.
    pub child_ctx: u64,
    /// The task object's address; 0 for a context copy (`--thread-pools`).
    pub task: u64,
    /// When `Task.__init__` was entered (`meta.ts_ns` is its return): an eager task (3.12+)
    /// runs its first step in between, on the creating thread.
    pub entry_ns: u64,
}

impl TaskCreated {
    /// A context copied for a thread pool (`contextvars.copy_context()`), not a task.
    pub fn is_copy(&self) -> bool {
        self.task == 0
    }
}

/// How a connection became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenHow {
    Accepted,
    Connected,
    /// Opened before the agent saw it.
    Existing,
}

impl OpenHow {
    pub fn as_str(self) -> &'static str {
        match self {
            OpenHow::Accepted => "accepted",
            OpenHow::Connected => "connected",
            OpenHow::Existing => "existing",
        }
    }
}

/// Socket address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Inet,
    Inet6,
    Unix,
    Other(u16),
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
            Family::Unix => "unix",
            Family::Other(_) => "other",
        }
    }
}

#[cfg(test)]
impl Data {
    /// A whole, untruncated call of `payload` for unit tests (no context, no sequence number).
    pub fn sample(
        meta: Meta,
        (conn_id, fd): (u64, i32),
        syscall: Syscall,
        direction: Direction,
        (enter_ns, exit_ns): (u64, u64),
        payload: &[u8],
    ) -> Data {
        Data {
            meta,
            conn_id,
            fd,
            syscall,
            direction,
            enter_ns,
            exit_ns,
            ret: payload.len() as i64,
            total_len: payload.len() as u64,
            truncated: false,
            read_failed: false,
            no_payload: false,
            after_loss: false,
            payload: bytes::Bytes::copy_from_slice(payload),
            task_ctx: 0,
            tcp_seq: None,
        }
    }
}

/// A connection opened or closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub meta: Meta,
    pub conn_id: u64,
    pub fd: i32,
    /// `None` on close.
    pub how: Option<OpenHow>,
    pub family: Family,
    /// `SOCK_STREAM` = 1, `SOCK_DGRAM` = 2.
    pub sock_type: u16,
    /// `None` for unix sockets, on close, or when the kernel could not read them.
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub comm: String,
    pub ret: i64,
    /// A close after some of its data events were lost in the kernel.
    pub after_loss: bool,
    /// The runtime context of the thread that opened it (`Data::task_ctx`); for nginx, the
    /// client connection whose request made nginx connect upstream.
    pub task_ctx: u64,
}

/// A process event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub meta: Meta,
    /// For forks.
    pub parent_pid: Option<u32>,
    pub comm: String,
}

/// One decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Data(Data),
    ConnOpen(Conn),
    ConnClose(Conn),
    Exec(Proc),
    Fork(Proc),
    Exit(Proc),
    Task(TaskCreated),
    /// A process (traced or not) started listening: `local` is its address.
    Listen(Conn),
    /// A traced process wrote to its non-socket stdout (`fd` 1) or stderr (`fd` 2): its own
    /// log output. `conn_id` is 0; `task_ctx` is the writer's runtime context.
    LogWrite(Data),
}

impl Event {
    pub fn meta(&self) -> &Meta {
        match self {
            Event::Data(d) | Event::LogWrite(d) => &d.meta,
            Event::ConnOpen(c) | Event::ConnClose(c) | Event::Listen(c) => &c.meta,
            Event::Exec(p) | Event::Fork(p) | Event::Exit(p) => &p.meta,
            Event::Task(t) => &t.meta,
        }
    }

    /// The name used in JSON output and record files.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Event::Data(_) => "data",
            Event::ConnOpen(_) => "conn_open",
            Event::ConnClose(_) => "conn_close",
            Event::Exec(_) => "exec",
            Event::Fork(_) => "fork",
            Event::Exit(_) => "exit",
            Event::Task(_) => "task",
            Event::Listen(_) => "listen",
            Event::LogWrite(_) => "log_write",
        }
    }
}
