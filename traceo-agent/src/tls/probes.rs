//! Keeping the OpenSSL probes on every libssl a traced process uses: the system's at start,
//! then whatever the traced processes map (rescanned, since Python loads libssl on first
//! `import ssl`), each file once. Processes whose TLS cannot be seen are logged once.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use super::libraries::{ElfTls, FileId, ProcessTls, inspect_elf, process_tls, system_libssl};
use crate::loader::Probes;

/// How a process's TLS looks to the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
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

pub struct TlsProbes {
    /// Files tried (probed or not), with their ELF facts, so each is read and attached once.
    files: HashMap<FileId, (ElfTls, bool)>,
    /// Processes classified: what was found (re-logged only when it changes), and when.
    processes: HashMap<u32, (Visibility, u64)>,
    refreshes: u64,
    pub stats: TlsProbeStats,
}

impl TlsProbes {
    /// Probe the system's libssl files.
    pub fn start(probes: &mut Probes) -> TlsProbes {
        let mut tls = TlsProbes {
            files: HashMap::new(),
            processes: HashMap::new(),
            refreshes: 0,
            stats: TlsProbeStats::default(),
        };
        for lib in system_libssl() {
            tls.probe(probes, &lib);
        }
        if tls.stats.probed_files == 0 {
            log::info!("no system libssl found: TLS plaintext is seen only in processes that map one");
        }
        tls
    }

    /// Classify `pid` from its memory map and probe the OpenSSL it uses.
    pub fn scan(&mut self, probes: &mut Probes, pid: u32) {
        let Some(map) = process_tls(pid) else {
            self.processes.remove(&pid);
            return;
        };
        let visibility = assess(&map, |p| self.inspect(p));
        if let Visibility::OpenSsl(files) = &visibility {
            for f in files {
                self.probe(probes, f);
            }
        }
        if self.processes.get(&pid).map(|(v, _)| v) != Some(&visibility) {
            let comm = crate::procfs::comm(pid).unwrap_or_default();
            match &visibility {
                Visibility::Opaque(what) => log::warn!(
                    "pid {pid} ({comm}) uses {what}: its TLS traffic is not visible (traceo reads TLS plaintext \
                     from OpenSSL only); plain HTTP is still traced"
                ),
                Visibility::OpenSsl(files) => log::info!(
                    "pid {pid} ({comm}) uses OpenSSL ({}): TLS plaintext is traced",
                    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
                Visibility::None => {}
            }
        }
        self.processes.insert(pid, (visibility, self.refreshes));
    }

    /// Called about once a second with the traced processes: scan new ones at once, the
    /// others every few refreshes (libraries get loaded late), forget the rest.
    pub fn refresh(&mut self, probes: &mut Probes, traced: &HashSet<u32>) {
        self.refreshes += 1;
        self.processes.retain(|pid, _| traced.contains(pid));
        for &pid in traced {
            let due = self.processes.get(&pid).is_none_or(|(_, at)| self.refreshes - at >= RESCAN_EVERY);
            if due {
                self.scan(probes, pid);
            }
        }
        let opaque = self.processes.values().filter(|(v, _)| matches!(v, Visibility::Opaque(_)));
        self.stats.opaque_processes = opaque.count() as u64;
    }

    fn inspect(&mut self, path: &Path) -> ElfTls {
        let Some(id) = FileId::of(path) else { return ElfTls::default() };
        self.files.entry(id).or_insert_with(|| (inspect_elf(path), false)).0
    }

    /// Attach to `path` unless that file is already probed (or failed).
    fn probe(&mut self, probes: &mut Probes, path: &Path) {
        let Some(id) = FileId::of(path) else { return };
        let entry = self.files.entry(id).or_insert_with(|| (inspect_elf(path), false));
        if entry.1 {
            return;
        }
        entry.1 = true;
        match probes.attach_ssl(path) {
            Ok(functions) => {
                self.stats.probed_files += 1;
                log::info!("TLS: probing {} in {}", functions.join(", "), path.display());
            }
            Err(e) => {
                self.stats.failed_files += 1;
                log::warn!("TLS: cannot probe {}: {e:#}; its processes' TLS traffic is not visible", path.display());
            }
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
