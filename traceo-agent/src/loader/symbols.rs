//! Where a function sits in an ELF file, resolved once per (file, symbol): aya resolves a
//! symbol by parsing the whole file at every attach, and per-process probes attach again for
//! every traced process (a service forking short-lived children would attach hundreds of
//! times a second). Attaching by file offset costs only the kernel's part.
//!
//! The cache is shared (cloned handles): the attach worker (`crate::attach`) resolves the
//! offsets a plan needs on its own thread, so the ring's thread finds them cached and only
//! makes the attach syscalls.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use crate::tls::libraries::FileId;

/// (file, symbol) -> its offset, or why not.
type Found = HashMap<(FileId, String), Result<u64, String>>;

#[derive(Clone, Default)]
pub struct SymbolOffsets {
    found: Arc<Mutex<Found>>,
}

impl SymbolOffsets {
    /// The file offset of `symbol`'s code in `path` (cached by the file's identity).
    pub fn offset(&self, path: &Path, symbol: &str) -> anyhow::Result<u64> {
        self.cached(path, symbol, || file_offset(path, symbol))
    }

    /// The file offset of OpenSSL's internal function behind the wrappers `plain` and `ex`
    /// (see `tls::callee`), cached like a symbol's.
    pub fn shared_callee(&self, path: &Path, plain: &str, ex: &str) -> anyhow::Result<u64> {
        self.cached(path, &format!("the callee of {plain} and {ex}"), || shared_callee_offset(path, plain, ex))
    }

    /// Where one direction of OpenSSL's I/O is probed in `path`: the internal function both
    /// public ones call when found, else the public functions themselves (`hold_ssl` attaches
    /// what this says; the TLS planner calls it ahead to warm the cache).
    pub fn ssl_targets(&self, path: &Path, call: &super::programs::SslCall) -> SslTargets {
        match self.shared_callee(path, call.plain.0, call.ex.0) {
            Ok(offset) => SslTargets::Internal(offset),
            Err(why) => {
                SslTargets::Public { why, plain: self.offset(path, call.plain.0), ex: self.offset(path, call.ex.0) }
            }
        }
    }

    /// `key`'s offset in `path`, computed by `find` on a miss. The file is parsed outside the
    /// lock: a parse never holds up a lookup of another file.
    fn cached(&self, path: &Path, key: &str, find: impl FnOnce() -> anyhow::Result<u64>) -> anyhow::Result<u64> {
        let id = FileId::of(path).with_context(|| format!("cannot stat {}", path.display()))?;
        let key = (id, key.to_owned());
        if let Some(found) = self.found.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return found.clone().map_err(anyhow::Error::msg);
        }
        let found = find().map_err(|e| format!("{e:#}"));
        self.found.lock().unwrap_or_else(|e| e.into_inner()).insert(key, found.clone());
        found.map_err(anyhow::Error::msg)
    }
}

/// See [`SymbolOffsets::ssl_targets`].
pub enum SslTargets {
    /// The internal function's offset.
    Internal(u64),
    /// Why the internal function was not found, and the public functions' offsets (the `_ex`
    /// form is missing before OpenSSL 1.1.1).
    Public { why: anyhow::Error, plain: anyhow::Result<u64>, ex: anyhow::Result<u64> },
}

/// A defined symbol's address translated to a file offset through its section.
pub fn file_offset(path: &Path, symbol: &str) -> anyhow::Result<u64> {
    let cache = open(path)?;
    let elf = parse(&cache, path)?;
    let (section, address) = code_of(&elf, path, symbol)?;
    in_file(&section, address)
}

/// The file offset of the function both `plain` and `ex` call: `ex` a thin wrapper around it,
/// the callee in the same section and not itself exported (OpenSSL's internal functions are
/// hidden; a wrapper calling another public function is not OpenSSL's layout).
pub fn shared_callee_offset(path: &Path, plain: &str, ex: &str) -> anyhow::Result<u64> {
    let cache = open(path)?;
    let elf = parse(&cache, path)?;
    let (section, ex_at) = code_of(&elf, path, ex)?;
    let (plain_section, plain_at) = code_of(&elf, path, plain)?;
    anyhow::ensure!(plain_section.index() == section.index(), "{plain} and {ex} are in different sections");
    // A malformed file's section may claim any size: nothing here may overflow.
    let end = section.address().saturating_add(section.size());
    // The thin wrapper's call comes within its first bytes; the plain form checks its
    // argument (and sets a stack guard) first.
    let bytes = |at: u64, want: u64| {
        let len = want.min(end.saturating_sub(at));
        section.data_range(at, len).ok().flatten().unwrap_or_default()
    };
    let Some(target) = crate::tls::callee::shared_callee((bytes(ex_at, 24), ex_at), (bytes(plain_at, 96), plain_at))
    else {
        bail!("{ex} is not a thin wrapper around a function {plain} also calls");
    };
    anyhow::ensure!((section.address()..end).contains(&target), "{ex} calls outside its section");
    anyhow::ensure!(
        !elf.dynamic_symbols().any(|s| s.is_definition() && s.address() == target),
        "{ex} calls an exported function"
    );
    in_file(&section, target)
}

type Cache = object::ReadCache<std::fs::File>;
type Elf<'a> = object::File<'a, &'a Cache>;
type Section<'a, 'f> = object::Section<'a, 'f, &'a Cache>;

fn open(path: &Path) -> anyhow::Result<Cache> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(object::ReadCache::new(file))
}

fn parse<'a>(cache: &'a Cache, path: &Path) -> anyhow::Result<Elf<'a>> {
    object::File::parse(cache).with_context(|| format!("{} is not an ELF file", path.display()))
}

/// The section holding `symbol`'s code, and its address.
fn code_of<'a, 'f>(elf: &'f Elf<'a>, path: &Path, symbol: &str) -> anyhow::Result<(Section<'a, 'f>, u64)> {
    let Some(sym) = elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.is_definition() && s.name() == Ok(symbol))
    else {
        bail!("no symbol {symbol} in {}", path.display());
    };
    let index = sym.section_index().with_context(|| format!("{symbol} is in no section"))?;
    Ok((elf.section_by_index(index)?, sym.address()))
}

/// An address in `section` as a file offset.
fn in_file(section: &Section<'_, '_>, address: u64) -> anyhow::Result<u64> {
    let Some((offset, _)) = section.file_range() else { bail!("{} has no file range", section.name().unwrap_or("?")) };
    let address = address.checked_sub(section.address()).context("an address before its section")?;
    Ok(address + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_functions_resolve_and_unknown_ones_say_so() {
        let Some(libc) = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            return eprintln!("SKIPPED: no libc.so.6 at the Debian path");
        };
        let cache = SymbolOffsets::default();
        let write = cache.offset(libc, "write").expect("write is in libc");
        assert!(write > 0);
        assert_eq!(cache.offset(libc, "write").unwrap(), write, "cached");
        let err = format!("{:#}", cache.offset(libc, "no_such_function_here").unwrap_err());
        assert!(err.contains("no symbol no_such_function_here"), "{err}");
    }

    #[test]
    fn openssl_internal_functions_are_found_behind_both_wrappers() {
        let Some(libssl) = crate::tls::libraries::system_libssl().into_iter().find(|p| p.ends_with("libssl.so.3"))
        else {
            return eprintln!("SKIPPED: no system libssl.so.3");
        };
        let cache = SymbolOffsets::default();
        let read = cache.shared_callee(&libssl, "SSL_read", "SSL_read_ex").expect("OpenSSL 3's ssl_read_internal");
        let write = cache.shared_callee(&libssl, "SSL_write", "SSL_write_ex").expect("ssl_write_internal");
        let public: Vec<u64> = ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex", "SSL_peek"]
            .iter()
            .map(|f| cache.offset(&libssl, f).unwrap())
            .collect();
        assert_ne!(read, write);
        assert!(!public.contains(&read) && !public.contains(&write), "{read:#x} {write:#x} {public:x?}");
        // The other pairs of names do not share a callee this way: SSL_write_ex is not a
        // wrapper around anything SSL_read calls.
        assert!(cache.shared_callee(&libssl, "SSL_read", "SSL_write_ex").is_err());
        assert!(cache.shared_callee(&libssl, "SSL_read", "no_such_function").is_err());
    }
}
