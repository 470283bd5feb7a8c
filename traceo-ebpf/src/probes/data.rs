//! Data syscalls: the bytes that cross a socket, captured at syscall exit.
//!
//! `syscall_exit` hands each traced data syscall's arguments and result here: filter the
//! socket fd, announce sockets not seen before, copy up to `capture_bytes` of what the call
//! actually moved and emit one `DataEvent` of just that size.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{self, bpf_ktime_get_ns},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use traceo_ebpf_common::{
    DATA_EVENT_HEADER_LEN, ENTRY_SLOTS, EventHeader, MAX_CAPTURE, MAX_IOVECS, data_flags, direction, kind, stat,
    syscall,
};

use super::conn::announce_if_new;
use crate::{
    filter::{Current, traced},
    globals::setting,
    maps::{
        DATA_SCRATCH, EGRESS_ENTRY, EVENTS, LOG_FILES, LOSS_SEEN, LOSSY_CONNS, SyscallArgs, count, submit_flags_for,
    },
    socket::{WalkError, regular_file_ino, socket_of_fd, tcp_seq},
};

/// Ring buffer bytes data events leave to the other events (see `emit`).
const CONTROL_RESERVE: u64 = 64 * 1024;

/// Offsets and lengths are masked with this for the verifier: both are really at most
/// MAX_CAPTURE, and the scratch slack covers offset + length under the mask.
const MASK: u32 = 2 * MAX_CAPTURE as u32 - 1;

/// A data syscall's arguments, as read from the registers at its exit.
pub struct Call {
    pub fd: i64,
    /// The user buffer, or the iovec array of a vectored call.
    pub buf: u64,
    /// The buffer length, or the iovec count of a vectored call.
    pub count: u64,
    /// One of `traceo_ebpf_common::syscall`.
    pub syscall: u16,
    /// 1 when `buf` points at an iovec array.
    pub vectored: u8,
}

#[inline(always)]
fn is_ingress(syscall: u16) -> bool {
    matches!(syscall, syscall::READ | syscall::READV | syscall::RECVFROM | syscall::RECVMSG)
}

/// Errors move no bytes; a zero-byte receive is the peer's EOF and worth reporting.
#[inline(always)]
pub fn moved_nothing(syscall: u16, ret: i64) -> bool {
    ret < 0 || (ret == 0 && !is_ingress(syscall))
}

/// A traced data syscall returned `ret`: emit what it moved over a socket (or, for a write
/// to a non-socket stdout/stderr or a `--log-file`, the process's log output).
#[inline(always)]
pub fn on_exit(cur: &Current, call: &Call, ret: i64) {
    if moved_nothing(call.syscall, ret) {
        return;
    }
    let ingress = is_ingress(call.syscall);
    let sock = match socket_of_fd(call.fd) {
        Ok(sock) => sock,
        Err(WalkError::NotSocket) => {
            // stdout/stderr that is not a socket (tty, pipe, file): the process's own log
            // output. Two compares for every other non-socket fd; nothing when logs are off.
            if !ingress && call.syscall != syscall::SENDFILE && setting!(capture_logs) != 0 {
                // `--log-file`: a second walk and a lookup, only when that option is on.
                // SAFETY: only tests for presence.
                let log_file = || regular_file_ino(call.fd).is_some_and(|ino| unsafe { LOG_FILES.get(&ino) }.is_some());
                if call.fd == 1 || call.fd == 2 || (setting!(log_files) != 0 && log_file()) {
                    emit(cur, &args(cur, call, LOG_CONN, None), ret, direction::EGRESS);
                }
            }
            return;
        }
        Err(WalkError::Failed) => {
            count(stat::SOCKET_WALK_FAILED);
            return;
        }
    };
    announce_if_new(cur, &sock, call.fd);
    // Only when asked (`--shared-state`): three more reads per call. At exit the number has
    // moved past the call's bytes: the first byte's is `ret` before it.
    let seq = if setting!(read_tcp_seq) != 0 {
        tcp_seq(&sock, !ingress).map(|seq| seq.wrapping_sub(ret as u32))
    } else {
        None
    };
    emit(cur, &args(cur, call, sock.ino, seq), ret, if ingress { direction::INGRESS } else { direction::EGRESS });
}

/// What `emit` needs of a syscall: its call's arguments, the connection, the thread's
/// runtime context (the same at exit as at entry: the thread ran no user code in between)
/// and, for egress, when the call began.
#[inline(always)]
fn args(cur: &Current, call: &Call, conn_id: u64, seq: Option<u32>) -> SyscallArgs {
    SyscallArgs {
        conn_id,
        buf: call.buf,
        count: call.count,
        enter_ns: if is_ingress(call.syscall) { 0 } else { egress_entry(cur.tid) },
        fd: call.fd as i32,
        service: cur.service,
        syscall: call.syscall,
        vectored: call.vectored,
        has_seq: seq.is_some() as u8,
        tcp_seq: seq.unwrap_or(0),
        task_ctx: crate::runtime::current_context(cur),
    }
}

/// The entry time `egress_enter` left for thread `tid`, taking it (a later call whose entry
/// is missed must not find it); `u64::MAX` when the slot is another thread's or empty.
#[inline(always)]
fn egress_entry(tid: u32) -> u64 {
    let Some(slot) = EGRESS_ENTRY.get_ptr_mut(tid & (ENTRY_SLOTS - 1)) else {
        return NO_ENTRY;
    };
    // SAFETY: a map value; a racing writer can only make the tid test fail.
    unsafe {
        if (*slot)[0] != tid as u64 {
            return NO_ENTRY;
        }
        (*slot)[0] = 0;
        (*slot)[1]
    }
}

/// `SyscallArgs::enter_ns` of an egress call whose entry was not seen.
const NO_ENTRY: u64 = u64::MAX;

/// An egress syscall began: note when, for its exit (`egress_entry`).
#[inline(always)]
fn egress_enter() {
    let Some(cur) = traced() else { return };
    if let Some(slot) = EGRESS_ENTRY.get_ptr_mut(cur.tid & (ENTRY_SLOTS - 1)) {
        // SAFETY: a map value, written whole by this thread's entry only.
        unsafe { *slot = [cur.tid as u64, bpf_ktime_get_ns()] };
    }
}

/// The egress syscalls' entry tracepoints: only the time is kept.
macro_rules! egress_entries {
    ($($name:ident),*) => {$(
        #[tracepoint]
        pub fn $name(_ctx: TracePointContext) -> u32 {
            egress_enter();
            0
        }
    )*};
}

egress_entries!(sys_enter_write, sys_enter_writev, sys_enter_sendto, sys_enter_sendmsg, sys_enter_sendfile64);

/// `SyscallArgs::conn_id` of a log write: no socket has inode 0, no `SSL *` is null.
const LOG_CONN: u64 = 0;

/// Copy `len` user bytes into the payload at `offset`; false when the read failed.
#[inline(always)]
pub(super) fn read_user_into(data: *mut u8, offset: u32, len: u32, src: u64) -> bool {
    // black_box: LLVM proves these bounds from the callers' checks and would drop the masks,
    // but the verifier cannot follow that proof across loop iterations.
    let (offset, len) = (core::hint::black_box(offset), core::hint::black_box(len));
    // SAFETY: `offset` is below MAX_CAPTURE and `len` at most MAX_CAPTURE; masked, their
    // sum stays within payload + slack, which is what the verifier checks.
    unsafe {
        generated::bpf_probe_read_user(data.add((offset & MASK) as usize).cast(), len & MASK, src as *const _) == 0
    }
}

/// Copy up to `limit` bytes of what the call moved; returns (bytes copied, read failed).
#[inline(always)]
fn copy_payload(data: *mut u8, args: &SyscallArgs, limit: u32) -> (u32, bool) {
    if args.vectored == 0 {
        return if read_user_into(data, 0, limit, args.buf) { (limit, false) } else { (0, true) };
    }
    let mut copied: u32 = 0;
    for i in 0..MAX_IOVECS {
        if i as u64 >= args.count || copied >= limit {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; }
        // SAFETY: probe reads of user memory fail cleanly on a bad pointer.
        let Ok(iov) = (unsafe { bpf_probe_read_user((args.buf + 16 * i as u64) as *const [u64; 2]) }) else {
            return (copied, true);
        };
        let room = limit - copied;
        let n = if iov[1] < room as u64 { iov[1] as u32 } else { room };
        if n > 0 && !read_user_into(data, copied, n, iov[0]) {
            return (copied, true);
        }
        copied += n;
    }
    (copied, false)
}

/// Build the event in the per-CPU scratch and send `header + captured`: `ret` bytes went
/// through `args.buf` (or its iovecs). Shared by the syscall and the OpenSSL probes; true
/// when the event was sent. `args.enter_ns` 0 stands for the return time (an ingress call's
/// entry is when it began waiting, not when data came), `NO_ENTRY` for an unseen entry.
#[inline(always)]
pub(super) fn emit(cur: &Current, args: &SyscallArgs, ret: i64, dir: u8) -> bool {
    // SAFETY: helper call without arguments.
    let cpu = unsafe { generated::bpf_get_smp_processor_id() };
    let Some(scratch) = DATA_SCRATCH.get_ptr_mut(cpu) else {
        return false;
    };
    let mut limit = setting!(capture_bytes);
    if limit > MAX_CAPTURE as u32 {
        limit = MAX_CAPTURE as u32;
    }
    if (ret as u64) < limit as u64 {
        limit = ret as u32;
    }
    let mut flags = 0u8;
    // SAFETY: the slot belongs to this CPU for the duration of the program.
    let ev = unsafe { &mut (*scratch).event };
    let captured = if args.syscall == syscall::SENDFILE {
        flags |= data_flags::NO_PAYLOAD;
        0
    } else {
        let (copied, failed) = copy_payload(ev.data.as_mut_ptr(), args, limit);
        if failed {
            flags |= data_flags::READ_FAILED;
            count(stat::READ_USER_FAILED);
        }
        copied
    };
    if (captured as u64) < ret as u64 && flags & data_flags::NO_PAYLOAD == 0 {
        flags |= data_flags::TRUNCATED;
        count(stat::DATA_TRUNCATED);
    }
    let log = args.conn_id == LOG_CONN;
    let lossy = !log && LOSS_SEEN.get(0).is_some_and(|seen| *seen != 0);
    // SAFETY: only tests for presence.
    if lossy && unsafe { LOSSY_CONNS.get(&args.conn_id) }.is_some() {
        flags |= data_flags::AFTER_LOSS;
    }
    if args.has_seq != 0 {
        flags |= data_flags::TCP_SEQ;
    }
    // SAFETY: helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let event_kind = if log { kind::LOG_WRITE } else { kind::DATA };
    ev.header = EventHeader { kind: event_kind, pid: cur.pid, tid: cur.tid, service: args.service, ts_ns: now };
    ev.conn_id = args.conn_id;
    ev.enter_ns = match args.enter_ns {
        0 => now,
        NO_ENTRY => {
            flags |= data_flags::NO_ENTRY_TIME;
            count(stat::ENTRY_UNSEEN);
            now
        }
        at => at,
    };
    ev.exit_ns = now;
    ev.ret = ret;
    ev.total_len = ret as u64;
    ev.fd = args.fd;
    ev.captured = captured;
    ev.syscall = args.syscall;
    ev.direction = dir;
    ev.flags = flags;
    ev.tcp_seq = args.tcp_seq;
    ev.task_ctx = args.task_ctx;
    let size = DATA_EVENT_HEADER_LEN as u32 + (captured & MASK);
    // Data never takes the ring's last CONTROL_RESERVE bytes: those keep room for the small
    // connection, process and task events, so a close (which says whether its connection
    // lost data) still gets through when data is being dropped.
    let used = EVENTS.query(aya_ebpf::bindings::BPF_RB_AVAIL_DATA as u64);
    let sent = if used + size as u64 + CONTROL_RESERVE > setting!(ring_bytes) as u64 {
        -1
    } else {
        // SAFETY: `size` is within the scratch value (header + payload + slack).
        unsafe {
            generated::bpf_ringbuf_output(
                core::ptr::addr_of!(EVENTS).cast_mut().cast(),
                (ev as *mut traceo_ebpf_common::DataEvent).cast(),
                size as u64,
                submit_flags_for(used),
            )
        }
    };
    if log {
        count(if sent == 0 { stat::LOG_EVENTS } else { stat::RING_FULL_LOG });
        return sent == 0;
    }
    if sent == 0 {
        count(stat::DATA_EVENTS);
        if flags & data_flags::AFTER_LOSS != 0 {
            let _ = LOSSY_CONNS.remove(&args.conn_id);
        }
    } else {
        count(stat::RING_FULL_DATA);
        let _ = LOSSY_CONNS.insert(&args.conn_id, &1, 0);
        if let Some(seen) = LOSS_SEEN.get_ptr_mut(0) {
            // SAFETY: a plain store of the same value from any CPU.
            unsafe { *seen = 1 };
        }
    }
    sent == 0
}
