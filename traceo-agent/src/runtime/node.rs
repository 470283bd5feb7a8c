//! Node.js: injecting `node_agent.js` into a running node process through its inspector, so
//! each outbound write made while handling an inbound request is announced to the agent's
//! marker sink (see the script for what it sends).
//!
//! The inspector is Node's debugger: whoever reaches it runs code in the process. So every
//! step is checked before the next, and an inspector the agent opened is always closed again:
//! 1. Positive identification ([`identify`]): the executable is named `node`/`nodejs` and
//!    defines `node::Start`. SIGUSR1's default action kills a process, so nothing else is
//!    ever signalled.
//! 2. Same network namespace as the agent: the inspector listens on the process's 127.0.0.1.
//! 3. An inspector already on 127.0.0.1:9229 owned by the process (found through the
//!    listening socket's inode in its fds) is used as is and left open (the operator opened
//!    it); one owned by another process is a refusal. Flags that move or disable the
//!    inspector (`--inspect*`, `--inspect-port`, `--disable-sigusr1`, `--inspect-publish-uid`
//!    without `http`, on the command line or in `NODE_OPTIONS`) are refusals when no such
//!    inspector listens.
//! 4. Before SIGUSR1: the process catches it (`SigCgt`, waited for up to 500 ms since Node
//!    installs its handler just after start) and JavaScript has no handler of its own
//!    (`process.on('SIGUSR1')` goes through libuv, whose `uv__signal_tree` is read from
//!    /proc/PID/mem: such a handler would run instead of the inspector opening). The signal
//!    goes through a pidfd taken before the checks, so a reused pid is never signalled.
//! 5. After SIGUSR1, 127.0.0.1:9229 must listen and be the process's own socket (checked
//!    again right before every connection); then the inspector itself must say `process.pid`
//!    is the process. Nothing else is evaluated through a session that failed these checks.
//! 6. The inspector the agent opened is closed with `process._debugEnd()` on every path, and
//!    9229 checked to be closed; if it opens only after the agent gave up waiting, or a close
//!    fails, a watcher keeps closing it (through checked sessions only) for a while.
//!
//! The script's output never leaves this module except as its short status.

mod inspector;

use std::{
    fs,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::python::has_symbol;
use crate::procfs;

/// Where SIGUSR1 opens the inspector (and the only place this module talks to one).
pub const INSPECTOR_PORT: u16 = 9229;
/// `node::Start(int, char**)`: defined by every Node.js build, by nothing else.
const NODE_SYMBOL: &str = "_ZN4node5StartEiPPc";
/// libuv's tree of started `uv_signal_t` handles (what `process.on(signal)` adds to).
const SIGNAL_TREE_SYMBOL: &str = "uv__signal_tree";
/// `uv_signal_t` (libuv 1.x, ABI-stable, LP64): `signum`, `tree_entry.rbe_left`/`rbe_right`.
const UV_SIGNAL_SIGNUM: u64 = 104;
const UV_SIGNAL_LEFT: u64 = 112;
const UV_SIGNAL_RIGHT: u64 = 120;
/// The script; `__TRACEO_SINK_PORT__` is replaced by the sink's port.
const SCRIPT: &str = include_str!("node_agent.js");

const HANDLER_WAIT: Duration = Duration::from_millis(500);
const OPEN_WAIT: Duration = Duration::from_secs(3);
const CLOSE_WAIT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a watcher waits for an inspector that opens after the agent stopped waiting.
const LATE_OPEN_WATCH: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);

/// The node executable of `pid` (through /proc/PID/root), if positively identified as Node.js.
pub fn identify(pid: u32) -> Result<PathBuf, String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("cannot read /proc/{pid}/exe: {e}"))?;
    let shown = exe.to_string_lossy();
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    if name != "node" && name != "nodejs" {
        return Err(format!("{shown} is not node (its name is not node or nodejs)"));
    }
    // The symbols of the image the process runs, even if the file was replaced since.
    if !has_symbol(Path::new(&format!("/proc/{pid}/exe")), NODE_SYMBOL) {
        return Err(format!("{shown} does not define node::Start: not Node.js"));
    }
    Ok(Path::new(&format!("/proc/{pid}/root")).join(exe.strip_prefix("/").unwrap_or(&exe)))
}

/// Inject the marker script into `pid`, whose markers go to 127.0.0.1:`sink_port`. Ok(()) once
/// the script reports "injected" or "already injected"; Err(why) otherwise.
pub fn inject(pid: u32, sink_port: u16) -> Result<(), String> {
    let started = procfs::start_time(pid).ok_or_else(|| format!("pid {pid} is gone"))?;
    // Taken first: the signal goes to this process, not to one that reuses its pid later.
    let pidfd = PidFd::open(pid)?;
    identify(pid)?;
    same_network_namespace(pid)?;
    match inspector_owner() {
        Owner::Nobody => {}
        Owner::Pid(owner) if owner == pid => {
            // The operator's inspector (--inspect, inspector.open()): used, never closed.
            let mut session = open_session(pid)?;
            return run_script(&mut session, sink_port);
        }
        Owner::Pid(other) => return Err(format!("inspector port {INSPECTOR_PORT} is in use by pid {other}")),
        Owner::Unknown => {
            return Err(format!("inspector port {INSPECTOR_PORT} is in use by a process not visible here"));
        }
    }
    if let Some(why) = InspectorFlags::of(pid).refusal() {
        return Err(why);
    }
    wait_for_sigusr1_caught(pid)?;
    no_application_sigusr1_handler(pid)?;
    if procfs::start_time(pid) != Some(started) {
        return Err(format!("pid {pid} exited during the checks"));
    }
    pidfd.send_sigusr1()?;
    wait_for_own_inspector(pid, started)?;
    let mut session = open_session(pid);
    let outcome = match &mut session {
        Ok(session) => run_script(session, sink_port),
        Err(why) => Err(why.clone()),
    };
    let closed = close_inspector(pid, session.ok()).inspect_err(|why| {
        log::error!("{why}");
        watch_and_close(pid, started, true);
    });
    match (outcome, closed) {
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(close)) => Err(close),
        (Err(why), Ok(())) => Err(why),
        (Err(why), Err(close)) => Err(format!("{why}; {close}")),
    }
}

/// A pidfd of the target (SIGUSR1 through it reaches this process or none).
struct PidFd(Option<std::os::fd::OwnedFd>);

impl PidFd {
    fn open(pid: u32) -> Result<PidFd, String> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain syscall; the fd it returns is owned here.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd >= 0 {
            // SAFETY: a fresh fd nobody else owns.
            return Ok(PidFd(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })));
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ESRCH) => Err(format!("pid {pid} is gone")),
            // Kernels before 5.3: libc::kill after the start-time check.
            e if e.raw_os_error() == Some(libc::ENOSYS) => Ok(PidFd(None)),
            e => Err(format!("cannot open pid {pid}: {e}")),
        }
    }

    fn send_sigusr1(&self) -> Result<(), String> {
        use std::os::fd::AsRawFd as _;
        let Some(fd) = &self.0 else {
            return Err("this kernel has no pidfd: SIGUSR1 not sent (pid reuse could not be ruled out)".into());
        };
        // SAFETY: plain syscall on an fd owned here; no siginfo.
        let rc = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGUSR1, std::ptr::null::<u8>(), 0)
        };
        if rc != 0 {
            return Err(format!("cannot send SIGUSR1: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn same_network_namespace(pid: u32) -> Result<(), String> {
    let theirs = fs::read_link(format!("/proc/{pid}/ns/net")).map_err(|e| format!("cannot read its netns: {e}"))?;
    let ours = fs::read_link("/proc/self/ns/net").map_err(|e| format!("cannot read the agent's netns: {e}"))?;
    if theirs != ours {
        return Err(format!(
            "pid {pid} is in another network namespace ({}): its inspector is out of the agent's reach",
            theirs.display()
        ));
    }
    Ok(())
}

/// Who listens on the inspector port in the agent's network namespace (the target's too,
/// once [`same_network_namespace`] passed).
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    Nobody,
    Pid(u32),
    /// A listener whose socket no visible process holds.
    Unknown,
}

fn inspector_owner_among(pids: &[u32]) -> Owner {
    let listening: std::collections::HashMap<u64, u16> =
        procfs::own_namespace_listening_sockets().into_iter().filter(|&(_, port)| port == INSPECTOR_PORT).collect();
    if listening.is_empty() {
        return Owner::Nobody;
    }
    pids.iter()
        .copied()
        .find(|&p| !procfs::listening_ports(p, &listening).is_empty())
        .map_or(Owner::Unknown, Owner::Pid)
}

/// The owner of 9229, the target itself first when it holds the socket.
fn inspector_owner_of(pid: u32) -> Owner {
    match inspector_owner_among(&[pid]) {
        Owner::Unknown => inspector_owner(),
        owner => owner,
    }
}

fn inspector_owner() -> Owner {
    inspector_owner_among(&procfs::pids())
}

/// Inspector-related flags of the command line and `NODE_OPTIONS`.
#[derive(Debug, Default, PartialEq, Eq)]
struct InspectorFlags {
    /// `--inspect`, `--inspect-brk`, `--inspect-wait` (as written).
    inspect: Option<String>,
    disable_sigusr1: bool,
    /// `--inspect-port`/`--debug-port` naming anything but 127.0.0.1:9229 (as written).
    moved: Option<String>,
    /// `--inspect-publish-uid` without `http` (as written): no `/json/list` to find the
    /// inspector's WebSocket through, to use or to close it.
    unpublished: Option<String>,
}

impl InspectorFlags {
    fn of(pid: u32) -> InspectorFlags {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let node_options = environ
            .split(|&b| b == 0)
            .find_map(|v| v.strip_prefix(b"NODE_OPTIONS="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let args: Vec<String> =
            cmdline.split(|&b| b == 0).skip(1).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        InspectorFlags::parse(args.iter().map(String::as_str).chain(node_options.split_whitespace()))
    }

    /// Every argument is looked at, the application's too: a false alarm costs a refusal only.
    fn parse<'a>(args: impl Iterator<Item = &'a str>) -> InspectorFlags {
        let mut flags = InspectorFlags::default();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let (name, value) = match arg.split_once('=') {
                Some((name, value)) => (name.replace('_', "-"), Some(value.to_owned())),
                None => (arg.replace('_', "-"), None),
            };
            match name.as_str() {
                "--inspect" | "--inspect-brk" | "--inspect-wait" | "--debug" | "--debug-brk" => {
                    flags.inspect.get_or_insert_with(|| arg.to_owned());
                }
                "--disable-sigusr1" => flags.disable_sigusr1 = true,
                "--inspect-port" | "--debug-port" => {
                    let value = value.or_else(|| args.next().map(str::to_owned)).unwrap_or_default();
                    let port = value.rsplit_once(':').map_or(value.as_str(), |(_, p)| p);
                    let host = value.rsplit_once(':').map(|(h, _)| h);
                    let default_host = matches!(host, None | Some("127.0.0.1") | Some("localhost"));
                    if port != INSPECTOR_PORT.to_string() || !default_host {
                        flags.moved.get_or_insert_with(|| format!("{name}={value}"));
                    }
                }
                "--inspect-publish-uid" => {
                    let value = value.or_else(|| args.next().map(str::to_owned)).unwrap_or_default();
                    // Node splits the value on ',' and trims nothing.
                    if !value.split(',').any(|destination| destination == "http") {
                        flags.unpublished.get_or_insert_with(|| format!("{name}={value}"));
                    }
                }
                _ => {}
            }
        }
        flags
    }

    fn refusal(&self) -> Option<String> {
        if self.disable_sigusr1 {
            return Some(format!(
                "started with --disable-sigusr1 and no inspector of its own listens on 127.0.0.1:{INSPECTOR_PORT}"
            ));
        }
        if let Some(flag) = &self.inspect {
            return Some(format!(
                "started with {flag} but its inspector does not listen on 127.0.0.1:{INSPECTOR_PORT}"
            ));
        }
        if let Some(flag) = &self.moved {
            return Some(format!("its inspector is moved ({flag}); only 127.0.0.1:{INSPECTOR_PORT} is supported"));
        }
        if let Some(flag) = &self.unpublished {
            return Some(format!(
                "started with {flag}: its inspector would serve no /json/list, so it could neither be used \
                 nor closed again"
            ));
        }
        None
    }
}

/// The caught-signals mask of /proc/PID/status.
fn caught_signals(status: &str) -> Option<u64> {
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    u64::from_str_radix(mask.trim(), 16).ok()
}

/// The pid `pid` has in its own pid namespace (the last NSpid entry), what `process.pid` says.
fn namespace_pid(status: &str) -> Option<u32> {
    let ids = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    ids.split_whitespace().last()?.parse().ok()
}

fn sigusr1_caught(status: &str) -> bool {
    caught_signals(status).is_some_and(|mask| mask & (1 << (libc::SIGUSR1 - 1)) != 0)
}

/// Node installs its SIGUSR1 handler ~10 ms after start: wait for it before refusing.
fn wait_for_sigusr1_caught(pid: u32) -> Result<(), String> {
    let deadline = Instant::now() + HANDLER_WAIT;
    loop {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| format!("pid {pid} is gone"))?;
        if sigusr1_caught(&status) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("pid {pid} does not catch SIGUSR1 (its default action would kill it)"));
        }
        std::thread::sleep(POLL);
    }
}

/// The address of `symbol` in `path` and, for a position-independent image, its lowest loaded
/// page (to turn the address into a runtime one).
fn symbol_address(path: &Path, symbol: &str) -> Option<(u64, Option<u64>)> {
    use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
    let file = fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let address = elf.symbols().chain(elf.dynamic_symbols()).find(|s| s.is_definition() && s.name() == Ok(symbol))?;
    let pie = (elf.kind() == object::ObjectKind::Dynamic)
        .then(|| elf.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff);
    Some((address.address(), pie))
}

/// Where the executable's first page is mapped in `pid` (a PIE's load address).
fn load_base(pid: u32) -> Option<u64> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (range, offset, path) = (cols.first()?, cols.get(2)?, cols.get(5..)?.join(" "));
        (Path::new(&path) == exe && u64::from_str_radix(offset, 16).ok()? == 0)
            .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())?
    })
}

/// JavaScript's `process.on('SIGUSR1')` replaces Node's handler with libuv's: SIGUSR1 then
/// runs the application's handler and opens nothing. Its `uv_signal_t` sits in libuv's tree.
fn no_application_sigusr1_handler(pid: u32) -> Result<(), String> {
    let cannot = |why: String| format!("cannot check for an application SIGUSR1 handler: {why}");
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let (address, pie) = symbol_address(&exe, SIGNAL_TREE_SYMBOL)
        .ok_or_else(|| cannot(format!("no {SIGNAL_TREE_SYMBOL} symbol (stripped node?)")))?;
    let address = match pie {
        None => address,
        Some(low) => load_base(pid).ok_or_else(|| cannot("its load address is unknown".into()))? + address - low,
    };
    let mem = fs::File::open(format!("/proc/{pid}/mem")).map_err(|e| cannot(e.to_string()))?;
    let read = |at: u64| -> Result<u64, String> {
        let mut word = [0u8; 8];
        mem.read_exact_at(&mut word, at).map_err(|e| cannot(format!("reading its memory: {e}")))?;
        Ok(u64::from_le_bytes(word))
    };
    let mut stack = vec![read(address)?];
    let mut seen = 0;
    while let Some(node) = stack.pop() {
        if node == 0 {
            continue;
        }
        seen += 1;
        if seen > 4096 {
            return Err(cannot("libuv's signal tree is implausibly large".into()));
        }
        if read(node + UV_SIGNAL_SIGNUM)? as u32 as i32 == libc::SIGUSR1 {
            return Err("SIGUSR1 has an application handler (process.on('SIGUSR1')): \
                        the signal would run it, not open the inspector"
                .into());
        }
        stack.push(read(node + UV_SIGNAL_LEFT)?);
        stack.push(read(node + UV_SIGNAL_RIGHT)?);
    }
    Ok(())
}

/// After SIGUSR1: wait for 127.0.0.1:9229 to be `pid`'s. If it does not open in time, a
/// watcher closes it should it open later.
fn wait_for_own_inspector(pid: u32, started: u64) -> Result<(), String> {
    let deadline = Instant::now() + OPEN_WAIT;
    loop {
        match inspector_owner_of(pid) {
            Owner::Pid(owner) if owner == pid => return Ok(()),
            Owner::Pid(other) => {
                return Err(format!("inspector port {INSPECTOR_PORT} was taken by pid {other} as SIGUSR1 was sent"));
            }
            Owner::Unknown => {
                return Err(format!("inspector port {INSPECTOR_PORT} was taken by a process not visible here"));
            }
            Owner::Nobody => {}
        }
        if procfs::start_time(pid) != Some(started) {
            return Err(format!("pid {pid} exited after SIGUSR1"));
        }
        if Instant::now() >= deadline {
            watch_and_close(pid, started, false);
            return Err(format!(
                "the inspector did not open within {} s of SIGUSR1 (it will be closed if it opens later)",
                OPEN_WAIT.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Close, for up to [`LATE_OPEN_WATCH`], the inspector the agent opened in `pid` (the process
/// started at `started`, which the agent signalled): `open_now` false, a loaded process may
/// open it after the agent stopped waiting; true, a close failed and it is still open. Every
/// attempt goes through a session that passed [`open_session`]'s checks; once the inspector
/// is seen closed the watch ends, so one the application opens later is left alone.
fn watch_and_close(pid: u32, started: u64, open_now: bool) {
    let watch = move || {
        let deadline = Instant::now() + LATE_OPEN_WATCH;
        let mut opened = open_now;
        let mut last = None;
        while Instant::now() < deadline && procfs::start_time(pid) == Some(started) {
            if inspector_owner_of(pid) == Owner::Pid(pid) {
                opened = true;
                match close_inspector(pid, None) {
                    Ok(()) => {
                        log::info!("node pid {pid}: the inspector the agent opened is closed (retried)");
                        return;
                    }
                    Err(why) => last = Some(why),
                }
            } else if opened {
                log::info!("node pid {pid}: the inspector the agent opened is closed");
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let still_open = || procfs::start_time(pid) == Some(started) && inspector_owner_of(pid) == Owner::Pid(pid);
        if let Some(why) = last.filter(|_| still_open()) {
            log::error!("node pid {pid}: gave up closing it after {} s: {why}", LATE_OPEN_WATCH.as_secs());
        }
    };
    if let Err(e) = std::thread::Builder::new().name("node-inspector-watch".into()).spawn(watch) {
        log::error!("node pid {pid}: cannot watch for a late inspector on 127.0.0.1:{INSPECTOR_PORT}: {e}");
    }
}

/// Ok when 127.0.0.1:9229 is a socket `pid` holds.
fn owns_inspector_port(pid: u32) -> Result<(), String> {
    match inspector_owner_of(pid) {
        Owner::Pid(owner) if owner == pid => Ok(()),
        Owner::Pid(other) => Err(format!("127.0.0.1:{INSPECTOR_PORT} is pid {other}'s, not {pid}'s")),
        Owner::Unknown => Err(format!("127.0.0.1:{INSPECTOR_PORT} is held by a process not visible here")),
        Owner::Nobody => Err(format!("nothing listens on 127.0.0.1:{INSPECTOR_PORT}")),
    }
}

/// A session with `pid`'s inspector: 9229 checked to be `pid`'s socket right before each
/// connection, then the inspector must say `process.pid` is `pid`. Nothing but that
/// `process.pid` is ever evaluated through a session that did not come from here.
fn open_session(pid: u32) -> Result<inspector::Session, String> {
    owns_inspector_port(pid)?;
    let path = inspector::debugger_path(INSPECTOR_PORT, IO_TIMEOUT)?;
    owns_inspector_port(pid)?;
    let mut session = inspector::Session::open(INSPECTOR_PORT, &path, IO_TIMEOUT)?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| format!("pid {pid} is gone"))?;
    let expected = namespace_pid(&status).unwrap_or(pid);
    let answer = session.evaluate("process.pid", false, IO_TIMEOUT)?;
    match inspector::value(&answer).and_then(Value::as_u64) {
        Some(got) if got == expected as u64 => Ok(session),
        Some(got) => Err(format!("the inspector on 127.0.0.1:{INSPECTOR_PORT} is process {got}'s, not {pid}'s")),
        None => Err("the inspector did not tell its process.pid".into()),
    }
}

fn run_script(session: &mut inspector::Session, sink_port: u16) -> Result<(), String> {
    let script = SCRIPT.replace("__TRACEO_SINK_PORT__", &sink_port.to_string());
    let answer = session.evaluate(&script, true, IO_TIMEOUT)?;
    match inspector::value(&answer).and_then(Value::as_str) {
        Some("injected" | "already injected") => Ok(()),
        Some("no require") => Err("the inspector's context has no require: the script cannot load modules".into()),
        _ if answer.get("exceptionDetails").is_some() => Err("the script threw an exception".into()),
        _ => Err("the script returned an unexpected value".into()),
    }
}

/// Close the inspector the agent opened (`process._debugEnd()`) and check 9229 is closed.
/// `session`: one from [`open_session`]; without one, a fresh one from it (never a session
/// that did not pass its checks: if none does, nothing is evaluated and this is an Err).
fn close_inspector(pid: u32, session: Option<inspector::Session>) -> Result<(), String> {
    let session = match session {
        Some(session) => Ok(session),
        None => open_session(pid),
    };
    let reached = session.map(|mut s| s.evaluate_briefly("process._debugEnd()", Duration::from_millis(500)));
    let deadline = Instant::now() + CLOSE_WAIT;
    while inspector_owner_of(pid) == Owner::Pid(pid) {
        if Instant::now() >= deadline {
            let how = match reached {
                Ok(()) => "process._debugEnd() did not close it".to_owned(),
                Err(why) => format!(
                    "it cannot be closed safely: no session to it passed the pid and socket checks ({why}), \
                     so nothing was evaluated in it"
                ),
            };
            return Err(format!(
                "THE INSPECTOR OF PID {pid} IS STILL OPEN on 127.0.0.1:{INSPECTOR_PORT}: {how}; \
                 anything in its network namespace can run code in it until it is closed or the process \
                 restarted (the agent retries closing it for {} s)",
                LATE_OPEN_WATCH.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tnode\nTgid:\t4242\nNSpid:\t4242\t17\nSigBlk:\t0000000000000000\n\
                          SigIgn:\t0000000001001000\nSigCgt:\t0000000188004602\n";

    #[test]
    fn status_gives_caught_signals_and_the_namespace_pid() {
        assert_eq!(caught_signals(STATUS), Some(0x188004602));
        assert!(sigusr1_caught(STATUS), "bit 9 (SIGUSR1 = 10) is set in 0x...602");
        assert!(!sigusr1_caught(&STATUS.replace("188004602", "188004402")));
        assert!(!sigusr1_caught("Name:\tsleep\n"));
        assert_eq!(namespace_pid(STATUS), Some(17));
        assert_eq!(namespace_pid("NSpid:\t99\n"), Some(99));
    }

    #[test]
    fn this_process_status_parses() {
        let status = fs::read_to_string("/proc/self/status").expect("status");
        assert!(caught_signals(&status).is_some());
        assert_eq!(namespace_pid(&status).is_some(), status.contains("NSpid:"));
    }

    #[test]
    fn flags_that_open_move_or_disable_the_inspector() {
        let parse = |args: &[&str]| InspectorFlags::parse(args.iter().copied());
        assert_eq!(parse(&["server.js", "--port", "80"]), InspectorFlags::default());
        assert_eq!(parse(&["--inspect-port=9229", "a.js"]).refusal(), None);
        assert_eq!(parse(&["--inspect-port", "127.0.0.1:9229"]).refusal(), None);
        assert_eq!(parse(&["--inspect=0.0.0.0:9230", "a.js"]).inspect.as_deref(), Some("--inspect=0.0.0.0:9230"));
        assert_eq!(parse(&["--inspect-brk"]).inspect.as_deref(), Some("--inspect-brk"));
        assert!(parse(&["--disable-sigusr1"]).disable_sigusr1);
        assert!(parse(&["--disable_sigusr1"]).disable_sigusr1);
        assert_eq!(parse(&["--inspect-port", "9230"]).moved.as_deref(), Some("--inspect-port=9230"));
        assert_eq!(parse(&["--debug-port=0.0.0.0:9229"]).moved.as_deref(), Some("--debug-port=0.0.0.0:9229"));
        assert!(parse(&["--disable-sigusr1"]).refusal().is_some_and(|r| r.contains("--disable-sigusr1")));
        assert!(parse(&["--inspect"]).refusal().is_some_and(|r| r.contains("--inspect")));
        // --inspect-publish-uid: refused unless `http` is one of its destinations.
        for published in [&["--inspect-publish-uid=stderr,http"][..], &["--inspect-publish-uid", "http"]] {
            assert_eq!(parse(published), InspectorFlags::default(), "{published:?}");
        }
        assert_eq!(
            parse(&["--inspect-publish-uid=stderr"]).unpublished.as_deref(),
            Some("--inspect-publish-uid=stderr")
        );
        assert_eq!(
            parse(&["--inspect_publish_uid", "stderr"]).unpublished.as_deref(),
            Some("--inspect-publish-uid=stderr")
        );
        assert!(parse(&["--inspect-publish-uid="]).unpublished.is_some());
        assert!(parse(&["--inspect-publish-uid=stderr, http"]).unpublished.is_some(), "Node trims nothing");
        // NODE_OPTIONS' words come after the command line's: any occurrence without http refuses.
        assert!(parse(&["a.js", "--inspect-publish-uid=http", "--inspect-publish-uid=stderr"]).unpublished.is_some());
        assert!(
            parse(&["--inspect-publish-uid=stderr"])
                .refusal()
                .is_some_and(|r| r.contains("--inspect-publish-uid=stderr") && r.contains("/json/list"))
        );
    }

    #[test]
    fn script_gets_the_sink_port() {
        let script = SCRIPT.replace("__TRACEO_SINK_PORT__", "4321");
        assert!(script.contains("connect(4321)"));
        assert!(!script.contains("__TRACEO"));
    }

    #[test]
    fn this_process_is_not_node() {
        let me = std::process::id();
        assert!(identify(me).is_err());
        // An unrelated executable never gets as far as a signal.
        assert!(inject(me, 1).is_err_and(|why| why.contains("not node")));
    }
}
