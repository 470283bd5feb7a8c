//! Which TLS library a process uses, read from /proc/PID/maps and the files themselves:
//! OpenSSL's libssl (probed), an executable that carries OpenSSL and exports its symbols
//! (Node.js: probed too), or a library the agent cannot see into (reported).

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol, read::ReadCache};

/// A file as the kernel knows it: uprobes attach to an inode, so two paths to one file (a
/// symlink, another mount namespace) are one attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> Option<FileId> {
        let meta = fs::metadata(path).ok()?;
        Some(FileId { dev: meta.dev(), ino: meta.ino() })
    }
}

/// TLS libraries the agent knows it cannot probe, by file name prefix.
const OPAQUE_LIBRARIES: &[(&str, &str)] = &[
    ("libgnutls.so", "GnuTLS"),
    ("libnss3.so", "NSS"),
    ("libssl3.so", "NSS"),
    ("libwolfssl.so", "wolfSSL"),
    ("libmbedtls.so", "Mbed TLS"),
    ("libboringssl", "BoringSSL"),
];

/// OpenSSL's libssl by file name: `libssl.so`, `libssl.so.3`, `libssl.so.1.1`, ...
pub fn is_libssl(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == "libssl.so" || n.starts_with("libssl.so."))
}

/// What a process's memory map says about its TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessTls {
    /// libssl files it maps, reachable from the agent (through /proc/PID/root).
    pub libssl: Vec<PathBuf>,
    /// Its executable, reachable from the agent.
    pub exe: Option<PathBuf>,
    /// TLS libraries it maps that are not probed ("GnuTLS", ...).
    pub opaque: BTreeSet<&'static str>,
}

/// Read /proc/PID/maps; `None` when the process is gone.
pub fn process_tls(pid: u32) -> Option<ProcessTls> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut out = parse_maps(&maps, &root);
    out.exe = fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| in_root(&root, &p));
    Some(out)
}

/// `path` as the agent reaches it: through the process's root (its mount namespace).
fn in_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn parse_maps(maps: &str, root: &Path) -> ProcessTls {
    let mut out = ProcessTls::default();
    let mut seen = BTreeSet::new();
    // address perms offset dev inode path
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        let path = Path::new(path);
        if !path.is_absolute() || !seen.insert(path) {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if is_libssl(path) {
            out.libssl.push(in_root(root, path));
        } else if let Some((_, lib)) = OPAQUE_LIBRARIES.iter().find(|(prefix, _)| name.starts_with(prefix)) {
            out.opaque.insert(lib);
        }
    }
    out
}

/// The libssl files the dynamic linker would load (its cache, `ldconfig -p`), else those
/// in the usual library directories. Probing them up front covers processes that load
/// libssl later (Python imports `ssl` on first use) with no race against their first call.
pub fn system_libssl() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .ok()
        .map(|o| parse_ldconfig(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    if found.is_empty() {
        for dir in
            ["/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
        {
            let Ok(entries) = fs::read_dir(dir) else { continue };
            found.extend(entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| is_libssl(p)));
        }
    }
    found.sort();
    found
}

/// `\tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3`
fn parse_ldconfig(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split_once(" => ").map(|(_, p)| PathBuf::from(p.trim())))
        .filter(|p| is_libssl(p))
        .collect()
}

/// What an executable (or library) file holds, read lazily from its ELF headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElfTls {
    /// Defines `SSL_write` and `SSL_read` (OpenSSL linked in and its symbols kept).
    pub openssl_symbols: bool,
    /// A Go program (crypto/tls, invisible to these probes).
    pub go: bool,
}

pub fn inspect_elf(path: &Path) -> ElfTls {
    let Ok(file) = fs::File::open(path) else { return ElfTls::default() };
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else { return ElfTls::default() };
    let defines =
        |name: &str| elf.dynamic_symbols().chain(elf.symbols()).any(|s| s.is_definition() && s.name() == Ok(name));
    ElfTls {
        openssl_symbols: defines("SSL_write") && defines("SSL_read"),
        go: elf.section_by_name(".go.buildinfo").is_some() || elf.section_by_name(".gopclntab").is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_name_libssl_and_opaque_libraries() {
        let maps = "\
7f00-7f10 r--p 00000000 08:01 100 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10-7f20 r-xp 00001000 08:01 100 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f20-7f30 r--p 00000000 08:01 101 /usr/lib/x86_64-linux-gnu/libgnutls.so.30
7f30-7f40 r--p 00000000 08:01 102 /usr/lib/x86_64-linux-gnu/libssl3.so
7f40-7f50 rw-p 00000000 00:00 0 [heap]
7f50-7f60 r--p 00000000 08:01 103 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
";
        let tls = parse_maps(maps, Path::new("/proc/42/root"));
        assert_eq!(tls.libssl, vec![PathBuf::from("/proc/42/root/usr/lib/x86_64-linux-gnu/libssl.so.3")]);
        assert_eq!(tls.opaque.iter().copied().collect::<Vec<_>>(), vec!["GnuTLS", "NSS"]);
    }

    #[test]
    fn ldconfig_lines_give_libssl_paths() {
        let text = "3 libs found in cache `/etc/ld.so.cache'\n\
            \tlibssl3.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl3.so\n\
            \tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3\n\
            \tlibssl.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so\n";
        assert_eq!(
            parse_ldconfig(text),
            vec![PathBuf::from("/lib/x86_64-linux-gnu/libssl.so.3"), PathBuf::from("/lib/x86_64-linux-gnu/libssl.so")]
        );
    }

    #[test]
    fn only_openssl_libssl_names_match() {
        assert!(is_libssl(Path::new("/usr/lib/libssl.so.1.1")));
        assert!(!is_libssl(Path::new("/usr/lib/libssl3.so")));
        assert!(!is_libssl(Path::new("/usr/lib/libssl.sox")));
    }
}
