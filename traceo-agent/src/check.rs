//! `traceo-agent check`: what this kernel offers and what the agent will use; with
//! `--service`, what the selected processes use (TLS library, runtime) and, watched for
//! `--observe` seconds, which protocols they speak (`census`).

use std::{path::Path, time::Duration};

use crate::{
    census::Census,
    cli::CheckArgs,
    live::LiveOptions,
    loader::{self, LoadOptions, programs::PROGRAMS, tracefs},
    tls::{
        Visibility,
        libraries::{inspect_elf, process_tls, system_libssl},
        probes::assess,
    },
    tracking::ProcessTracker,
};

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, ok: Option<bool>, what: &str, detail: impl AsRef<str>) {
        let tag = match ok {
            Some(true) => "ok  ",
            Some(false) => "FAIL",
            None => "info",
        };
        if ok == Some(false) {
            self.failed = true;
        }
        println!("{tag}  {what:<28} {}", detail.as_ref());
    }
}

fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

/// Prints the report; an error when capture cannot work here.
pub async fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let mut r = Report { failed: false };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match loader::require_kernel(&release) {
        Ok(()) => r.line(Some(true), "kernel", release.trim()),
        Err(e) => r.line(Some(false), "kernel", e.to_string()),
    }
    let privileged = loader::require_privileges();
    r.line(
        Some(privileged.is_ok()),
        "privileges",
        privileged.as_ref().map_or_else(|e| e.to_string(), |_| "can load eBPF programs".into()),
    );

    let tracefs_root = if privileged.is_ok() { tracefs::ensure_mounted().ok() } else { tracefs::find() };
    match &tracefs_root {
        Some(root) => r.line(Some(true), "tracefs", root.display().to_string()),
        None => match tracefs::mount_point() {
            // Mounted, but its files are root-only: that is the permissions, not the mount.
            Some(at) if privileged.is_err() => {
                r.line(None, "tracefs", format!("mounted at {} (unreadable without root)", at.display()))
            }
            _ => r.line(Some(false), "tracefs", "not mounted (the agent mounts it when run as root)"),
        },
    }
    if let Some(root) = &tracefs_root {
        let missing: Vec<String> = PROGRAMS
            .iter()
            .filter(|(cat, name)| !root.join("events").join(cat).join(name).is_dir())
            .map(|(cat, name)| format!("{cat}:{name}"))
            .collect();
        let syscalls = PROGRAMS.iter().filter(|(c, _)| *c == "syscalls").count();
        let sched = PROGRAMS.len() - syscalls;
        r.line(
            Some(missing.is_empty()),
            "syscall + sched tracepoints",
            if missing.is_empty() {
                format!("all {syscalls} syscall and {sched} sched tracepoints present")
            } else {
                format!("missing: {}", missing.join(", "))
            },
        );
    }
    let btf = loader::btf::Btf::from_sys_fs().and_then(|b| loader::btf::kernel_offsets(&b));
    r.line(
        Some(btf.is_ok()),
        "BTF (/sys/kernel/btf/vmlinux)",
        btf.as_ref().map_or_else(|e| format!("{e:#}"), |_| "socket struct offsets resolved".into()),
    );
    r.line(
        None,
        "uprobes",
        if exists("/sys/bus/event_source/devices/uprobe/type") {
            "available (TLS plaintext through OpenSSL)"
        } else {
            "not available: HTTPS cannot be traced"
        },
    );
    tls_report(&mut r, args);
    r.line(
        None,
        "kprobes",
        if exists("/sys/bus/event_source/devices/kprobe/type") {
            "available, not needed"
        } else {
            "not available (not needed: tracepoints only)"
        },
    );
    r.line(None, "fentry/fexit", "not needed (tracepoints only)");
    r.line(
        Some(cfg!(target_arch = "x86_64")),
        "syscall arguments at exit",
        if cfg!(target_arch = "x86_64") {
            "read from the saved registers (raw tracepoint sys_exit, x86-64 layout)"
        } else {
            "only the x86-64 register layout is known: this build cannot trace socket syscalls"
        },
    );
    let object = loader::object();
    r.line(
        Some(object.is_ok()),
        "kernel object",
        object.as_ref().map_or_else(|e| e.to_string(), |o| format!("embedded, {} KiB", o.len() / 1024)),
    );

    if privileged.is_ok() && object.is_ok() && btf.is_ok() && tracefs_root.is_some() {
        // Loading runs the verifier on every program and creates the ring buffer map.
        match loader::load(&LoadOptions {
            capture_bytes: traceo_ebpf_common::MAX_CAPTURE as u32,
            ring_buffer_mib: 4,
            trace_all: false,
            capture_logs: true,
            log_files: true,
            read_tcp_seq: true,
        }) {
            Ok(_) => {
                let n =
                    PROGRAMS.len() + loader::programs::RAW_PROGRAMS.len() + loader::programs::uprobe_programs().count();
                r.line(Some(true), "verifier + ring buffer", format!("all {n} programs load"))
            }
            Err(e) => r.line(Some(false), "verifier + ring buffer", format!("{e:#}")),
        }
    }
    println!();
    println!(
        "probes the agent uses: {}",
        PROGRAMS
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .chain(loader::programs::RAW_PROGRAMS.iter().map(|(tp, _)| format!("raw_tracepoint:{tp}")))
            .chain(loader::programs::SSL_CALLS.iter().map(|c| {
                // The internal function when found, else the public ones.
                format!("uprobe+uretprobe:libssl:{}|{}+{}", c.internal, c.plain.0, c.ex.0)
            }))
            .chain([format!("uprobe+uretprobe:_asyncio:{}", crate::runtime::python::TASK_INIT_SYMBOL)])
            .collect::<Vec<_>>()
            .join(" ")
    );
    if r.failed {
        anyhow::bail!("capture cannot work on this host: see the FAIL lines above");
    }
    if !args.services.is_empty() && args.observe > 0 {
        observe(args).await?;
    }
    println!("capture can work on this host");
    Ok(())
}

/// `--observe`: trace the selected processes a while and list the protocols each spoke.
async fn observe(args: &CheckArgs) -> anyhow::Result<()> {
    let selection = crate::cli::SelectionArgs { services: args.services.clone(), ..Default::default() };
    let mut sel = selection.resolve()?;
    // Protocols need no runtime context.
    sel.runtime = false;
    let names = sel.services.iter().map(|s| s.name.clone()).collect();
    let mut census = Census::new(names);
    let opts = LiveOptions { duration: Some(Duration::from_secs(args.observe)), ..LiveOptions::default() };
    println!();
    println!("observing the selected processes for {} s ...", args.observe);
    crate::live::trace(&sel, opts, &mut census).await?;
    let report = census.report();
    if report.is_empty() {
        println!("info  protocols                    no traffic from the selected processes");
    }
    for (pid, service, protocols) in report {
        let comm = crate::procfs::comm(pid).unwrap_or_default();
        let what = format!("protocols of {} pid {pid}", service.as_deref().unwrap_or("?"));
        println!("info  {what:<28} {comm}: {}", protocols.join(", "));
    }
    Ok(())
}

/// The system's libssl, and the TLS of each selected process.
fn tls_report(r: &mut Report, args: &CheckArgs) {
    let libs = system_libssl();
    let probeable: Vec<String> =
        libs.iter().filter(|l| inspect_elf(l).openssl_symbols).map(|l| l.display().to_string()).collect();
    r.line(
        None,
        "OpenSSL (system libssl)",
        if probeable.is_empty() {
            "none found".to_owned()
        } else {
            format!("probed at start: {}", probeable.join(", "))
        },
    );
    if args.services.is_empty() {
        return;
    }
    let mut tracker = ProcessTracker::new(args.services.clone(), std::collections::HashMap::new());
    tracker.scan();
    let mut pids: Vec<(u32, u32)> = tracker.traced().iter().map(|(p, s)| (*p, *s)).collect();
    pids.sort();
    if pids.is_empty() {
        r.line(None, "TLS of selected processes", "no running process matches the --service selectors");
    }
    let mut measured = std::collections::HashMap::new();
    for (pid, service) in pids {
        let comm = crate::procfs::comm(pid).unwrap_or_default();
        let what = format!("TLS of {} pid {pid}", args.services[service as usize].name);
        let detail = match process_tls(pid).map(|m| assess(&m, inspect_elf)) {
            Some(Visibility::OpenSsl(files)) => format!(
                "{comm}: OpenSSL ({}): HTTPS visible",
                files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
            Some(Visibility::Opaque(lib)) => {
                format!("{comm}: {lib}: HTTPS NOT visible (traceo reads TLS plaintext from OpenSSL only)")
            }
            Some(Visibility::None) => format!("{comm}: no TLS library loaded (plain HTTP only, or TLS loaded later)"),
            None => "exited".to_owned(),
        };
        r.line(None, &what, detail);
        let runtime = crate::runtime::describe_plan(&crate::runtime::plan(pid, &mut measured, true));
        r.line(None, &format!("runtime of {} pid {pid}", args.services[service as usize].name), runtime);
    }
}

/// `bench-floor`: the empty program on every tracepoint, until a signal; with `bound_pid`,
/// the bound program at syscall exit for that process, its records drained and dropped.
pub async fn bench_floor(bound_pid: Option<u32>) -> anyhow::Result<()> {
    let mut probes = loader::load(&LoadOptions {
        capture_bytes: traceo_ebpf_common::MAX_CAPTURE as u32,
        ring_buffer_mib: 4,
        trace_all: false,
        capture_logs: false,
        log_files: false,
        read_tcp_seq: false,
    })?;
    probes.attach_floor(bound_pid.is_some())?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut drain = None;
    if let Some(pid) = bound_pid {
        let mut pids = probes.take_traced_pids()?;
        pids.insert(pid, 0)?;
        let mut ring = probes.take_ring()?;
        let stop = stop.clone();
        // Polled like the agent's reader (the programs do not wake it), and every byte read as
        // the agent reads them: the cache lines then move between the CPUs as they do traced.
        drain = Some(std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while let Some(record) = ring.next() {
                    std::hint::black_box(record.iter().fold(0u8, |a, b| a ^ b));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(pids);
        }));
    }
    log::info!("ready: probes attached (floor only)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(drain) = drain {
        let _ = drain.join();
    }
    probes.detach();
    Ok(())
}
