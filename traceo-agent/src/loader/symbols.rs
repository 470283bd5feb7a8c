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
    /// The file is parsed outside the lock: a parse never holds up a lookup of another file.
    pub fn offset(&self, path: &Path, symbol: &str) -> anyhow::Result<u64> {
        let id = FileId::of(path).with_context(|| format!("cannot stat {}", path.display()))?;
        let key = (id, symbol.to_owned());
        if let Some(found) = self.found.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return found.clone().map_err(anyhow::Error::msg);
        }
        let found = file_offset(path, symbol).map_err(|e| format!("{e:#}"));
        self.found.lock().unwrap_or_else(|e| e.into_inner()).insert(key, found.clone());
        found.map_err(anyhow::Error::msg)
    }
}

/// A defined symbol's address translated to a file offset through its section.
pub fn file_offset(path: &Path, symbol: &str) -> anyhow::Result<u64> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).with_context(|| format!("{} is not an ELF file", path.display()))?;
    let Some(sym) = elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.is_definition() && s.name() == Ok(symbol))
    else {
        bail!("no symbol {symbol} in {}", path.display());
    };
    let index = sym.section_index().with_context(|| format!("{symbol} is in no section"))?;
    let section = elf.section_by_index(index)?;
    let Some((offset, _)) = section.file_range() else { bail!("{symbol}'s section has no file range") };
    let address = sym.address().checked_sub(section.address()).context("symbol before its section")?;
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
}
