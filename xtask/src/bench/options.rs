//! The runtime options' cost (issue #12): `--thread-pools` on uvicorn fronts, `--node-inject`
//! on a Node.js front, each beside the plain traced arm.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;
use serde_json::Value;

use super::{Arms, Server, Serving, Settings, server_overhead};
use crate::procs::{self, Proc, free_port, wait_for_port};

/// wrk's script for the fidelity fronts: each request its own id (`front_asgi.py` picks the
/// thread pool by the id's CRC: half go through `asyncio.to_thread`, half through anyio's).
const FRONT_SCRIPT: &str =
    "local n = 0\nrequest = function()\n  n = n + 1\n  return wrk.format(nil, \"/call?req=r\" .. n)\nend\n";

/// The backend the fronts call: Node.js answering `leaf` at once (the port is its argument).
const LEAF: &str = "require('http').createServer((q, r) => r.end('leaf')).listen(+process.argv[1], '127.0.0.1')";

/// Node.js running `args` with `env` (its output discarded), waited for until `port` listens.
fn node(args: &[&str], env: &[(&str, &str)], port: u16) -> anyhow::Result<Proc> {
    let p = Proc::spawn(
        Command::new("node").args(args).envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::null()),
    )?;
    wait_for_port(port)?;
    Ok(p)
}

/// The runtime options' cost side by side (issue #12), on the fidelity fronts with their sleeps
/// left out (`FIDELITY_NO_SLEEP=1`), each request calling a Node.js leaf (not traced) over
/// keep-alive connections, the front's own CPU measured: uvicorn with each call on a thread
/// pool (`FIDELITY_POOL=1`) on uvloop and on the default asyncio loop, untraced, traced and
/// traced with `--thread-pools`; the Node.js front untraced, traced and traced with
/// `--node-inject`, a fresh front for each arm (the script stays in a process for its life).
pub(super) fn runtime_options(agent_bin: &Path, python: &Path, dir: &Path, s: &Settings) -> anyhow::Result<[Value; 3]> {
    let script = dir.join("front.lua");
    std::fs::write(&script, FRONT_SCRIPT)?;
    let leaf_port = free_port()?;
    let _leaf = node(&["-e", LEAF, &leaf_port.to_string()], &[], leaf_port)?;
    let backend = format!("http://127.0.0.1:{leaf_port}");
    let env = [("FIDELITY_NO_SLEEP", "1"), ("FIDELITY_BACKEND", &backend)];
    let apps = crate::root().join("tests/apps/fidelity");
    let pools = Arms { floor: false, bound: false, traced: &[("traced", &[]), ("thread_pools", &["--thread-pools"])] };
    let mut out = vec![];
    for (name, event_loop) in [("uvicorn-pool-uvloop", "uvloop"), ("uvicorn-pool-asyncio", "asyncio")] {
        let port = free_port()?;
        let env = [env[0], env[1], ("FIDELITY_POOL", "1")];
        let front = procs::uvicorn_app(python, &apps, "front_asgi:app", port, &["--loop", event_loop], &env)?;
        let url = format!("http://127.0.0.1:{port}/call?req=0");
        let serving = Serving::Shared { url, port, pid: Some(front.pid()) };
        out.push(server_overhead(agent_bin, &Server { name, serving, script: Some(&script) }, s, &pools)?);
    }
    let front_js = apps.join("front_node.js");
    let front_js = front_js.to_str().context("a UTF-8 path")?;
    let start = || {
        let port = free_port()?;
        Ok((node(&[front_js, &port.to_string()], &env, port)?, port))
    };
    let serving = Serving::Fresh { start: &start, path: "/call?req=0" };
    let inject = Arms { floor: false, bound: false, traced: &[("traced", &[]), ("node_inject", &["--node-inject"])] };
    out.push(server_overhead(agent_bin, &Server { name: "node-front", serving, script: Some(&script) }, s, &inject)?);
    Ok(out.try_into().expect("three servers"))
}
