//! nginx as a reverse proxy: `ngx_http_upstream_init(r)` runs once per proxied request, and
//! inside it nginx connects to the upstream (a new connection) or writes the upstream
//! request (a kept-alive one). While it runs, the thread's context is the client
//! connection `r` serves, so those syscalls name it. One trap per proxied request.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use traceo_ebpf_common::{CONN_CTX, stat};

use crate::{
    filter::traced,
    maps::{THREAD_CTX, count},
    socket::{WalkError, socket_of_fd},
};

/// `ngx_http_request_t.connection` and `ngx_connection_t.fd`: the first members of both
/// structs, unchanged for as long as nginx has had upstreams.
const REQUEST_CONNECTION: u64 = 8;
const CONNECTION_FD: u64 = 24;

#[uprobe]
pub fn ngx_upstream_init(ctx: ProbeContext) -> u32 {
    let Some(cur) = traced() else { return 0 };
    let r: u64 = ctx.arg(0).unwrap_or(0);
    // SAFETY: probe reads of user memory fail cleanly on a bad pointer.
    let Ok(conn) = (unsafe { bpf_probe_read_user((r + REQUEST_CONNECTION) as *const u64) }) else {
        count(stat::RUNTIME_READ_FAILED);
        return 0;
    };
    let Ok(fd) = (unsafe { bpf_probe_read_user((conn + CONNECTION_FD) as *const i32) }) else {
        count(stat::RUNTIME_READ_FAILED);
        return 0;
    };
    match socket_of_fd(fd as i64) {
        Ok(sock) => {
            let _ = THREAD_CTX.insert(&cur.tid, &(sock.ino | CONN_CTX), 0);
        }
        Err(WalkError::NotSocket) => {}
        Err(WalkError::Failed) => count(stat::SOCKET_WALK_FAILED),
    }
    0
}

#[uretprobe]
pub fn ngx_upstream_init_return(_ctx: RetProbeContext) -> u32 {
    let Some(cur) = traced() else { return 0 };
    let _ = THREAD_CTX.remove(&cur.tid);
    0
}
