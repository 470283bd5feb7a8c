//! A throwaway PostgreSQL cluster, for the live database tests (tests/db.rs) and the demo
//! (xtask/src/procs.rs compiles this file too, through `#[path]`): std only, and it stops
//! short of spawning the server, since each side has its own process handle and errors.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The newest installed PostgreSQL's programs (Debian's /usr/lib/postgresql/<version>/bin).
pub fn bin() -> Option<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    bins.sort();
    bins.pop()
}

/// Creates a cluster in `dir`/pgdata (trust authentication, user `postgres`, UTF-8), all of
/// `dir` given to the `postgres` user (initdb refuses root, so this needs root), and returns
/// the command that serves it on 127.0.0.1:`port` (socket in `dir`) with the extra
/// `-c name=value` `settings`, for the caller to spawn and wait for.
pub fn cluster(bin: &Path, dir: &Path, port: u16, settings: &[String]) -> Result<Command, String> {
    let data = dir.join("pgdata");
    std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status();
    if !chown.as_ref().is_ok_and(|s| s.success()) {
        return Err(format!("chown -R postgres:postgres {}: {chown:?}", dir.display()));
    }
    let as_postgres = |program: &str| {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    };
    let init = as_postgres("initdb")
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start initdb: {e}"))?;
    if !init.status.success() {
        return Err(format!("initdb failed ({}): {}", init.status, String::from_utf8_lossy(&init.stderr)));
    }
    let mut server = as_postgres("postgres");
    server
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-k"])
        .arg(dir)
        .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(server)
}
