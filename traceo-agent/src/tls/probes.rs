//! Keeping the OpenSSL probes on every libssl a traced process uses: the system's as soon as
//! a process is traced (before it loads them: Python maps libssl on first `import ssl`), then
//! whatever else it maps (rescanned every few seconds). Processes whose TLS cannot be seen
//! are logged once.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use super::libraries::{ElfTls, FileId, ProcessTls, inspect_elf, process_tls, system_libssl};
use crate::loader::{Probes, uprobes::ProbeSet};

/// How a process's TLS looks to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// Its plaintext is seen: these files carry the OpenSSL the probes attach to.
    OpenSsl(Vec<PathBuf>),
    /// It can speak TLS through something the probes cannot see into (named).
    Opaque(String),
    /// No TLS library mapped (plain sockets only, or none loaded yet).
    None,
}

/// Classify a process from its memory map; `inspect` reads a file's ELF symbols.
pub fn assess(tls: &ProcessTls, mut inspect: impl FnMut(&Path) -> ElfTls) -> Visibility {
    let openssl: Vec<PathBuf> = tls.libssl.iter().filter(|p| inspect(p).openssl_symbols).cloned().collect();
    if !openssl.is_empty() {
        return Visibility::OpenSsl(openssl);
    }
    let exe = tls.exe.as_deref().map(&mut inspect).unwrap_or_default();
    if exe.openssl_symbols {
        return Visibility::OpenSsl(tls.exe.iter().cloned().collect());
    }
    if exe.go {
        return Visibility::Opaque("Go's crypto/tls (linked into the executable)".into());
    }
    if !tls.opaque.is_empty() {
        return Visibility::Opaque(tls.opaque.iter().copied().collect::<Vec<_>>().join(", "));
    }
    if !tls.libssl.is_empty() {
        return Visibility::Opaque("a libssl without SSL_read/SSL_write symbols".into());
    }
    Visibility::None
}

/// Classify `pid` from its memory map (`None`: it is gone), reading ELF files through
/// `elf` (a cache by file identity), and resolve the OpenSSL functions' offsets in the files
/// to probe, so that attaching them parses nothing. Slow (file reads): the attach worker's.
pub fn classify(
    pid: u32,
    elf: &mut HashMap<FileId, ElfTls>,
    symbols: &crate::loader::symbols::SymbolOffsets,
) -> Option<Visibility> {
    let map = process_tls(pid)?;
    let visibility = assess(&map, |p| match FileId::of(p) {
        Some(id) => *elf.entry(id).or_insert_with(|| inspect_elf(p)),
        None => ElfTls::default(),
    });
    if let Visibility::OpenSsl(files) = &visibility {
        for f in files {
            resolve_offsets(symbols, f);
        }
    }
    Some(visibility)
}

/// Resolve (and cache) what `Probes::hold_ssl` attaches in `lib`: the internal functions,
/// or the public ones where those are not found.
fn resolve_offsets(symbols: &crate::loader::symbols::SymbolOffsets, lib: &Path) {
    for call in &crate::loader::programs::SSL_CALLS {
        let _ = symbols.ssl_targets(lib, call);
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsProbeStats {
    /// Files the OpenSSL probes are attached to.
    pub probed_files: u64,
    /// Files that should have been probed and could not be.
    pub failed_files: u64,
    /// Traced processes whose TLS the agent cannot see into.
    pub opaque_processes: u64,
}

/// Traced processes' memory maps are read again this many refreshes after the last read.
const RESCAN_EVERY: u64 = 5;

/// Keeps the OpenSSL probes on the files traced processes use. Each file is probed once for
/// every process (`loader::uprobes`: the programs skip untraced processes) and held while a
/// traced process uses it; a process's failure to be probed is its own, retried at its next
/// rescan, and never marks the file for other processes.
pub struct TlsProbes {
    /// Trace-all mode: the system's libssl is held for the agent's life.
    trace_all: bool,
    /// The system's libssl files, held for every traced process before it maps them.
    system: Vec<PathBuf>,
    /// Files that cannot be probed for every process (trace-all mode).
    failed: HashSet<FileId>,
    /// (process, file) failures already logged.
    failed_for: HashSet<(u32, FileId)>,
    /// Processes classified: what was found, and when.
    processes: HashMap<u32, (Visibility, u64)>,
    /// What was found, logged per process (the first few per finding at info).
    logged: crate::findings::FindingLog<Visibility>,
    refreshes: u64,
    pub stats: TlsProbeStats,
}

impl TlsProbes {
    /// Find the system's libssl files; in trace-all mode, probe them for every process.
    pub fn start(probes: &mut Probes, trace_all: bool) -> TlsProbes {
        let mut tls = TlsProbes {
            trace_all,
            system: system_libssl(),
            failed: HashSet::new(),
            failed_for: HashSet::new(),
            processes: HashMap::new(),
            logged: Default::default(),
            refreshes: 0,
            stats: TlsProbeStats::default(),
        };
        // The system's libssl is probed at the first traced process's first event, on the
        // ring's thread: its offsets are resolved here, once, so that attach parses nothing.
        let symbols = probes.symbol_offsets();
        for lib in &tls.system {
            resolve_offsets(&symbols, lib);
        }
        if tls.system.is_empty() {
            log::info!("no system libssl found: TLS plaintext is seen only in processes that map one");
        }
        if trace_all {
            for lib in tls.system.clone() {
                tls.probe(probes, &lib, None);
            }
        }
        tls
    }

    /// A process just became traced (started, forked, matched) or ran a new program: hold
    /// the system's libssl for it at once (a no-op once any traced process holds it),
    /// before it maps the library and makes its first call. Returns whether its memory map
    /// should be classified ([`classify`], on the attach worker), the result coming back
    /// through [`TlsProbes::scanned`].
    pub fn track(&mut self, probes: &mut Probes, pid: u32) -> bool {
        // A short-lived child may be gone by the time its fork or exec event is read.
        if !crate::procfs::exists(pid) {
            return false;
        }
        if !self.trace_all {
            for lib in self.system.clone() {
                self.probe(probes, &lib, Some(pid));
            }
        }
        // Known from now on: a classification that comes back applies; a request dropped
        // (worker busy) is made again at the process's next rescan.
        let refreshes = self.refreshes;
        self.processes.entry(pid).or_insert((Visibility::None, refreshes));
        true
    }

    /// Apply a classification made off the ring's thread: `None`, the process is gone.
    pub fn scanned(&mut self, probes: &mut Probes, pid: u32, visibility: Option<Visibility>) {
        // No longer traced (exited, untraced) since it was asked for.
        if !self.processes.contains_key(&pid) {
            return;
        }
        let Some(visibility) = visibility else {
            self.forget(probes, pid);
            return;
        };
        if let Visibility::OpenSsl(files) = &visibility {
            let user = (!self.trace_all).then_some(pid);
            for f in files {
                self.probe(probes, f, user);
            }
        }
        if self.processes.get(&pid).map(|(v, _)| v) != Some(&visibility) {
            let comm = crate::procfs::comm(pid).unwrap_or_default();
            let message = match &visibility {
                Visibility::Opaque(what) => Some((
                    log::Level::Warn,
                    format!(
                        "pid {pid} ({comm}) uses {what}: its TLS traffic is not visible (traceo reads TLS \
                         plaintext from OpenSSL only); plain HTTP is still traced"
                    ),
                )),
                Visibility::OpenSsl(files) => Some((
                    log::Level::Info,
                    format!(
                        "pid {pid} ({comm}) uses OpenSSL ({}): TLS plaintext is traced",
                        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
                    ),
                )),
                Visibility::None => None,
            };
            if let Some((level, message)) = message {
                self.logged.log(visibility.clone(), level, &message);
            }
        }
        let refreshes = self.refreshes;
        self.processes.insert(pid, (visibility, refreshes));
    }

    /// Called about once a second with the traced processes: track new ones, rescan the
    /// others every few refreshes (libraries get loaded late), release the files of the rest.
    /// Returns the processes whose memory map should be classified (on the attach worker).
    pub fn refresh(&mut self, probes: &mut Probes, traced: &HashSet<u32>) -> Vec<u32> {
        self.refreshes += 1;
        let gone: Vec<u32> = self.processes.keys().filter(|p| !traced.contains(p)).copied().collect();
        for pid in gone {
            self.forget(probes, pid);
        }
        let mut scan = Vec::new();
        for &pid in traced {
            match self.processes.get_mut(&pid) {
                None => {
                    if self.track(probes, pid) {
                        scan.push(pid);
                    }
                }
                Some((_, at)) if self.refreshes - *at >= RESCAN_EVERY => {
                    // Not asked again before the next rescan, whatever becomes of this one.
                    *at = self.refreshes;
                    scan.push(pid);
                }
                Some(_) => {}
            }
        }
        let opaque = self.processes.values().filter(|(v, _)| matches!(v, Visibility::Opaque(_)));
        self.stats.opaque_processes = opaque.count() as u64;
        self.stats.probed_files = probes.uprobes().files(ProbeSet::Ssl) as u64;
        scan
    }

    fn forget(&mut self, probes: &mut Probes, pid: u32) {
        self.processes.remove(&pid);
        self.failed_for.retain(|(p, _)| *p != pid);
        probes.release(pid, Some(ProbeSet::Ssl));
    }

    /// Hold `path`'s probes for `pid` (or every process), unless known to fail for good.
    fn probe(&mut self, probes: &mut Probes, path: &Path, pid: Option<u32>) {
        let Some(id) = FileId::of(path) else { return };
        if self.failed.contains(&id) {
            return;
        }
        match probes.hold_ssl(path, pid) {
            Ok(functions) => {
                let whom = pid.map_or("every process".to_owned(), |p| format!("pid {p}"));
                log::trace!("TLS: {} in {} held for {whom}", functions.join(", "), path.display());
            }
            Err(e) => match pid {
                // Per process: a failure is that process's (often it just exited), retried
                // at its next rescan; it never poisons the file for other processes.
                Some(p) if !crate::procfs::exists(p) => {
                    log::debug!("TLS: pid {p} exited before {} could be probed", path.display());
                }
                Some(p) => {
                    self.stats.failed_files += 1;
                    if self.failed_for.insert((p, id)) {
                        log::warn!(
                            "TLS: cannot probe {} for pid {p}: {e:#}; retrying at its next rescan",
                            path.display()
                        );
                    }
                }
                None => {
                    self.failed.insert(id);
                    self.stats.failed_files += 1;
                    log::warn!(
                        "TLS: cannot probe {}: {e:#}; its processes' TLS traffic is not visible",
                        path.display()
                    );
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn elf(openssl_symbols: bool, go: bool) -> ElfTls {
        ElfTls { openssl_symbols, go }
    }

    #[test]
    fn libssl_with_symbols_is_visible() {
        let map =
            ProcessTls { libssl: vec!["/l/libssl.so.3".into()], exe: Some("/bin/x".into()), ..Default::default() };
        assert_eq!(assess(&map, |_| elf(true, false)), Visibility::OpenSsl(vec!["/l/libssl.so.3".into()]));
    }

    #[test]
    fn an_executable_exporting_openssl_is_visible() {
        let map = ProcessTls { exe: Some("/usr/bin/node".into()), ..Default::default() };
        assert_eq!(assess(&map, |_| elf(true, false)), Visibility::OpenSsl(vec!["/usr/bin/node".into()]));
    }

    #[test]
    fn go_gnutls_and_stripped_libssl_are_opaque() {
        let go = ProcessTls { exe: Some("/bin/server".into()), ..Default::default() };
        assert!(matches!(assess(&go, |_| elf(false, true)), Visibility::Opaque(w) if w.contains("Go")));
        let gnutls = ProcessTls { opaque: BTreeSet::from(["GnuTLS"]), ..Default::default() };
        assert_eq!(assess(&gnutls, |_| elf(false, false)), Visibility::Opaque("GnuTLS".into()));
        let stripped = ProcessTls { libssl: vec!["/l/libssl.so.3".into()], ..Default::default() };
        assert!(matches!(assess(&stripped, |_| elf(false, false)), Visibility::Opaque(_)));
    }

    #[test]
    fn no_tls_library_is_none() {
        assert_eq!(assess(&ProcessTls::default(), |_| elf(false, false)), Visibility::None);
    }
}
