//! The kernel's own account of each BPF program's run time (`kernel.bpf_stats_enabled`): ns
//! per run of one program, measured around the program alone, so a few nanoseconds show that
//! the syscall loop's CPU time (thousands of ns per syscall, ±50 between runs) cannot.

use anyhow::Context as _;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `BPF_PROG_TYPE_TRACEPOINT` and `BPF_PROG_TYPE_RAW_TRACEPOINT` (uapi `enum bpf_prog_type`).
pub const TRACEPOINT: u32 = 5;
pub const RAW_TRACEPOINT: u32 = 17;

/// Run-time statistics on while alive; the previous setting back on drop. They cost every
/// program two clock reads per run, so nothing else is measured meanwhile.
pub struct StatsOn(String);

impl StatsOn {
    pub fn new() -> anyhow::Result<StatsOn> {
        let before = std::fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?;
        std::fs::write(STATS_SYSCTL, "1").with_context(|| format!("enabling {STATS_SYSCTL} (needs root)"))?;
        Ok(StatsOn(before.trim().to_owned()))
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.0);
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
    pub fn ns_per_run(&self) -> f64 {
        self.run_time_ns as f64 / self.runs.max(1) as f64
    }
}

/// Every BPF program `pid` holds an fd of, from `/proc/PID/fdinfo`.
pub fn programs_of(pid: u32) -> anyhow::Result<Vec<ProgRuns>> {
    let mut out = vec![];
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let fd = fd?;
        if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog") {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))?;
            out.extend(parse_fdinfo(&info));
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
    }

    #[test]
    fn the_busiest_program_of_a_type_is_chosen() {
        let p = |prog_type, runs| ProgRuns { prog_type, runs, run_time_ns: runs * 10 };
        let progs = [p(TRACEPOINT, 5), p(RAW_TRACEPOINT, 7), p(TRACEPOINT, 9), p(TRACEPOINT, 1)];
        assert_eq!(busiest(&progs, TRACEPOINT), Some(p(TRACEPOINT, 9)));
        assert_eq!(busiest(&progs, 2), None);
    }
}
