//! The programs in the kernel object and where each attaches. Tracepoint program names equal
//! tracepoint names, so these tables are the whole attach plan.

/// The empty program the benchmark attaches everywhere instead (its cost floor).
pub const FLOOR: &str = "floor";

/// (tracepoint category, program and tracepoint name)
pub const PROGRAMS: &[(&str, &str)] = &[
    ("syscalls", "sys_exit_accept"),
    ("syscalls", "sys_exit_accept4"),
    ("syscalls", "sys_enter_connect"),
    ("syscalls", "sys_exit_connect"),
    ("syscalls", "sys_enter_close"),
    ("syscalls", "sys_enter_listen"),
    ("syscalls", "sys_enter_read"),
    ("syscalls", "sys_exit_read"),
    ("syscalls", "sys_enter_write"),
    ("syscalls", "sys_exit_write"),
    ("syscalls", "sys_enter_readv"),
    ("syscalls", "sys_exit_readv"),
    ("syscalls", "sys_enter_writev"),
    ("syscalls", "sys_exit_writev"),
    ("syscalls", "sys_enter_sendto"),
    ("syscalls", "sys_exit_sendto"),
    ("syscalls", "sys_enter_recvfrom"),
    ("syscalls", "sys_exit_recvfrom"),
    ("syscalls", "sys_enter_sendmsg"),
    ("syscalls", "sys_exit_sendmsg"),
    ("syscalls", "sys_enter_recvmsg"),
    ("syscalls", "sys_exit_recvmsg"),
    ("syscalls", "sys_enter_sendfile64"),
    ("syscalls", "sys_exit_sendfile64"),
    ("sched", "sched_process_fork"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
];

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
