//! Uprobe links, one set per probed file, shared by every traced process that uses it.
//!
//! A uprobe is registered on a file (its inode), and a link scoped to one process is a
//! kernel object of its own: one per process, per function, attached at each fork and exec.
//! Releasing one waits for an RCU grace period (tens to hundreds of milliseconds on a busy
//! VM), one after the other. Under process churn (recycled workers, forked children) the
//! agent then spent its time attaching and releasing, fell behind the ring, held thousands
//! of links, and took minutes to stop. So each file is probed once, for every process, and
//! the programs skip untraced processes (their first check, the pid flag). The price: an
//! untraced process that calls a probed function takes the breakpoint trap (about 16 us on
//! the benchmark's VM) while a traced process holds the file. A file no traced process uses
//! is released after [`LINGER`], off the ring's thread.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
};

use super::{Probes, programs, symbols::SslTargets};
use crate::tls::libraries::FileId;

/// A file's probes stay this long after its last traced user is gone: a service restarting
/// or recycling its only process does not pay a release and an attach each time.
pub const LINGER: Duration = Duration::from_secs(10);

/// What is probed in a file: the OpenSSL functions, or one runtime symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeSet {
    Ssl,
    Runtime(&'static str),
}

/// One file's links and the traced processes that use them.
#[derive(Default)]
pub struct FileProbes {
    links: Vec<(&'static str, UProbeLinkId)>,
    /// The functions probed (the optional OpenSSL ones may be missing).
    functions: Vec<&'static str>,
    users: HashSet<u32>,
    /// Kept for the agent's life (trace-all mode: every process is a user).
    pinned: bool,
    unused_since: Option<Instant>,
}

/// The links of every probed file.
#[derive(Default)]
pub struct SharedUprobes {
    files: HashMap<(FileId, ProbeSet), FileProbes>,
}

impl SharedUprobes {
    /// Files probed for `set`.
    pub fn files(&self, set: ProbeSet) -> usize {
        self.files.keys().filter(|(_, s)| *s == set).count()
    }

    /// Links held, all files together.
    pub fn links(&self) -> usize {
        self.files.values().map(|f| f.links.len()).sum()
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = (&'static str, UProbeLinkId)> + '_ {
        self.files.drain().flat_map(|(_, f)| f.links)
    }
}

impl Probes {
    /// Probe OpenSSL's reads and writes in `library` for `user` (a traced pid; `None`: every
    /// process, for the agent's life): the internal functions behind the public ones when
    /// found (see `tls::callee`), else `SSL_write`, `SSL_read` and their `_ex` forms.
    /// Attaches once per file; later users only join. Returns the functions probed; an error
    /// when the file lacks `SSL_write` or `SSL_read` or the kernel refuses.
    pub fn hold_ssl(&mut self, library: &Path, user: Option<u32>) -> anyhow::Result<Vec<&'static str>> {
        let symbols = self.symbols.clone();
        self.hold(library, ProbeSet::Ssl, user, |probes, links| {
            let mut probed = Vec::new();
            for call in &programs::SSL_CALLS {
                match symbols.ssl_targets(library, call) {
                    SslTargets::Internal(offset) => {
                        probes
                            .attach_with_return(call.ex.1, offset, library, links)
                            .with_context(|| format!("probing {} in {}", call.internal, library.display()))?;
                        probed.push(call.internal);
                    }
                    SslTargets::Public { why, plain, ex } => {
                        log::info!(
                            "TLS: {}: {} not found ({why:#}); probing {} and {}",
                            library.display(),
                            call.internal,
                            call.plain.0,
                            call.ex.0
                        );
                        plain
                            .and_then(|offset| probes.attach_with_return(call.plain.1, offset, library, links))
                            .with_context(|| format!("probing {} in {}", call.plain.0, library.display()))?;
                        probed.push(call.plain.0);
                        // The _ex forms appeared in OpenSSL 1.1.1.
                        match ex.and_then(|offset| probes.attach_with_return(call.ex.1, offset, library, links)) {
                            Ok(()) => probed.push(call.ex.0),
                            Err(e) => log::debug!("{} not probed in {}: {e:#}", call.ex.0, library.display()),
                        }
                    }
                }
            }
            Ok(probed)
        })
    }

    /// `SSL_RETURN`, then `entry`, at `offset` in `file`: a return without its entry is
    /// ignored, an entry without its return would leave parked arguments behind.
    fn attach_with_return(
        &mut self,
        entry: &'static str,
        offset: u64,
        file: &Path,
        links: &mut Vec<(&'static str, UProbeLinkId)>,
    ) -> anyhow::Result<()> {
        links.push(self.attach_uprobe(programs::SSL_RETURN, offset, file)?);
        links.push(self.attach_uprobe(entry, offset, file)?);
        Ok(())
    }

    /// Probe `symbol` in `file` for traced process `user` with `programs`, in that order
    /// (the return probe first, as for OpenSSL: an entry never waits for a return program
    /// that is not there yet).
    pub fn hold_runtime_probe(
        &mut self,
        file: &Path,
        symbol: &'static str,
        programs: &'static [&'static str],
        user: u32,
    ) -> anyhow::Result<()> {
        self.hold(file, ProbeSet::Runtime(symbol), Some(user), |probes, links| {
            let offset = probes.symbols.offset(file, symbol)?;
            for program in programs {
                links.push(
                    probes
                        .attach_uprobe(program, offset, file)
                        .with_context(|| format!("probing {symbol} in {}", file.display()))?,
                );
            }
            Ok(vec![symbol])
        })
        .map(drop)
    }

    /// `user` no longer uses the files of `set` (`None`: any set): it exited, was untraced
    /// or ran another program. Files left without users go after [`LINGER`].
    pub fn release(&mut self, user: u32, set: Option<ProbeSet>) {
        let now = Instant::now();
        for ((_, s), f) in &mut self.uprobes.files {
            if set.is_none_or(|set| set == *s) && f.users.remove(&user) && f.users.is_empty() && !f.pinned {
                f.unused_since = Some(now);
            }
        }
    }

    /// Release the files unused for [`LINGER`]; the kernel's part (a grace period per
    /// link) runs on a thread of its own, never on the ring's.
    pub fn sweep_uprobes(&mut self) {
        let now = Instant::now();
        let expired: Vec<(FileId, ProbeSet)> = self
            .uprobes
            .files
            .iter()
            .filter(|(_, f)| f.users.is_empty() && f.unused_since.is_some_and(|t| now - t >= LINGER))
            .map(|(k, _)| *k)
            .collect();
        let mut owned = Vec::new();
        for key in expired {
            let f = self.uprobes.files.remove(&key).expect("listed above");
            log::debug!("uprobes: releasing {:?} in file {}:{} (no traced user left)", key.1, key.0.dev, key.0.ino);
            owned.extend(f.links.into_iter().filter_map(|(name, link)| self.take_uprobe_link(name, link)));
        }
        if !owned.is_empty() {
            let spawned = std::thread::Builder::new().name("traceo-release".into()).spawn(move || drop(owned));
            if let Err(e) = spawned {
                log::warn!("uprobes: no thread to release links on ({e}); they are released at exit");
            }
        }
    }

    /// Attach `make`'s links to `file` once; `user` joins them.
    fn hold(
        &mut self,
        file: &Path,
        set: ProbeSet,
        user: Option<u32>,
        make: impl FnOnce(&mut Probes, &mut Vec<(&'static str, UProbeLinkId)>) -> anyhow::Result<Vec<&'static str>>,
    ) -> anyhow::Result<Vec<&'static str>> {
        let id = FileId::of(file).with_context(|| format!("{} cannot be read", file.display()))?;
        if !self.uprobes.files.contains_key(&(id, set)) {
            let mut links = Vec::new();
            match make(self, &mut links) {
                Ok(functions) => {
                    self.uprobes.files.insert((id, set), FileProbes { links, functions, ..Default::default() });
                }
                Err(e) => {
                    for (name, link) in links {
                        self.detach_uprobe(name, link);
                    }
                    return Err(e);
                }
            }
        }
        let f = self.uprobes.files.get_mut(&(id, set)).expect("inserted above");
        match user {
            Some(pid) => {
                f.users.insert(pid);
            }
            None => f.pinned = true,
        }
        f.unused_since = None;
        Ok(f.functions.clone())
    }

    fn attach_uprobe(
        &mut self,
        program: &'static str,
        offset: u64,
        file: &Path,
    ) -> anyhow::Result<(&'static str, UProbeLinkId)> {
        let p: &mut UProbe = self.ebpf.program_mut(program).expect("loaded at start").try_into()?;
        let link = p.attach(UProbeAttachLocation::AbsoluteOffset(offset), file, UProbeScope::AllProcesses)?;
        Ok((program, link))
    }

    fn detach_uprobe(&mut self, name: &'static str, link: UProbeLinkId) {
        if let Ok(program) = <&mut UProbe>::try_from(self.ebpf.program_mut(name).expect("loaded at start")) {
            if let Err(e) = program.detach(link) {
                log::debug!("detaching {name}: {e}");
            }
        }
    }

    pub(super) fn take_uprobe_link(
        &mut self,
        name: &'static str,
        link: UProbeLinkId,
    ) -> Option<aya::programs::uprobe::UProbeLink> {
        let program = <&mut UProbe>::try_from(self.ebpf.program_mut(name).expect("loaded at start")).ok()?;
        program.take_link(link).map_err(|e| log::debug!("detaching {name}: {e}")).ok()
    }
}
