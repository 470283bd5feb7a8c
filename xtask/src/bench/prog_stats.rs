//! The kernel's own account of each BPF program's run time: ns per run of one program,
//! measured around the program alone, so a few nanoseconds show that the syscall loop's CPU
//! time (thousands of ns per syscall, ±100 between runs) cannot.

use std::os::fd::{FromRawFd, OwnedFd};

/// `BPF_PROG_TYPE_TRACEPOINT` and `BPF_PROG_TYPE_RAW_TRACEPOINT` (uapi `enum bpf_prog_type`).
pub const TRACEPOINT: u32 = 5;
pub const RAW_TRACEPOINT: u32 = 17;

/// `BPF_ENABLE_STATS` (uapi `enum bpf_cmd`) with `BPF_STATS_RUN_TIME`.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Run-time statistics on while this fd lives (`BPF_ENABLE_STATS`): the kernel turns them off
/// when the last such fd closes, however the bench ends (an interrupted bench exits at once,
/// so a sysctl written back on drop would stay on). They cost every program two clock reads
/// per run, so nothing else is measured meanwhile.
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

impl StatsOn {
    pub fn new() -> anyhow::Result<StatsOn> {
        let kind = BPF_STATS_RUN_TIME;
        // SAFETY: `attr` is the command's whole attribute (a u32), its size given.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, &kind as *const u32, 4usize) };
        if fd < 0 {
            anyhow::bail!(
                "BPF_ENABLE_STATS failed ({}): run-time statistics need root and Linux 5.8 or later",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a new fd the kernel returned, owned here alone.
        Ok(StatsOn(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// One program a process holds open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgRuns {
    pub prog_type: u32,
    pub runs: u64,
    pub run_time_ns: u64,
}

impl ProgRuns {
    /// NaN when it never ran: no figure rather than a free program.
    pub fn ns_per_run(&self) -> f64 {
        if self.runs == 0 { f64::NAN } else { self.run_time_ns as f64 / self.runs as f64 }
    }
}

/// Every BPF program `pid` holds an fd of, from `/proc/PID/fdinfo`; an fd that closes while
/// they are read is skipped.
pub fn programs_of(pid: u32) -> anyhow::Result<Vec<ProgRuns>> {
    let mut out = vec![];
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog") {
            let path = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            out.extend(std::fs::read_to_string(path).ok().as_deref().and_then(parse_fdinfo));
        }
    }
    Ok(out)
}

/// A program fd's fdinfo (`prog_type:`, `run_time_ns:`, `run_cnt:` lines).
fn parse_fdinfo(info: &str) -> Option<ProgRuns> {
    let field =
        |name: &str| info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok());
    Some(ProgRuns {
        prog_type: field("prog_type")? as u32,
        runs: field("run_cnt")?,
        run_time_ns: field("run_time_ns")?,
    })
}

/// The program of `prog_type` that ran most (the one on the hook the loop drives).
pub fn busiest(progs: &[ProgRuns], prog_type: u32) -> Option<ProgRuns> {
    progs.iter().filter(|p| p.prog_type == prog_type).max_by_key(|p| p.runs).copied()
}

/// All of the programs' run time per syscall exit (every syscall has one): what the programs
/// cost a syscall on average, whichever hooks it passes. NaN without an exit program.
pub fn ns_per_syscall(progs: &[ProgRuns]) -> f64 {
    let exits = busiest(progs, RAW_TRACEPOINT).map_or(0, |p| p.runs);
    if exits == 0 {
        return f64::NAN;
    }
    progs.iter().map(|p| p.run_time_ns).sum::<u64>() as f64 / exits as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields_are_read_by_name() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t17\nprog_jited:\t1\nprog_tag:\tab\n\
                    memlock:\t4096\nprog_id:\t9\nrun_time_ns:\t5000\nrun_cnt:\t100\nrecursion_misses:\t0\n";
        let p = parse_fdinfo(info).expect("parsed");
        assert_eq!(p, ProgRuns { prog_type: RAW_TRACEPOINT, runs: 100, run_time_ns: 5000 });
        assert_eq!(p.ns_per_run(), 50.0);
        // Without statistics fields (an old kernel) there is nothing to report.
        assert_eq!(parse_fdinfo("prog_type:\t5\nprog_id:\t3\n"), None);
        // A program that never ran has no cost per run, not a zero one.
        assert!(ProgRuns { prog_type: TRACEPOINT, runs: 0, run_time_ns: 0 }.ns_per_run().is_nan());
    }

    #[test]
    fn the_busiest_program_of_a_type_is_chosen() {
        let p = |prog_type, runs| ProgRuns { prog_type, runs, run_time_ns: runs * 10 };
        let progs = [p(TRACEPOINT, 5), p(RAW_TRACEPOINT, 7), p(TRACEPOINT, 9), p(TRACEPOINT, 1)];
        assert_eq!(busiest(&progs, TRACEPOINT), Some(p(TRACEPOINT, 9)));
        assert_eq!(busiest(&progs, 2), None);
    }

    #[test]
    fn every_programs_time_counts_per_syscall_exit() {
        let p = |prog_type, runs, run_time_ns| ProgRuns { prog_type, runs, run_time_ns };
        // 1,000 syscalls at 60 ns each at exit, 500 of them with a 50 ns entry, 10 closes.
        let progs = [p(RAW_TRACEPOINT, 1000, 60_000), p(TRACEPOINT, 500, 25_000), p(TRACEPOINT, 10, 800)];
        assert_eq!(ns_per_syscall(&progs), 85.8);
        assert!(ns_per_syscall(&progs[1..]).is_nan());
    }
}
