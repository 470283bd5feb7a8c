//! The programs in the kernel object and where each attaches. Tracepoint program names equal
//! tracepoint names, so these tables are the whole attach plan.

/// (tracepoint category, program and tracepoint name): the egress syscalls' entries (their
/// time only), close (its fd must still be open), listen (every process's) and the process
/// lifecycle.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_enter_writev"),
    ("syscalls", "sys_enter_sendto"),
    ("syscalls", "sys_enter_sendmsg"),
    ("syscalls", "sys_enter_sendfile64"),
    ("syscalls", "sys_enter_close"),
    ("syscalls", "sys_enter_listen"),
    ("sched", "sched_process_fork"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
];

/// (raw tracepoint, program): `sys_exit` takes every data syscall, accept and connect, with
/// their arguments read from the saved registers (no enter program).
pub const RAW_PROGRAMS: &[(&str, &str)] = &[("sys_exit", "sys_exit")];

/// The empty programs the benchmark attaches instead, to the same hooks (its cost floor).
pub const FLOOR: &str = "floor";
pub const RAW_FLOOR: &str = "floor_sys_exit";
/// The least capturing program, at syscall exit in place of `RAW_FLOOR` (the bench's bound);
/// loaded only when attached (`Probes::attach_floor`), not by `load`.
pub const RAW_BOUND: &str = "bound_sys_exit";

/// One direction of OpenSSL's I/O in a libssl file: its public functions with their entry
/// programs, and the internal function both call (see `tls::callee`), probed in their place
/// when found, with the `_ex` form's entry program (the count comes back through the fourth
/// argument in both). `SSL_RETURN` is attached as a uretprobe wherever an entry program is.
pub struct SslCall {
    /// Required: a library without it is not OpenSSL's libssl.
    pub plain: (&'static str, &'static str),
    /// OpenSSL 1.1.1 and later.
    pub ex: (&'static str, &'static str),
    /// OpenSSL's name for the function both call (not exported: found by the call).
    pub internal: &'static str,
}

pub const SSL_CALLS: [SslCall; 2] = [
    SslCall { plain: ("SSL_write", "ssl_write"), ex: ("SSL_write_ex", "ssl_write_ex"), internal: "ssl_write_internal" },
    SslCall { plain: ("SSL_read", "ssl_read"), ex: ("SSL_read_ex", "ssl_read_ex"), internal: "ssl_read_internal" },
];

/// The uretprobe program shared by every OpenSSL entry program's function.
pub const SSL_RETURN: &str = "ssl_return";

/// asyncio task creation in a CPython `_asyncio` module: the programs on
/// `runtime::python::TASK_INIT_SYMBOL`, the return probe first (attached in this order).
pub const TASK_INIT: &[&str] = &["py_task_init_return", "py_task_init"];

/// `contextvars.copy_context` in a CPython `_contextvars` module (`--thread-pools`): only a
/// return program (`runtime::python::CONTEXT_COPY_SYMBOL`).
pub const CONTEXT_COPY: &[&str] = &["py_context_copy_return"];

/// nginx's `ngx_http_upstream_init`: return, then entry program.
pub const NGINX_UPSTREAM_INIT: &[&str] = &["ngx_upstream_init_return", "ngx_upstream_init"];

/// Every uprobe program, for loading.
pub fn uprobe_programs() -> impl Iterator<Item = &'static str> {
    let runtime = [TASK_INIT, CONTEXT_COPY, NGINX_UPSTREAM_INIT].into_iter().flatten().copied();
    SSL_CALLS.iter().flat_map(|c| [c.plain.1, c.ex.1]).chain([SSL_RETURN]).chain(runtime)
}
