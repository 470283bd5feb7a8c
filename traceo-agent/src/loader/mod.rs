//! Loading the kernel object: privileges, tracefs, BTF offsets, globals, verifier, attach.
//! `Probes` owns the links; `detach` (or drop) removes every program.

pub mod btf;
pub mod programs;
pub mod symbols;
pub mod tracefs;
pub mod uprobes;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        Program, RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId,
    },
};
use traceo_ebpf_common::{KernelOffsets, MAX_CAPTURE, MAX_SERVICES, PID_FLAGS_BLOCK, ProbeSettings, RuntimeProc, stat};

/// The kernel object built by `cargo xtask build-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TRACEO_EBPF_OBJECT"));

/// What the programs are told at load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub capture_bytes: u32,
    /// Size of the event ring buffer: a power of two, in MiB. It is resident memory twice
    /// over (the kernel maps its pages twice), and what absorbs bursts between reads.
    pub ring_buffer_mib: u32,
    /// Trace every process but the agent (no `--service` given).
    pub trace_all: bool,
    /// Capture what traced processes write to non-socket stdout/stderr (`--log-records`).
    pub capture_logs: bool,
    /// Also capture writes to the files in `LOG_FILES` (`--log-file`).
    pub log_files: bool,
    /// Read the TCP sequence number at each data syscall (`--shared-state`'s stitching key).
    pub read_tcp_seq: bool,
}

/// The embedded object, or an error that says how to build it.
pub fn object() -> anyhow::Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!(
            "this traceo-agent was built without its kernel programs: run `cargo xtask build-ebpf` \
             (or `cargo xtask build`), then rebuild the agent"
        );
    }
    Ok(OBJECT)
}

/// The oldest kernel the programs load on: `bpf_get_current_task_btf` (the typed task the
/// socket walk starts from) came in 5.11; the ring buffer (5.8) and BTF before it.
pub const MIN_KERNEL: (u32, u32) = (5, 11);

/// (major, minor) of a kernel release string (`6.18.44-fc-v1252`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Refuse, naming the requirement, a kernel older than [`MIN_KERNEL`] (the verifier would
/// refuse the programs with an unknown-function error). An unreadable release is let through.
pub fn require_kernel(release: &str) -> anyhow::Result<()> {
    match kernel_version(release) {
        Some(v) if v < MIN_KERNEL => bail!(
            "this kernel is {}: traceo needs Linux {}.{} or later (BPF-typed task pointers)",
            release.trim(),
            MIN_KERNEL.0,
            MIN_KERNEL.1
        ),
        _ => Ok(()),
    }
}

/// Refuse early, with the fix, when the process cannot load BPF programs.
pub fn require_privileges() -> anyhow::Result<()> {
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } != 0 && !has_bpf_capabilities() {
        bail!("loading eBPF programs needs root (or CAP_BPF and CAP_PERFMON): run with sudo");
    }
    Ok(())
}

/// CAP_BPF (39) and CAP_PERFMON (38) in the effective set, read from /proc/self/status.
fn has_bpf_capabilities() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 39) != 0 && caps & (1 << 38) != 0)
}

/// The memlock limit only matters on kernels before 5.11 (BPF memory is charged to the
/// cgroup since); failing to raise it is expected without CAP_SYS_RESOURCE.
fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK ({}); fine on kernels >= 5.11", std::io::Error::last_os_error());
    }
}

/// The highest pid plus one (the kernel's default on 64-bit hosts when unreadable).
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(4_194_304)
}

/// The ring buffer's size must be a power of two (the kernel's rule) and sane.
pub fn check_ring_buffer_mib(mib: u32) -> anyhow::Result<()> {
    if !mib.is_power_of_two() || mib > 1024 {
        bail!("--ring-buffer-mib must be a power of two from 1 to 1024 (1, 2, 4, 8, ...), not {mib}");
    }
    Ok(())
}

/// Loaded (and, after `attach`, attached) programs with their maps.
pub struct Probes {
    ebpf: Ebpf,
    links: Vec<(&'static str, TracePointLinkId)>,
    raw_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// OpenSSL and runtime probes, by file.
    uprobes: uprobes::SharedUprobes,
    /// Symbol offsets resolved once per file.
    symbols: symbols::SymbolOffsets,
    logger: Option<KernelLogger>,
}

/// Messages of the kernel programs (rare paths only), forwarded to the agent's log.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Load the object and let the verifier check every program; nothing is attached yet.
pub fn load(opts: &LoadOptions) -> anyhow::Result<Probes> {
    if !cfg!(target_arch = "x86_64") {
        // `sys_exit` reads syscall arguments from the saved registers, laid out per arch.
        bail!("this build reads syscall arguments with the x86-64 register layout: run it on x86-64");
    }
    let object = object()?;
    require_kernel(&std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default())?;
    require_privileges()?;
    raise_memlock();
    let tracefs = tracefs::ensure_mounted()?;
    // The parsed BTF is large and only needed for these offsets.
    let offsets: KernelOffsets = btf::kernel_offsets(&btf::Btf::from_sys_fs()?)?;
    if opts.capture_bytes as usize > MAX_CAPTURE {
        bail!("--capture-bytes {} is above the maximum of {MAX_CAPTURE}", opts.capture_bytes);
    }
    let settings = ProbeSettings {
        agent_pid: std::process::id(),
        trace_all: opts.trace_all as u32,
        capture_bytes: opts.capture_bytes,
        fork_child_pid_offset: tracefs::field_offset(&tracefs, "sched", "sched_process_fork", "child_pid")?,
        capture_logs: opts.capture_logs as u32,
        log_files: opts.log_files as u32,
        read_tcp_seq: opts.read_tcp_seq as u32,
        ring_bytes: opts.ring_buffer_mib << 20,
    };
    check_ring_buffer_mib(opts.ring_buffer_mib)?;
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("DATA_SCRATCH", cpus as u32)
        .map_max_entries("PID_FLAGS", pid_max().div_ceil(PID_FLAGS_BLOCK as u32))
        .map_max_entries("EVENTS", opts.ring_buffer_mib << 20)
        .override_global("OFFSETS", &offsets, true)
        .override_global("SETTINGS", &settings, true)
        .load(object)
        .context("loading the kernel object failed")?;
    // The logger owns the log map: it must outlive program loading.
    let logger =
        aya_log::EbpfLogger::init(&mut ebpf).map_err(|e| log::debug!("kernel-side logging unavailable: {e}")).ok();
    let tracepoints = programs::PROGRAMS.iter().chain(programs::RAW_PROGRAMS).map(|(_, name)| *name);
    // `RAW_BOUND` is left to `attach_floor`, the only user: `run` does not pay its verification.
    for name in tracepoints.chain([programs::FLOOR, programs::RAW_FLOOR]).chain(programs::uprobe_programs()) {
        load_program(&mut ebpf, name)?;
    }
    // Parsing the kernel's BTF leaves megabytes of freed heap behind; hand them back.
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    Ok(Probes {
        ebpf,
        links: Vec::new(),
        raw_links: Vec::new(),
        uprobes: Default::default(),
        symbols: Default::default(),
        logger,
    })
}

/// Let the verifier check one program of the object.
fn load_program(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let program = ebpf.program_mut(name).with_context(|| {
        format!("program {name} missing from the kernel object: rebuild it with `cargo xtask build-ebpf`")
    })?;
    let loaded = match program {
        Program::TracePoint(p) => p.load(),
        Program::RawTracePoint(p) => p.load(),
        Program::UProbe(p) => p.load(),
        other => bail!("program {name} is a {:?}, not a probe the agent attaches", other.prog_type()),
    };
    loaded.with_context(|| format!("the kernel's verifier rejected {name}"))
}

impl Probes {
    /// Attach every program to its tracepoint.
    pub fn attach(&mut self) -> anyhow::Result<()> {
        for (category, name) in programs::PROGRAMS {
            let program: &mut TracePoint = self.ebpf.program_mut(name).expect("loaded above").try_into()?;
            let link = program
                .attach(category, name)
                .with_context(|| format!("attaching {name} to tracepoint {category}:{name}"))?;
            self.links.push((name, link));
        }
        for (tracepoint, name) in programs::RAW_PROGRAMS {
            let program: &mut RawTracePoint = self.ebpf.program_mut(name).expect("loaded above").try_into()?;
            let link = program
                .attach(tracepoint)
                .with_context(|| format!("attaching {name} to raw tracepoint {tracepoint}"))?;
            self.raw_links.push((name, link));
        }
        log::info!("attached {} programs", self.links.len() + self.raw_links.len());
        Ok(())
    }

    /// Attach only the empty `floor` program to every tracepoint (benchmark baseline); with
    /// `bound`, the bound program at syscall exit instead of the empty one (loaded here).
    pub fn attach_floor(&mut self, bound: bool) -> anyhow::Result<()> {
        let program: &mut TracePoint =
            self.ebpf.program_mut(programs::FLOOR).context("no floor program")?.try_into()?;
        for (category, name) in programs::PROGRAMS {
            let link =
                program.attach(category, name).with_context(|| format!("attaching floor to {category}:{name}"))?;
            self.links.push((programs::FLOOR, link));
        }
        let name = if bound { programs::RAW_BOUND } else { programs::RAW_FLOOR };
        if bound {
            load_program(&mut self.ebpf, name)?;
        }
        let program: &mut RawTracePoint = self.ebpf.program_mut(name).context("no raw floor program")?.try_into()?;
        for (tracepoint, _) in programs::RAW_PROGRAMS {
            let link = program
                .attach(tracepoint)
                .with_context(|| format!("attaching {name} to raw tracepoint {tracepoint}"))?;
            self.raw_links.push((name, link));
        }
        Ok(())
    }

    /// The shared symbol-offset cache (for the attach worker to fill).
    pub fn symbol_offsets(&self) -> symbols::SymbolOffsets {
        self.symbols.clone()
    }

    /// Drop `pid`'s `RUNTIME_PROCS` entry only (a map delete, no detach): it ran a new
    /// program, and the old program's layout must not be read until the new one is planned.
    pub fn clear_runtime(&mut self, pid: u32) {
        if let Some(Ok(mut map)) =
            self.ebpf.map_mut("RUNTIME_PROCS").map(aya::maps::HashMap::<_, u32, RuntimeProc>::try_from)
        {
            let _ = map.remove(&pid);
        }
    }

    /// Tell the programs how to read `pid`'s runtime: from now on its socket events carry
    /// its current context.
    pub fn set_runtime(&mut self, pid: u32, runtime: RuntimeProc) -> anyhow::Result<()> {
        let mut map: aya::maps::HashMap<_, u32, RuntimeProc> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut("RUNTIME_PROCS").context("RUNTIME_PROCS map missing")?)?;
        map.insert(pid, runtime, 0)?;
        Ok(())
    }

    /// Forget `pid`'s runtime: its entry, and its hold on the runtime probes' files.
    pub fn forget_runtime(&mut self, pid: u32) {
        self.clear_runtime(pid);
        for set in self.runtime_sets() {
            self.release(pid, Some(set));
        }
    }

    fn runtime_sets(&self) -> [uprobes::ProbeSet; 2] {
        use crate::runtime::{NGINX_UPSTREAM_SYMBOL, python::TASK_INIT_SYMBOL};
        [uprobes::ProbeSet::Runtime(TASK_INIT_SYMBOL), uprobes::ProbeSet::Runtime(NGINX_UPSTREAM_SYMBOL)]
    }

    /// The shared uprobes' counts (files per set, links).
    pub fn uprobes(&self) -> &uprobes::SharedUprobes {
        &self.uprobes
    }

    /// Detach every program (also happens on drop; this makes it explicit and logged).
    ///
    /// Each link's release waits for the kernel (a uprobe's unregistering an RCU grace
    /// period, hundreds of milliseconds on a busy VM), so the links are taken out and
    /// released in parallel: Ctrl-C and SIGTERM end the agent within a few seconds (uprobes
    /// are per file, so there are few of them whatever the processes' churn).
    pub fn detach(&mut self) {
        let started = std::time::Instant::now();
        let uprobes: Vec<_> = self.uprobes.drain().collect();
        let count = self.links.len() + self.raw_links.len() + uprobes.len();
        let owned_uprobes: Vec<_> =
            uprobes.into_iter().filter_map(|(name, link)| self.take_uprobe_link(name, link)).collect();
        let mut owned_tracepoints = Vec::new();
        for (name, link) in self.links.drain(..) {
            if let Ok(program) = <&mut TracePoint>::try_from(self.ebpf.program_mut(name).expect("loaded")) {
                match program.take_link(link) {
                    Ok(l) => owned_tracepoints.push(l),
                    Err(e) => log::warn!("detaching {name}: {e}"),
                }
            }
        }
        // One raw link: released here, its programs stop at once.
        for (name, link) in self.raw_links.drain(..) {
            if let Ok(program) = <&mut RawTracePoint>::try_from(self.ebpf.program_mut(name).expect("loaded")) {
                if let Err(e) = program.detach(link) {
                    log::warn!("detaching {name}: {e}");
                }
            }
        }
        const RELEASERS: usize = 16;
        std::thread::scope(|s| {
            let per = owned_uprobes.len().div_ceil(RELEASERS).max(1);
            let mut rest = owned_uprobes;
            while !rest.is_empty() {
                let chunk: Vec<_> = rest.drain(..per.min(rest.len())).collect();
                s.spawn(move || drop(chunk));
            }
            let per = owned_tracepoints.len().div_ceil(RELEASERS).max(1);
            let mut rest = owned_tracepoints;
            while !rest.is_empty() {
                let chunk: Vec<_> = rest.drain(..per.min(rest.len())).collect();
                s.spawn(move || drop(chunk));
            }
        });
        log::info!("detached {count} programs in {:.1} s", started.elapsed().as_secs_f64());
    }

    /// Forward kernel-side log messages until the runtime stops.
    pub fn spawn_logger(&mut self) -> anyhow::Result<()> {
        let Some(logger) = self.logger.take() else {
            return Ok(());
        };
        // SAFETY: the logger owns its map fd for as long as the AsyncFd owns the logger.
        let mut logger =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)? };
        tokio::spawn(async move {
            while let Ok(mut guard) = logger.readable_mut().await {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }

    pub fn take_ring(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(self.ebpf.take_map("EVENTS").context("EVENTS map missing")?)?)
    }

    /// The traced processes as the probes see them: a flag byte per pid.
    pub fn take_traced_pids(&mut self) -> anyhow::Result<KernelPids> {
        let flags = self.take_array("PID_FLAGS")?;
        let generation = self.take_array("FLAGS_GENERATION")?;
        KernelPids::map(flags, generation)
    }

    fn take_array(&mut self, name: &str) -> anyhow::Result<MapData> {
        match self.ebpf.take_map(name).with_context(|| format!("{name} map missing"))? {
            aya::maps::Map::Array(data) => Ok(data),
            _ => bail!("{name} is not an array map: rebuild the kernel object with `cargo xtask build-ebpf`"),
        }
    }

    pub fn take_log_files(&mut self) -> anyhow::Result<LogFiles> {
        let map = self.ebpf.take_map("LOG_FILES").context("LOG_FILES map missing")?;
        Ok(LogFiles { map: aya::maps::HashMap::try_from(map)?, inodes: std::collections::HashSet::new() })
    }

    pub fn take_stats(&mut self) -> anyhow::Result<KernelStats> {
        let map = self.ebpf.take_map("STATS").context("STATS map missing")?;
        Ok(KernelStats { map: PerCpuArray::try_from(map)? })
    }
}

/// `--log-file`: the inode numbers of the files matching the globs, kept in the kernel's
/// `LOG_FILES` map (a rotated file is a new inode: found at the next refresh).
pub struct LogFiles {
    map: aya::maps::HashMap<MapData, u64, u8>,
    inodes: std::collections::HashSet<u64>,
}

impl LogFiles {
    /// Glob again; put new files' inodes in the map, take out those gone.
    pub fn refresh(&mut self, globs: &[String]) {
        use std::os::unix::fs::MetadataExt as _;
        let now: std::collections::HashSet<u64> = globs
            .iter()
            .filter_map(|g| glob::glob(g).ok())
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|p| std::fs::metadata(&p).ok().filter(|m| m.is_file()).map(|m| m.ino()))
            .take(1024)
            .collect();
        for gone in self.inodes.difference(&now) {
            let _ = self.map.remove(gone);
        }
        for new in now.difference(&self.inodes) {
            if let Err(e) = self.map.insert(new, 1, 0) {
                log::warn!("--log-file: cannot select inode {new}: {e}");
            }
        }
        self.inodes = now;
    }
}

/// The kernel's record of traced processes, a flag byte per pid. The probes write flags too
/// (forked children, exits), so the agent never rewrites a block through the map-update
/// syscall (that would undo a probe's concurrent store to a neighbouring pid): it stores
/// single bytes through a shared mapping of the array. After each store it bumps the flags
/// generation (`FLAGS_GENERATION`, shared the same way), so that no CPU keeps using an
/// answer its exit program remembered from the old flag (`filter::exit_traced`).
pub struct KernelPids {
    flags: SharedArray<std::sync::atomic::AtomicU8>,
    generation: SharedArray<std::sync::atomic::AtomicU64>,
}

impl KernelPids {
    fn map(flags: MapData, generation: MapData) -> anyhow::Result<KernelPids> {
        let flags = SharedArray::map(flags, "PID_FLAGS", PID_FLAGS_BLOCK)?;
        let generation = SharedArray::map(generation, "FLAGS_GENERATION", 8)?;
        Ok(KernelPids { flags, generation })
    }

    /// Set `pid`'s flag byte: 0 = untraced, else the service index + 1.
    fn set_flag(&mut self, pid: u32, flag: u8) -> anyhow::Result<()> {
        let slot = self.flags.get(pid as usize).with_context(|| format!("pid {pid} is above pid_max"))?;
        slot.store(flag, std::sync::atomic::Ordering::SeqCst);
        // After the store (a locked add orders them): an answer computed from the old flag
        // carries an older generation.
        self.generation.get(0).expect("one slot").fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    pub fn insert(&mut self, pid: u32, service: u32) -> anyhow::Result<()> {
        anyhow::ensure!((service as usize) < MAX_SERVICES, "at most {MAX_SERVICES} services");
        self.set_flag(pid, service as u8 + 1)
    }

    pub fn remove(&mut self, pid: u32) {
        let _ = self.set_flag(pid, 0);
    }
}

/// A `BPF_F_MMAPABLE` array map mapped into the agent, read and written through atomics.
struct SharedArray<T> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    bytes: usize,
    /// Owns the map's fd (the mapping stays valid while it is open).
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and only accessed through atomics.
unsafe impl<T> Send for SharedArray<T> {}

impl<T> SharedArray<T> {
    /// Map `map` (named `name`), whose values must be `value_size` bytes.
    fn map(map: MapData, name: &str, value_size: usize) -> anyhow::Result<SharedArray<T>> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let info = map.info()?;
        anyhow::ensure!(
            info.value_size() as usize == value_size,
            "{name} holds values of {} bytes, not {value_size}: rebuild the kernel object with `cargo xtask build-ebpf`",
            info.value_size()
        );
        let bytes = info.max_entries() as usize * value_size;
        // SAFETY: a shared mapping of the whole array, which the kernel allows for
        // BPF_F_MMAPABLE arrays; its length is the array's size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!("mapping {name} failed (the kernel object must declare it BPF_F_MMAPABLE: rebuild it with `cargo xtask build-ebpf`)")
            });
        }
        let ptr = std::ptr::NonNull::new(ptr.cast()).context("mmap returned null")?;
        Ok(SharedArray { ptr, len: bytes / std::mem::size_of::<T>(), bytes, _map: map })
    }

    fn get(&self, index: usize) -> Option<&T> {
        // SAFETY: in bounds of the mapping, which lives as long as self; page-aligned, so
        // every element is aligned.
        (index < self.len).then(|| unsafe { &*self.ptr.as_ptr().add(index) })
    }
}

impl<T> Drop for SharedArray<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// The kernel's per-CPU counters (`traceo_ebpf_common::stat`), summed over CPUs.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
}

/// Counter values by name, in `stat` order.
pub const STAT_NAMES: [&str; stat::COUNT as usize] = stat::NAMES;

impl KernelStats {
    pub fn read(&self) -> [u64; stat::COUNT as usize] {
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.map.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Events the kernel had to drop because the ring buffer was full.
    pub fn lost(values: &[u64; stat::COUNT as usize]) -> u64 {
        stat::RING_FULL.iter().map(|&i| values[i as usize]).sum()
    }
}

#[cfg(test)]
mod exit_memo_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_older_than_the_minimum_are_refused_by_name() {
        assert_eq!(kernel_version("6.18.44-fc-v1252\n"), Some((6, 18)));
        assert_eq!(kernel_version("5.10-rc1"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(require_kernel("5.11.0").is_ok());
        assert!(require_kernel("6.1.0-13-amd64").is_ok());
        let err = require_kernel("5.10.0-28-amd64").unwrap_err().to_string();
        assert!(err.contains("5.10.0-28-amd64") && err.contains("5.11 or later"), "{err}");
        assert!(require_kernel("4.19.0").is_err());
        // Unreadable: the load itself will say what is wrong.
        assert!(require_kernel("").is_ok());
    }
}
