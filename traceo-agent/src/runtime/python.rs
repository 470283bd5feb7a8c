//! CPython: is a process one, where does its build keep the thread state, and where is the
//! C `Task.__init__` to probe for task lineage.
//!
//! The layout is measured once per executable by running that executable on a short
//! script (`python_layout.py`) that looks for known values in its own memory: no debug
//! symbols, no per-version tables, and the answer is the build's own.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use traceo_ebpf_common::PyLayout;

const LAYOUT_SCRIPT: &str = include_str!("python_layout.py");
/// The C Task's init (the `tp_init` slot, so never inlined away): a local symbol of the
/// `_asyncio` extension module, present unless the file is stripped.
pub const TASK_INIT_SYMBOL: &str = "_asyncio_Task___init__";
/// `contextvars.copy_context` (its method-table entry, so never inlined away): a local
/// symbol of the `_contextvars` extension module.
pub const CONTEXT_COPY_SYMBOL: &str = "_contextvars_copy_context";

/// What the measuring script reports.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Measured {
    pub version: String,
    pub tstate_slot: u32,
    pub thread_id: u32,
    pub context: u32,
    pub task_context: Option<u32>,
    /// `PyContext.ctx_entered` (None: not found, so context copies are not followed).
    #[serde(default)]
    pub context_entered: Option<u32>,
    /// The `_asyncio` extension module file (None when built into the interpreter).
    pub asyncio_module: Option<String>,
    /// The `_contextvars` extension module file (None when built in).
    #[serde(default)]
    pub contextvars_module: Option<String>,
}

impl Measured {
    /// What the programs read; `copies`: whether context copies are followed (the entered
    /// flag is then read at each syscall).
    pub fn layout(&self, copies: bool) -> PyLayout {
        PyLayout {
            tstate_slot: self.tstate_slot,
            thread_id: self.thread_id,
            context: self.context,
            task_context: self.task_context.unwrap_or(0),
            context_entered: if copies { self.context_entered.unwrap_or(0) } else { 0 },
            _pad: 0,
        }
    }
}

/// Whether the executable is a CPython interpreter (by name; a renamed or embedded
/// interpreter is not recognised).
pub fn is_python(exe: &Path) -> bool {
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.starts_with("python") && !name.ends_with("-config")
}

/// Whether the ELF file defines `symbol` (dynamic or static symbol table).
pub fn has_symbol(path: &Path, symbol: &str) -> bool {
    use object::{Object as _, ObjectSymbol as _};
    let Ok(file) = std::fs::File::open(path) else { return false };
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else { return false };
    elf.dynamic_symbols().chain(elf.symbols()).any(|s| s.is_definition() && s.name() == Ok(symbol))
}

/// Run `exe` (as seen through /proc/PID/root) on the layout script.
pub fn measure(exe: &Path) -> anyhow::Result<Measured> {
    let mut child = Command::new(exe)
        .args(["-I", "-S", "-c", LAYOUT_SCRIPT])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env_clear()
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    // A wedged interpreter must not hold the agent: give it a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} did not answer within 5 s", exe.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        bail!("{} could not measure itself: {}", exe.display(), why.lines().last().unwrap_or("no reason given"));
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("unreadable answer from {}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_interpreters() {
        assert!(is_python(Path::new("/usr/bin/python3.11")));
        assert!(is_python(Path::new("/root/.pyenv/versions/3.11.7/bin/python3.11")));
        assert!(!is_python(Path::new("/usr/bin/python3.11-config")));
        assert!(!is_python(Path::new("/usr/sbin/nginx")));
    }

    /// The interpreter that runs the tests measures itself: the script agrees with the
    /// build (offsets are 8-aligned, inside the structs, and the context check holds).
    #[test]
    fn this_machines_python_measures_itself() {
        let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"].iter().map(Path::new).find(|p| p.exists())
        else {
            return eprintln!("SKIPPED: no python3 here");
        };
        let m = measure(python).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(m.tstate_slot.is_multiple_of(8) && m.tstate_slot < 0x1000, "{m:?}");
        assert!(m.context.is_multiple_of(8) && m.context < 0x400, "{m:?}");
        assert!(m.task_context.is_some(), "{m:?}");
        assert!(m.context_entered.is_some_and(|o| (16..0x40).contains(&o)), "{m:?}");
    }
}
