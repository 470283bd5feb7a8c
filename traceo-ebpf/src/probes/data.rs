//! Data syscalls: the bytes that cross a socket, captured at syscall exit.
//!
//! Enter probes filter (traced process, socket fd), announce sockets not seen before and
//! park the arguments per thread; exit probes copy up to `capture_bytes` of what the call
//! actually moved and emit one `DataEvent` of just that size.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{self, bpf_ktime_get_ns},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use traceo_ebpf_common::{
    DATA_EVENT_HEADER_LEN, EventHeader, MAX_CAPTURE, MAX_IOVECS, data_flags, direction, kind, stat, syscall,
};

use super::{conn::announce_if_new, syscall_arg, syscall_ret};
use crate::{
    filter::{maybe_traced, traced},
    globals::setting,
    maps::{
        CONNECT, DATA_SCRATCH, EVENTS, LOG_FILES, LOSS_SEEN, LOSSY_CONNS, SYSCALL_ARGS, SyscallArgs, count,
        submit_flags,
    },
    socket::{WalkError, regular_file_ino, socket_of_fd, tcp_seq},
};

/// Ring buffer bytes data events leave to the other events (see `emit`).
const CONTROL_RESERVE: u64 = 64 * 1024;

/// Offsets and lengths are masked with this for the verifier: both are really at most
/// MAX_CAPTURE, and the scratch slack covers offset + length under the mask.
const MASK: u32 = 2 * MAX_CAPTURE as u32 - 1;

/// Common enter path: filter, announce, park the arguments.
#[inline(always)]
fn enter(fd: u64, buf: u64, count_or_iovcnt: u64, syscall: u16, vectored: u8) {
    let Some(cur) = traced() else { return };
    let fd = fd as i32 as i64;
    let sock = match socket_of_fd(fd) {
        Ok(sock) => sock,
        Err(WalkError::NotSocket) => {
            // stdout/stderr that is not a socket (tty, pipe, file): the process's own log
            // output. Two compares for every other non-socket fd; nothing when logs are off.
            if syscall == syscall::WRITE || syscall == syscall::WRITEV {
                // `--log-file`: a second walk and a lookup, only when that option is on.
                // SAFETY: only tests for presence.
                let log_file = || regular_file_ino(fd).is_some_and(|ino| unsafe { LOG_FILES.get(&ino) }.is_some());
                if fd == 1 || fd == 2 || (setting!(log_files) != 0 && log_file()) {
                    park_log(&cur, fd, buf, count_or_iovcnt, syscall, vectored);
                }
            }
            return;
        }
        Err(WalkError::Failed) => {
            count(stat::SOCKET_WALK_FAILED);
            return;
        }
    };
    announce_if_new(&cur, &sock, fd);
    let ingress = matches!(syscall, syscall::READ | syscall::READV | syscall::RECVFROM | syscall::RECVMSG);
    // Only when asked (`--shared-state`): three more reads per call.
    let seq = if setting!(read_tcp_seq) != 0 { tcp_seq(&sock, !ingress) } else { None };
    let args = SyscallArgs {
        conn_id: sock.ino,
        buf,
        count: count_or_iovcnt,
        // SAFETY: helper call without arguments.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: fd as i32,
        service: cur.service,
        syscall,
        vectored,
        has_seq: seq.is_some() as u8,
        tcp_seq: seq.unwrap_or(0),
        task_ctx: crate::runtime::current_context(&cur),
    };
    if SYSCALL_ARGS.insert(&cur.tid, &args, 0).is_err() {
        count(stat::ARGS_MAP_FULL);
    }
}

/// A write to non-socket stdout/stderr: parked like a socket write, with `conn_id` 0
/// (`LOG_CONN`), so the exit probe emits a log-write event instead of a data event.
#[inline(always)]
fn park_log(cur: &crate::filter::Current, fd: i64, buf: u64, count_or_iovcnt: u64, syscall: u16, vectored: u8) {
    if setting!(capture_logs) == 0 {
        return;
    }
    let args = SyscallArgs {
        conn_id: LOG_CONN,
        buf,
        count: count_or_iovcnt,
        // SAFETY: helper call without arguments.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: fd as i32,
        service: cur.service,
        syscall,
        vectored,
        has_seq: 0,
        tcp_seq: 0,
        task_ctx: crate::runtime::current_context(cur),
    };
    if SYSCALL_ARGS.insert(&cur.tid, &args, 0).is_err() {
        count(stat::ARGS_MAP_FULL);
    }
}

/// `SyscallArgs::conn_id` of a log write: no socket has inode 0, no `SSL *` is null.
const LOG_CONN: u64 = 0;

/// sendmsg/recvmsg: the iovec array and its length sit in the user's `struct user_msghdr`
/// (msg_iov at byte 16, msg_iovlen at byte 24).
#[inline(always)]
fn enter_msg(ctx: &TracePointContext, syscall: u16) {
    let msg = syscall_arg(ctx, 1);
    // SAFETY: probe reads of user memory fail cleanly on a bad pointer.
    let iov = unsafe { bpf_probe_read_user((msg + 16) as *const u64) };
    let iovlen = unsafe { bpf_probe_read_user((msg + 24) as *const u64) };
    match (iov, iovlen) {
        (Ok(iov), Ok(iovlen)) => enter(syscall_arg(ctx, 0), iov, iovlen, syscall, 1),
        _ => count(stat::READ_USER_FAILED),
    }
}

/// Copy `len` user bytes into the payload at `offset`; false when the read failed.
#[inline(always)]
fn read_user_into(data: *mut u8, offset: u32, len: u32, src: u64) -> bool {
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

/// Common exit path: match the enter probe's arguments and emit what the call moved.
#[inline(always)]
fn exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // Untraced processes stop here, before any hash lookup.
    if !maybe_traced((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: copied out at once.
    let Some(args) = (unsafe { SYSCALL_ARGS.get(&tid) }).copied() else {
        return;
    };
    let _ = SYSCALL_ARGS.remove(&tid);
    if args.syscall == CONNECT {
        return;
    }
    let ret = syscall_ret(ctx);
    let dir = match args.syscall {
        syscall::READ | syscall::READV | syscall::RECVFROM | syscall::RECVMSG => direction::INGRESS,
        _ => direction::EGRESS,
    };
    // Errors move no bytes; a zero-byte receive is the peer's EOF and worth reporting.
    if ret < 0 || (ret == 0 && dir == direction::EGRESS) {
        return;
    }
    emit(pid_tgid, &args, ret, dir);
}

/// Build the event in the per-CPU scratch and send `header + captured`: `moved` bytes went
/// through `args.buf` (or its iovecs). Shared by the syscall and the OpenSSL probes; true
/// when the event was sent.
#[inline(always)]
pub(super) fn emit(pid_tgid: u64, args: &SyscallArgs, ret: i64, dir: u8) -> bool {
    let tid = pid_tgid as u32;
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
    ev.header = EventHeader { kind: event_kind, pid: (pid_tgid >> 32) as u32, tid, service: args.service, ts_ns: now };
    ev.conn_id = args.conn_id;
    ev.enter_ns = args.enter_ns;
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
    let ring = EVENTS.query(aya_ebpf::bindings::BPF_RB_RING_SIZE as u64);
    let sent = if used + size as u64 + CONTROL_RESERVE > ring {
        -1
    } else {
        // SAFETY: `size` is within the scratch value (header + payload + slack).
        unsafe {
            generated::bpf_ringbuf_output(
                core::ptr::addr_of!(EVENTS).cast_mut().cast(),
                (ev as *mut traceo_ebpf_common::DataEvent).cast(),
                size as u64,
                submit_flags(),
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

/// `fn(fd, buf, count)` syscalls: read, write, sendto, recvfrom (args 0, 1, 2).
macro_rules! plain {
    ($enter:ident, $id:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter(syscall_arg(&ctx, 0), syscall_arg(&ctx, 1), syscall_arg(&ctx, 2), $id, 0);
            0
        }
    };
}

/// `fn(fd, iov, iovcnt)` syscalls: readv, writev.
macro_rules! vectored {
    ($enter:ident, $id:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter(syscall_arg(&ctx, 0), syscall_arg(&ctx, 1), syscall_arg(&ctx, 2), $id, 1);
            0
        }
    };
}

macro_rules! exits {
    ($($exit:ident),*) => {$(
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit(&ctx);
            0
        }
    )*};
}

plain!(sys_enter_read, syscall::READ);
plain!(sys_enter_write, syscall::WRITE);
plain!(sys_enter_sendto, syscall::SENDTO);
plain!(sys_enter_recvfrom, syscall::RECVFROM);
vectored!(sys_enter_readv, syscall::READV);
vectored!(sys_enter_writev, syscall::WRITEV);

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    enter_msg(&ctx, syscall::SENDMSG);
    0
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    enter_msg(&ctx, syscall::RECVMSG);
    0
}

/// sendfile64(out_fd, in_fd, offset, count): only the length is ever known.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter(syscall_arg(&ctx, 0), 0, syscall_arg(&ctx, 3), syscall::SENDFILE, 0);
    0
}

exits!(
    sys_exit_read,
    sys_exit_write,
    sys_exit_sendto,
    sys_exit_recvfrom,
    sys_exit_readv,
    sys_exit_writev,
    sys_exit_sendmsg,
    sys_exit_recvmsg,
    sys_exit_sendfile64
);
