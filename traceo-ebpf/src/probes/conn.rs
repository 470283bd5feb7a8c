//! Connection lifecycle: accept, connect (from `syscall_exit`), listen, close, and first
//! sight of an older socket.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use traceo_ebpf_common::{ConnEvent, kind, open_how, stat};

use super::syscall_arg;
use crate::{
    filter::{Current, traced},
    maps::{EVENTS, KNOWN_CONNS, RECENT_CONNS, RECENT_CONNS_LEN, count, submit_flags},
    socket::{SocketFile, WalkError, fill_addresses, socket_of_fd},
};

const EINPROGRESS: i64 = 115;

/// Emit a CONN_OPEN or CONN_CLOSE event with `sock`'s addresses, built in place in the
/// ring buffer (a ConnEvent copy on the stack would not fit beside the callers' frames).
#[inline(always)]
fn emit_conn(cur: &Current, event_kind: u32, sock: &SocketFile, fd: i64, how: u8, ret: i64) {
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(stat::RING_FULL_CONN);
        return;
    };
    // SAFETY: the reservation is sized and aligned for a ConnEvent; zeroing makes it valid.
    let ev = unsafe {
        let p = entry.as_mut_ptr();
        core::ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    ev.header = cur.header(event_kind);
    ev.conn_id = sock.ino;
    ev.ret = ret;
    ev.fd = fd as i32;
    ev.how = how;
    ev.comm = bpf_get_current_comm().unwrap_or_default();
    if event_kind == kind::CONN_OPEN {
        ev.task_ctx = crate::runtime::current_context(cur);
    } else if event_kind == kind::CONN_CLOSE && crate::maps::LOSS_SEEN.get(0).is_some_and(|seen| *seen != 0) {
        // SAFETY: only tests for presence.
        if unsafe { crate::maps::LOSSY_CONNS.get(&sock.ino) }.is_some() {
            ev.flags = traceo_ebpf_common::data_flags::AFTER_LOSS;
            let _ = crate::maps::LOSSY_CONNS.remove(&sock.ino);
        }
    }
    if fill_addresses(sock, ev).is_err() {
        // Still announce the connection: its identity is known, its addresses are not.
        count(stat::SOCKET_WALK_FAILED);
    }
    // A listen is rare and the agent must act on it at once (a `port:` selector's new
    // server is flagged before its first request): wake it, as for an exec.
    let flags =
        if event_kind == kind::LISTEN { aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64 } else { submit_flags() };
    entry.submit(flags);
}

/// Announce `sock` once: accepted/connected sockets here, older ones on first data.
#[inline(always)]
pub fn announce(cur: &Current, sock: &SocketFile, fd: i64, how: u8, ret: i64) {
    let _ = KNOWN_CONNS.insert(&sock.ino, &cur.service, 0);
    emit_conn(cur, kind::CONN_OPEN, sock, fd, how, ret);
}

/// Announce `sock` as EXISTING unless it was announced before.
#[inline(always)]
pub fn announce_if_new(cur: &Current, sock: &SocketFile, fd: i64) {
    let slot = RECENT_CONNS
        .get_ptr_mut(0)
        // SAFETY: this CPU's value, for the duration of the program; the index is masked.
        .map(|recent| unsafe { (*recent).as_mut_ptr().add(sock.ino as usize & (RECENT_CONNS_LEN - 1)) });
    // SAFETY: as above.
    if slot.is_some_and(|p| unsafe { *p } == sock.ino) {
        return;
    }
    // SAFETY: only tests for presence.
    if unsafe { KNOWN_CONNS.get(&sock.ino) }.is_none() {
        announce(cur, sock, fd, open_how::EXISTING, 0);
    }
    if let Some(p) = slot {
        // SAFETY: as above.
        unsafe { *p = sock.ino };
    }
}

/// accept/accept4 returned `fd`: a new connection.
#[inline(always)]
pub fn on_accept(cur: &Current, fd: i64) {
    if fd >= 0 {
        announce_fd(cur, fd, open_how::ACCEPTED, fd);
    }
}

/// connect on `fd` returned `ret`: by then the tuple is filled. A non-blocking connect
/// returns EINPROGRESS with the tuple already set.
#[inline(always)]
pub fn on_connect(cur: &Current, fd: i64, ret: i64) {
    if ret == 0 || ret == -EINPROGRESS {
        announce_fd(cur, fd, open_how::CONNECTED, ret);
    }
}

/// Announce the socket behind `fd` (a new connection); count a failed walk.
#[inline(always)]
fn announce_fd(cur: &Current, fd: i64, how: u8, ret: i64) {
    match socket_of_fd(fd) {
        Ok(sock) => announce(cur, &sock, fd, how, ret),
        Err(WalkError::Failed) => count(stat::SOCKET_WALK_FAILED),
        Err(WalkError::NotSocket) => {}
    }
}

/// listen: every process's (listens are rare), so a `port:` selector matches a server the
/// moment it listens. At exit the socket is bound and listening.
#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    if crate::globals::setting!(trace_all) != 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if pid == crate::globals::setting!(agent_pid) {
        return 0;
    }
    let fd = syscall_arg(&ctx, 0) as i32 as i64;
    let Ok(sock) = socket_of_fd(fd) else { return 0 };
    let service = traced().map_or(traceo_ebpf_common::NO_SERVICE, |t| t.service);
    let cur = Current { pid, tid: pid_tgid as u32, service };
    emit_conn(&cur, kind::LISTEN, &sock, fd, 0, 0);
    0
}

/// close: at enter the fd still points at the socket.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some(cur) = traced() else { return 0 };
    let fd = syscall_arg(&ctx, 0) as i32 as i64;
    let Ok(sock) = socket_of_fd(fd) else { return 0 };
    // SAFETY: only tests for presence.
    if unsafe { KNOWN_CONNS.get(&sock.ino) }.is_some() {
        let _ = KNOWN_CONNS.remove(&sock.ino);
        emit_conn(&cur, kind::CONN_CLOSE, &sock, fd, 0, 0);
    }
    0
}
