//! Wire types shared by the kernel programs (`traceo-ebpf`) and the agent.
//!
//! Rules for everything here:
//! - `#[repr(C)]`, no implicit padding (explicit `_pad` fields), no `bool`;
//! - every event starts with [`EventHeader`] so the agent can dispatch on `kind`;
//! - event kinds, syscall ids and stat indices are numbered explicitly and only ever appended.
//!
//! The agent decodes these into its own owned types right after the ring buffer: nothing
//! past `traceo_agent::events` depends on this layout.
#![no_std]

/// Largest payload one data event can carry. `--capture-bytes` may lower it, never raise it.
pub const MAX_CAPTURE: usize = 16 * 1024;
// The kernel side bounds offsets with masks, and the issue asks for at least 8 KiB per call.
const _: () = assert!(MAX_CAPTURE.is_power_of_two() && MAX_CAPTURE >= 8 * 1024);

/// Vectored calls (`readv`, `writev`, `sendmsg`, `recvmsg`): how many iovecs are copied.
pub const MAX_IOVECS: usize = 8;
/// Pids per block of the `PID_FLAGS` array map: one byte each, 0 = not traced, otherwise the
/// `--service` index + 1 ([`TRACE_ALL_FLAG`] for processes traced without a selection).
pub const PID_FLAGS_BLOCK: usize = 4096;
/// Most `--service` selections a flag byte can name.
pub const MAX_SERVICES: usize = 254;

/// Length of a kernel `comm` (task name), NUL padded.
pub const COMM_LEN: usize = 16;

/// What an event is. Numbered explicitly; append only.
pub mod kind {
    /// Bytes crossed a socket syscall: [`super::DataEvent`].
    pub const DATA: u32 = 1;
    /// A connection was accepted, connected or first seen: [`super::ConnEvent`].
    pub const CONN_OPEN: u32 = 2;
    /// A traced process closed a socket: [`super::ConnEvent`].
    pub const CONN_CLOSE: u32 = 3;
    /// A process called exec: [`super::ProcEvent`].
    pub const PROC_EXEC: u32 = 4;
    /// A traced process forked a child that is now traced too: [`super::ProcEvent`].
    pub const PROC_FORK: u32 = 5;
    /// A traced process exited: [`super::ProcEvent`].
    pub const PROC_EXIT: u32 = 6;
    /// A traced CPython process created an asyncio task: [`super::TaskEvent`].
    pub const TASK_CREATED: u32 = 7;
    /// Any process (traced or not) started listening on a socket: [`super::ConnEvent`] with
    /// its local address (the agent matches `port:` selectors at once, not at its next scan).
    pub const LISTEN: u32 = 8;
    /// A traced process wrote to its stdout (fd 1) or stderr (fd 2) and that fd is not a
    /// socket (a tty, pipe or file), or to a log file selected by `--log-file`: its own log
    /// output. A [`super::DataEvent`] whose `conn_id` is 0 and `fd` says which stream.
    pub const LOG_WRITE: u32 = 9;
}

/// Which syscall (or OpenSSL call) produced a data event. The discriminant is the code the
/// kernel writes and record files keep: append only.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Syscall {
    Read = 1,
    Write = 2,
    Readv = 3,
    Writev = 4,
    Sendto = 5,
    Recvfrom = 6,
    Sendmsg = 7,
    Recvmsg = 8,
    Sendfile = 9,
    /// OpenSSL `SSL_read`/`SSL_read_ex` returned plaintext (a uretprobe, not a syscall):
    /// the event's `conn_id` is the `SSL *` address, which the agent binds to its socket.
    SslRead = 10,
    /// OpenSSL `SSL_write`/`SSL_write_ex` accepted plaintext; `conn_id` as for `SslRead`.
    SslWrite = 11,
}

impl Syscall {
    /// Every value, in code order (`ALL[i]` has code `i + 1`).
    pub const ALL: [Syscall; 11] = [
        Syscall::Read,
        Syscall::Write,
        Syscall::Readv,
        Syscall::Writev,
        Syscall::Sendto,
        Syscall::Recvfrom,
        Syscall::Sendmsg,
        Syscall::Recvmsg,
        Syscall::Sendfile,
        Syscall::SslRead,
        Syscall::SslWrite,
    ];

    pub const fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<Syscall> {
        Self::ALL.get((code as usize).wrapping_sub(1)).copied()
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Syscall::Read => "read",
            Syscall::Write => "write",
            Syscall::Readv => "readv",
            Syscall::Writev => "writev",
            Syscall::Sendto => "sendto",
            Syscall::Recvfrom => "recvfrom",
            Syscall::Sendmsg => "sendmsg",
            Syscall::Recvmsg => "recvmsg",
            Syscall::Sendfile => "sendfile",
            Syscall::SslRead => "ssl_read",
            Syscall::SslWrite => "ssl_write",
        }
    }

    pub fn from_name(name: &str) -> Option<Syscall> {
        Self::ALL.iter().copied().find(|s| s.as_str() == name)
    }

    /// TLS plaintext from the OpenSSL probes rather than socket bytes.
    pub const fn is_tls(self) -> bool {
        matches!(self, Syscall::SslRead | Syscall::SslWrite)
    }
}

/// The codes as constants, for the kernel programs' patterns (derived: one source).
pub mod syscall {
    use super::Syscall;
    pub const READ: u16 = Syscall::Read.code();
    pub const WRITE: u16 = Syscall::Write.code();
    pub const READV: u16 = Syscall::Readv.code();
    pub const WRITEV: u16 = Syscall::Writev.code();
    pub const SENDTO: u16 = Syscall::Sendto.code();
    pub const RECVFROM: u16 = Syscall::Recvfrom.code();
    pub const SENDMSG: u16 = Syscall::Sendmsg.code();
    pub const RECVMSG: u16 = Syscall::Recvmsg.code();
    pub const SENDFILE: u16 = Syscall::Sendfile.code();
    pub const SSL_READ: u16 = Syscall::SslRead.code();
    pub const SSL_WRITE: u16 = Syscall::SslWrite.code();
}

const _: () = {
    let mut i = 0;
    while i < Syscall::ALL.len() {
        assert!(Syscall::ALL[i] as usize == i + 1, "Syscall::ALL must list the codes in order");
        i += 1;
    }
};

/// Direction of a data event, seen from the traced process.
pub mod direction {
    /// The process sent these bytes (write, send*, sendfile).
    pub const EGRESS: u8 = 1;
    /// The process received these bytes (read, recv*).
    pub const INGRESS: u8 = 2;
}

/// `DataEvent::flags` bits.
pub mod data_flags {
    /// Fewer bytes were captured than the syscall moved (capture limit, iovec limit).
    pub const TRUNCATED: u8 = 1;
    /// Copying from user memory failed; `captured` is what was copied before the fault.
    pub const READ_FAILED: u8 = 2;
    /// The payload never passes through a user buffer (sendfile): only the length is known.
    pub const NO_PAYLOAD: u8 = 4;
    /// An earlier data event of this connection was lost (ring buffer full): what the agent
    /// holds of the connection may be out of step with its bytes.
    pub const AFTER_LOSS: u8 = 8;
    /// `tcp_seq` holds the TCP sequence number of the first byte moved (a TCP socket, read
    /// when `ProbeSettings::read_tcp_seq` is on).
    pub const TCP_SEQ: u8 = 16;
    /// Egress only: the call's entry was not seen, `enter_ns` is its exit. When it started
    /// is unknown, so the agent resynchronises the connection rather than pair on a guess.
    pub const NO_ENTRY_TIME: u8 = 32;
}

/// How a connection came to be known. Numbered explicitly; append only.
pub mod open_how {
    pub const ACCEPTED: u8 = 1;
    pub const CONNECTED: u8 = 2;
    /// The socket existed before the agent saw it (opened before the agent started,
    /// or by a process before it became traced).
    pub const EXISTING: u8 = 3;
}

/// Address families as the kernel numbers them.
pub mod family {
    pub const UNIX: u16 = 1;
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// Slots of the per-thread egress entry times (index: tid modulo this; a power of two).
pub const ENTRY_SLOTS: u32 = 1 << 16;

/// Indices of the per-CPU `STATS` counters. Numbered explicitly; append only.
pub mod stat {
    /// Data events dropped because the ring buffer was full.
    pub const RING_FULL_DATA: u32 = 0;
    /// Connection events dropped because the ring buffer was full.
    pub const RING_FULL_CONN: u32 = 1;
    /// Process events dropped because the ring buffer was full.
    pub const RING_FULL_PROC: u32 = 2;
    /// `bpf_probe_read_user` of a payload or iovec failed.
    pub const READ_USER_FAILED: u32 = 3;
    /// Walking task -> file -> socket failed (kernel read fault, racing close).
    pub const SOCKET_WALK_FAILED: u32 = 4;
    /// The per-thread OpenSSL argument map was full: the call was not traced.
    pub const ARGS_MAP_FULL: u32 = 5;
    /// Unused since traced processes live in the flag array (kept: indices are never reused).
    pub const RESERVED_6: u32 = 6;
    /// Data events emitted.
    pub const DATA_EVENTS: u32 = 7;
    /// Data events whose payload was cut at the capture limit.
    pub const DATA_TRUNCATED: u32 = 8;
    /// Plaintext events emitted by the OpenSSL probes (also counted in `DATA_EVENTS`).
    pub const TLS_EVENTS: u32 = 9;
    /// Reading a CPython thread's current context failed or did not validate (the event
    /// goes out without one: its calls get no runtime parent).
    pub const RUNTIME_READ_FAILED: u32 = 10;
    /// Task-creation events dropped because the ring buffer was full.
    pub const RING_FULL_TASK: u32 = 11;
    /// A `Task.__init__` return whose entry was not found (evicted, or a stack pointer that
    /// did not match): that task's lineage is unknown.
    pub const TASK_INIT_UNPAIRED: u32 = 12;
    /// Log-write events (stdout/stderr) emitted.
    pub const LOG_EVENTS: u32 = 13;
    /// Log-write events dropped because the ring buffer was full.
    pub const RING_FULL_LOG: u32 = 14;
    /// An egress syscall whose entry was not seen (in flight when the agent attached, or its
    /// thread's entry slot taken by another's): sent flagged `NO_ENTRY_TIME`.
    pub const ENTRY_UNSEEN: u32 = 15;
    pub const COUNT: u32 = 16;

    /// Each counter's name (the agent's log and metric labels), in index order.
    pub const NAMES: [&str; COUNT as usize] = [
        "ring_full_data",
        "ring_full_conn",
        "ring_full_proc",
        "read_user_failed",
        "socket_walk_failed",
        "args_map_full",
        "reserved_6",
        "data_events",
        "data_truncated",
        "tls_events",
        "runtime_read_failed",
        "ring_full_task",
        "task_init_unpaired",
        "log_events",
        "ring_full_log",
        "entry_unseen",
    ];

    /// The counters of events lost because the ring buffer was full.
    pub const RING_FULL: [u32; 5] = [RING_FULL_DATA, RING_FULL_CONN, RING_FULL_PROC, RING_FULL_TASK, RING_FULL_LOG];
}

/// Common prefix of every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (kernel tgid).
    pub pid: u32,
    /// Thread id (kernel pid).
    pub tid: u32,
    /// Index of the `--service` selection that made the process traced; [`NO_SERVICE`] when
    /// everything is traced.
    pub service: u32,
    /// `bpf_ktime_get_ns()` when the event was emitted (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

/// `EventHeader::service` when no `--service` selection applies.
pub const NO_SERVICE: u32 = u32::MAX;

/// Bytes that crossed one socket syscall. Sent with only `captured` bytes of `data`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
    /// Connection identity: the socket's inode number (`socket:[N]` in /proc/PID/fd); for
    /// [`syscall::SSL_READ`] / [`syscall::SSL_WRITE`] the `SSL *` address instead.
    pub conn_id: u64,
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// The syscall's return value.
    pub ret: i64,
    /// Bytes the syscall moved (`max(ret, 0)`), whether or not they were captured.
    pub total_len: u64,
    pub fd: i32,
    /// How many bytes of `data` are valid.
    pub captured: u32,
    /// One of [`syscall`].
    pub syscall: u16,
    /// One of [`direction`].
    pub direction: u8,
    /// Bits of [`data_flags`].
    pub flags: u8,
    /// With [`data_flags::TCP_SEQ`]: the TCP sequence number of the first byte the call
    /// moved (`tcp_sock.write_seq` before a send, `copied_seq` before a receive). Both ends of
    /// a connection number its bytes alike, whatever NAT rewrote on the way.
    pub tcp_seq: u32,
    /// The runtime context the calling thread was running at the syscall (CPython: the
    /// address of its current `contextvars.Context`, which each asyncio task has its own
    /// of); 0 when unknown or not a supported runtime.
    pub task_ctx: u64,
    pub data: [u8; MAX_CAPTURE],
}

/// Size of a [`DataEvent`] without its payload: what precedes `data`.
pub const DATA_EVENT_HEADER_LEN: usize = core::mem::offset_of!(DataEvent, data);

/// A connection opened (accepted, connected, first seen) or closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub conn_id: u64,
    /// `connect`'s or `accept`'s return value; 0 for first-seen and close.
    pub ret: i64,
    pub fd: i32,
    /// One of [`family`].
    pub family: u16,
    /// `SOCK_STREAM` = 1, `SOCK_DGRAM` = 2, ...
    pub sock_type: u16,
    /// Local and peer address: IPv4 in the first 4 bytes, IPv6 in all 16 (network order).
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    pub peer_port: u16,
    /// One of [`open_how`] for `CONN_OPEN`; 0 for `CONN_CLOSE`.
    pub how: u8,
    /// `CONN_CLOSE`: [`data_flags::AFTER_LOSS`] when data events of it were lost since its
    /// last emitted one (nothing later will say so).
    pub flags: u8,
    pub _pad: [u8; 2],
    pub comm: [u8; COMM_LEN],
    /// The runtime context of the thread that opened it (as `DataEvent::task_ctx`).
    pub task_ctx: u64,
}

/// A process event: exec, fork (of a traced process) or exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub header: EventHeader,
    /// Fork: the parent's pid (the header names the child). Exec/exit: 0.
    pub parent_pid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// An asyncio task was created (uprobe on the C `Task.__init__`): which context it was
/// created in and which context it will run in. The agent builds task lineage from these.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskEvent {
    pub header: EventHeader,
    /// The creating thread's current context (0 when unknown).
    pub parent_ctx: u64,
    /// The new task's own context (`task_context`).
    pub child_ctx: u64,
    /// The task object's address (for diagnostics); 0 for a context copy
    /// (`contextvars.copy_context()`, followed with `--thread-pools`): `child_ctx` is then the
    /// copy, which a thread pool's worker runs its work in.
    pub task: u64,
    /// `bpf_ktime_get_ns()` when `__init__` was entered (the header's time is its return): an
    /// eager task's first step runs in between, on the creating thread.
    pub entry_ns: u64,
}

/// Runtimes whose per-request context the programs read. Numbered explicitly; append only.
pub mod runtime_kind {
    /// CPython: the thread's current `contextvars.Context` (asyncio tasks).
    pub const PYTHON: u32 = 1;
    /// nginx: while `ngx_http_upstream_init` runs, the client connection it serves.
    pub const NGINX: u32 = 2;
}

/// Set on a `task_ctx` that names an inbound connection (its inode number) rather than a
/// runtime context address: the call serves the request in flight on that connection.
pub const CONN_CTX: u64 = 1 << 63;

/// Set on a CPython context the thread never entered with `Context.run` (a thread's base
/// context), when [`PyLayout::context_entered`] is read: no copy's lineage applies to it,
/// even when it sits at the address of a copy that was freed.
pub const BASE_CTX: u64 = 1;

/// A traced process whose runtime the programs read (`RUNTIME_PROCS`, key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeProc {
    /// One of [`runtime_kind`].
    pub kind: u32,
    pub _pad: u32,
    /// For [`runtime_kind::PYTHON`].
    pub python: PyLayout,
}

/// Where a CPython build keeps what the programs read, measured by the agent per
/// executable (byte offsets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyLayout {
    /// From the thread pointer (fs base) to the pthread-specific slot holding the thread's
    /// `PyThreadState *`.
    pub tstate_slot: u32,
    /// `PyThreadState.thread_id` (must equal the thread pointer: the read is checked).
    pub thread_id: u32,
    /// `PyThreadState.context`.
    pub context: u32,
    /// The C `TaskObj.task_context`.
    pub task_context: u32,
    /// `PyContext.ctx_entered` (an int, 1 inside `Context.run`); 0: not read (only needed
    /// when context copies are followed, `--thread-pools`).
    pub context_entered: u32,
    pub _pad: u32,
}

/// Kernel struct member offsets, read by the agent from /sys/kernel/btf/vmlinux and handed
/// to the programs as a frozen global (the verifier then sees constants).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.files` (struct files_struct *)
    pub task_files: u64,
    /// `files_struct.fdt` (struct fdtable *)
    pub files_fdt: u64,
    /// `fdtable.max_fds` (unsigned int)
    pub fdt_max_fds: u64,
    /// `fdtable.fd` (struct file **)
    pub fdt_fd: u64,
    /// `file.private_data` (struct socket * for sockets)
    pub file_private_data: u64,
    /// `file.f_inode` (struct inode *)
    pub file_inode: u64,
    /// `inode.i_mode` (umode_t)
    pub inode_mode: u64,
    /// `inode.i_ino` (unsigned long)
    pub inode_ino: u64,
    /// `socket.sk` (struct sock *)
    pub socket_sk: u64,
    /// `sock.__sk_common.skc_family` (u16)
    pub sk_family: u64,
    /// `sock.__sk_common.skc_daddr` (be32)
    pub sk_daddr: u64,
    /// `sock.__sk_common.skc_rcv_saddr` (be32)
    pub sk_rcv_saddr: u64,
    /// `sock.__sk_common.skc_dport` (be16)
    pub sk_dport: u64,
    /// `sock.__sk_common.skc_num` (u16, host order)
    pub sk_num: u64,
    /// `sock.__sk_common.skc_v6_daddr` (in6_addr)
    pub sk_v6_daddr: u64,
    /// `sock.__sk_common.skc_v6_rcv_saddr` (in6_addr)
    pub sk_v6_rcv_saddr: u64,
    /// `sock.sk_type` (u16)
    pub sk_type: u64,
    /// `task_struct.thread.fsbase` (unsigned long): a user thread's thread pointer.
    pub task_fsbase: u64,
    /// `tcp_sock.write_seq` (u32): sequence number of the next byte the process sends.
    pub tcp_write_seq: u64,
    /// `tcp_sock.copied_seq` (u32): sequence number of the next byte the process reads.
    pub tcp_copied_seq: u64,
    /// `sock.sk_protocol` (u16); 0 on kernels where it is a bitfield (they predate MPTCP).
    pub sk_protocol: u64,
    pub _pad: u64,
}

/// Run-time settings of the programs, set once at load as a frozen global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSettings {
    /// The agent's own pid: never traced.
    pub agent_pid: u32,
    /// 1: trace every process but the agent; 0: only those flagged in `PID_FLAGS`.
    pub trace_all: u32,
    /// Payload bytes copied per syscall, at most [`MAX_CAPTURE`].
    pub capture_bytes: u32,
    /// Offset of `child_pid` in the `sched:sched_process_fork` record (it moved between
    /// kernel versions; the agent reads it from the tracepoint's format file).
    pub fork_child_pid_offset: u32,
    /// 1: emit [`kind::LOG_WRITE`] events for writes to non-socket stdout/stderr
    /// (`--log-records` is on); 0: those writes are dropped as before, at no cost.
    pub capture_logs: u32,
    /// 1: also emit them for writes to the regular files in the `LOG_FILES` map
    /// (`--log-file`).
    pub log_files: u32,
    /// 1: read the TCP sequence number at each data syscall on a TCP socket
    /// (`DataEvent::tcp_seq`; `--shared-state` keys cross-host stitching by it).
    pub read_tcp_seq: u32,
    /// The ring buffer's size in bytes (what `BPF_RB_RING_SIZE` would answer, without the
    /// helper call per event).
    pub ring_bytes: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) plain data with no padding holes and no pointers;
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::ProbeSettings {}
    unsafe impl aya::Pod for super::PyLayout {}
    unsafe impl aya::Pod for super::RuntimeProc {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn header_layout_is_fixed() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(offset_of!(EventHeader, kind), 0);
        assert_eq!(offset_of!(EventHeader, ts_ns), 16);
    }

    #[test]
    fn data_event_has_no_padding_holes() {
        // header 24 + 5 * 8 + fd 4 + captured 4 + syscall 2 + direction 1 + flags 1 + tcp_seq 4
        // + task_ctx 8
        assert_eq!(DATA_EVENT_HEADER_LEN, 24 + 40 + 16 + 8);
        assert_eq!(size_of::<DataEvent>(), DATA_EVENT_HEADER_LEN + MAX_CAPTURE);
        assert_eq!(DATA_EVENT_HEADER_LEN % align_of::<DataEvent>(), 0);
    }

    #[test]
    fn conn_and_proc_events_have_no_padding_holes() {
        assert_eq!(size_of::<ConnEvent>(), 24 + 8 + 8 + 4 + 2 + 2 + 32 + 4 + 4 + COMM_LEN + 8);
        assert_eq!(size_of::<RuntimeProc>(), 8 + size_of::<PyLayout>());
        assert_eq!(size_of::<ProcEvent>(), 24 + 4 + 4 + COMM_LEN);
        assert_eq!(size_of::<KernelOffsets>(), 22 * 8);
        assert_eq!(size_of::<TaskEvent>(), 24 + 4 * 8);
        assert_eq!(size_of::<PyLayout>(), 24);
        assert_eq!(size_of::<ProbeSettings>(), 32);
    }

    #[test]
    fn every_event_starts_with_the_header() {
        assert_eq!(offset_of!(DataEvent, header), 0);
        assert_eq!(offset_of!(ConnEvent, header), 0);
        assert_eq!(offset_of!(ProcEvent, header), 0);
        assert_eq!(offset_of!(TaskEvent, header), 0);
    }
}
