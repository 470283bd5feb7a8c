//! `--python SPEC`: the asyncio scenarios run again with their front on other CPython
//! interpreters (the agent measures each build itself; this checks that it does so on every
//! version it meets). A SPEC is an interpreter's path, a version `X.Y` (found in pyenv's
//! versions, else as `pythonX.Y` on PATH; skipped with a message when absent) or `all`
//! (every version from 3.9 to 3.14). Each interpreter gets a virtualenv of its own with the
//! fronts' packages, `target/pyenv-X.Y` (made once).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{root, run};

/// The versions `all` stands for: those asyncio task tracking is meant to cover.
const ALL: &[&str] = &["3.9", "3.10", "3.11", "3.12", "3.13", "3.14"];
/// What the uvicorn and aiohttp fronts import (loose pins: older Pythons lack the newest
/// releases).
const PACKAGES: &[&str] = &["uvicorn>=0.30,<1", "httpx>=0.28,<1", "aiohttp>=3.9,<4"];

/// One interpreter the fronts run on.
#[derive(Clone, Debug)]
pub struct Interpreter {
    /// Its full version (`3.12.1`).
    pub version: String,
    /// The interpreter the virtualenv was made from.
    pub base: PathBuf,
    /// The virtualenv's python, which the front runs as.
    pub python: PathBuf,
}

/// The interpreters `specs` name, with their virtualenvs ready; versions not found here are
/// left out with a message (an explicit path that does not exist is an error).
pub fn resolve(specs: &[String]) -> anyhow::Result<Vec<Interpreter>> {
    let mut wanted: Vec<String> = vec![];
    for spec in specs {
        if spec == "all" {
            wanted.extend(ALL.iter().map(|v| v.to_string()));
        } else {
            wanted.push(spec.clone());
        }
    }
    let mut found: Vec<Interpreter> = vec![];
    for spec in wanted {
        let base = if spec.contains('/') {
            let path = PathBuf::from(&spec);
            anyhow::ensure!(path.is_file(), "--python {spec}: no such interpreter");
            path
        } else {
            let numbers: Vec<&str> = spec.split('.').collect();
            if numbers.len() != 2 || numbers.iter().any(|n| n.parse::<u32>().is_err()) {
                bail!("--python {spec}: give an interpreter's path, a version X.Y or all");
            }
            match find_version(&spec) {
                Some(path) => path,
                None => {
                    eprintln!(
                        "fidelity: SKIPPED python {spec}: not installed here (no pyenv version {spec}.*, \
                         no python{spec} on PATH)"
                    );
                    continue;
                }
            }
        };
        let version = full_version(&base)?;
        if found.iter().any(|i| i.version == version) {
            continue;
        }
        let python = virtualenv(&base, &version)?;
        found.push(Interpreter { version, base, python });
    }
    if found.is_empty() {
        bail!("--python: none of {} is installed here", specs.join(", "));
    }
    Ok(found)
}

/// pyenv's newest `X.Y.N` build, else `pythonX.Y` on PATH.
fn find_version(version: &str) -> Option<PathBuf> {
    let pyenv = env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".pyenv"));
    let prefix = format!("{version}.");
    let mut builds: Vec<(u32, PathBuf)> = std::fs::read_dir(pyenv.join("versions"))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            // Plain releases only: no `3.13.0t` (free-threaded) or `3.14.0rc1`.
            let patch = name.strip_prefix(&prefix)?.parse::<u32>().ok()?;
            let exe = pyenv.join("versions").join(&name).join(format!("bin/python{version}"));
            exe.is_file().then_some((patch, exe))
        })
        .collect();
    builds.sort();
    if let Some((_, exe)) = builds.pop() {
        return Some(exe);
    }
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(format!("python{version}")))
        .find(|p| p.is_file())
}

/// `3.12` of `3.12.1`, as numbers.
pub fn minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `3.12.1`: the version `python` reports.
pub fn full_version(python: &Path) -> anyhow::Result<String> {
    let out = Command::new(python)
        .args(["-I", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .with_context(|| format!("run {}", python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} does not run: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `target/pyenv-X.Y` made from `base` with the fronts' packages (once: a stamp records what).
fn virtualenv(base: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let minor: Vec<&str> = version.split('.').take(2).collect();
    let venv = root().join(format!("target/pyenv-{}", minor.join(".")));
    let python = venv.join("bin/python");
    let stamp = venv.join(".traceo-installed");
    let wanted = format!("{} {}", base.display(), PACKAGES.join(" "));
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && python.exists() {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new(base).args(["-m", "venv"]).arg(&venv))
        .with_context(|| format!("make a virtualenv from {} (Debian: apt-get install python3-venv)", base.display()))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]).args(PACKAGES))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
