//! What the agent reads from /proc: process names, executables, parents, listening ports.

use std::{collections::HashMap, fs, path::Path};

mod sock_diag;

/// All process ids, skipping threads.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Whether process (or thread) `pid` still exists.
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn comm(pid: u32) -> Option<String> {
    Some(fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim_end_matches('\n').to_owned())
}

pub fn exe(pid: u32) -> Option<String> {
    Some(fs::read_link(format!("/proc/{pid}/exe")).ok()?.to_string_lossy().into_owned())
}

/// Parent pid from /proc/PID/stat (the comm field may contain spaces and parentheses).
pub fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// When the process started (clock ticks after boot, /proc/PID/stat field 22): with the pid,
/// it names one process for good (a pid is reused, a start time with it is not).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(19)?.parse().ok()
}

/// The thread-group id of `id`: differs from `id` when `id` is a thread, not a process.
pub fn tgid(id: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{id}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:"))?.trim().parse().ok()
}

/// Listening TCP sockets of every network namespace: inode -> port. Each other namespace's
/// tables are read through one of its processes (/proc/PID/net/tcp{,6} shows the namespace of
/// PID), so `port:N` finds servers in containers too; socket inodes are unique host-wide, so
/// the namespaces' tables merge without clashes.
pub fn listening_sockets() -> HashMap<u64, u16> {
    let mut out = own_namespace_listening_sockets();
    let mut namespaces = std::collections::HashSet::new();
    let mut tables = vec![];
    if let Ok(own) = fs::read_link("/proc/self/ns/net") {
        namespaces.insert(own);
    }
    for pid in pids() {
        let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/net")) else { continue };
        if namespaces.insert(ns) {
            tables.push(format!("/proc/{pid}/net"));
        }
    }
    for dir in tables {
        for table in ["tcp", "tcp6"] {
            read_listening(&format!("{dir}/{table}"), &mut out);
        }
    }
    out
}

/// A `tcp`/`tcp6` table's listening sockets, read a line at a time: with thousands of
/// connections a table is megabytes, and reading it whole at every rescan kept that much
/// resident in the scanning thread's heap.
fn read_listening(path: &str, out: &mut HashMap<u64, u16>) {
    let Ok(file) = fs::File::open(path) else { return };
    let mut reader = std::io::BufReader::new(file);
    let mut line = String::new();
    let mut header = true;
    loop {
        line.clear();
        match std::io::BufRead::read_line(&mut reader, &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if header => header = false,
            Ok(_) => parse_listening_row(&line, out),
        }
    }
}

/// Listening TCP sockets of the agent's own network namespace: inode -> port. Asked of the
/// kernel (only listeners are walked); /proc, which walks every connection, if that fails.
pub fn own_namespace_listening_sockets() -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    if let Err(e) = sock_diag::own_listening(&mut out) {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!("listening sockets are read from /proc (slower): sock_diag failed ({e})");
        }
        read_own_namespace_tables(&mut out);
    }
    out
}

fn read_own_namespace_tables(out: &mut HashMap<u64, u16>) {
    for table in ["tcp", "tcp6"] {
        read_listening(&format!("/proc/self/net/{table}"), out);
    }
}

/// Rows after the header: `sl local_address rem_address st ... inode`; LISTEN is state 0A.
#[cfg(test)]
fn parse_listening(text: &str, out: &mut HashMap<u64, u16>) {
    text.lines().skip(1).for_each(|line| parse_listening_row(line, out));
}

/// One row: `sl local_address rem_address st ... inode`; LISTEN is state 0A.
fn parse_listening_row(line: &str, out: &mut HashMap<u64, u16>) {
    let mut cols = line.split_whitespace();
    let (Some(local), Some(state), Some(inode)) = (cols.nth(1), cols.nth(1), cols.nth(5)) else {
        return;
    };
    if state != "0A" {
        return;
    }
    let port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    if let (Some(port), Ok(inode)) = (port, inode.parse()) {
        out.insert(inode, port);
    }
}

/// Ports `pid` listens on, given the listening sockets.
pub fn listening_ports(pid: u32, listening: &HashMap<u64, u16>) -> Vec<u16> {
    if listening.is_empty() {
        return vec![];
    }
    let Ok(fds) = fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else {
        return vec![];
    };
    let mut ports: Vec<u16> = fds
        .filter_map(|fd| {
            let target = fs::read_link(fd.ok()?.path()).ok()?;
            let inode: u64 = target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
            listening.get(&inode).copied()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a local timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC in ns: converts kernel timestamps to wall-clock time.
pub fn clock_offset_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's event timestamps.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_rows_only() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0\n\
           1: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 12399 1 0\n";
        let mut out = HashMap::new();
        parse_listening(text, &mut out);
        assert_eq!(out, HashMap::from([(12345, 8000)]));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert_eq!(tgid(me), Some(me));
        assert!(parent(me).is_some());
        assert!(comm(me).is_some_and(|c| !c.is_empty()));
    }
}
