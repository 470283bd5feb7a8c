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

/// OpenSSL functions probed in each libssl file: (symbol, entry program). `SSL_RETURN` is
/// attached to every one of them as a uretprobe. The first two are required: a library
/// without them is not OpenSSL's libssl.
pub const SSL_FUNCTIONS: &[(&str, &str)] = &[
    ("SSL_write", "ssl_write"),
    ("SSL_read", "ssl_read"),
    ("SSL_write_ex", "ssl_write_ex"),
    ("SSL_read_ex", "ssl_read_ex"),
];

/// The uretprobe program shared by every `SSL_FUNCTIONS` entry.
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
    SSL_FUNCTIONS.iter().map(|(_, program)| *program).chain([SSL_RETURN]).chain(runtime)
}
