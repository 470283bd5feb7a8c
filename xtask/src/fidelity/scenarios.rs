//! The scenarios: a front (tests/apps/fidelity) serving `/call?req=ID` by calling the shared
//! backend `/leaf?from=ID&k=J`, on one runtime each.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;

use super::{load::Mode, score::ParentKey};
use crate::procs::{self, Proc, free_port, wait_for_port};

/// The target every scenario's recall is held to, where it has one.
const RECALL: Option<f64> = Some(0.95);

#[derive(Clone, Copy, Debug)]
enum Front {
    /// tests/apps/fidelity/front_asgi.py on uvicorn with this `--loop`; fan-out or one call.
    Uvicorn {
        event_loop: &'static str,
        fanout: bool,
        /// Tasks start eagerly (`asyncio.eager_task_factory`, CPython 3.12+).
        eager: bool,
        /// The call is made after the response, by the request's task (a background task).
        after: bool,
        /// The call is made on a thread pool (`to_thread`); the agent follows context copies.
        pool: bool,
    },
    Aiohttp {
        fanout: bool,
        eager: bool,
    },
    Threaded,
    Mcp,
    Nginx,
    Node,
}

pub struct Scenario {
    pub name: &'static str,
    /// Backend calls per request.
    pub fanout: u32,
    /// Recall the agent should reach (reported; failed on only in `--python` runs).
    pub recall_target: Option<f64>,
    /// The oldest CPython (major, minor) its front runs on.
    pub since: (u32, u32),
    /// Log-correlation scenarios: where the front logs a record naming its request (once per
    /// request each); the agent runs with `--log-records` and each record's trace id is scored.
    pub logs: &'static [&'static str],
    front: Front,
}

/// Any CPython the harness runs.
const ANY: (u32, u32) = (3, 9);

pub const SCENARIOS: [Scenario; 15] = [
    Scenario {
        name: "asyncio_uvicorn",
        fanout: 1,
        recall_target: RECALL,
        since: ANY,
        logs: &[],
        front: Front::Uvicorn { event_loop: "asyncio", fanout: false, eager: false, after: false, pool: false },
    },
    Scenario {
        name: "uvloop_uvicorn",
        fanout: 1,
        recall_target: RECALL,
        since: ANY,
        logs: &[],
        front: Front::Uvicorn { event_loop: "uvloop", fanout: false, eager: false, after: false, pool: false },
    },
    Scenario {
        name: "aiohttp",
        fanout: 1,
        recall_target: RECALL,
        since: ANY,
        logs: &[],
        front: Front::Aiohttp { fanout: false, eager: false },
    },
    Scenario {
        name: "gather_fanout",
        fanout: 4,
        recall_target: RECALL,
        since: ANY,
        logs: &[],
        front: Front::Uvicorn { event_loop: "asyncio", fanout: true, eager: false, after: false, pool: false },
    },
    // gather_fanout with eager tasks: each task's first step (often its call) runs inside
    // `Task.__init__`, before the task-creation probe's return.
    Scenario {
        name: "eager_fanout",
        fanout: 4,
        recall_target: RECALL,
        since: (3, 12),
        logs: &[],
        front: Front::Uvicorn { event_loop: "asyncio", fanout: true, eager: true, after: false, pool: false },
    },
    // The same on aiohttp, whose client sends on a pooled connection without suspending
    // first: with eager tasks most calls are sent inside `Task.__init__`.
    Scenario {
        name: "eager_aiohttp",
        fanout: 4,
        recall_target: RECALL,
        since: (3, 12),
        logs: &[],
        front: Front::Aiohttp { fanout: true, eager: true },
    },
    // Work after the response (Starlette's background tasks, the seed's audit write): the
    // request's task answers, then calls the backend.
    Scenario {
        name: "after_response",
        fanout: 1,
        recall_target: RECALL,
        since: ANY,
        logs: &[],
        front: Front::Uvicorn { event_loop: "asyncio", fanout: false, eager: false, after: true, pool: false },
    },
    // The call made on a thread pool (`asyncio.to_thread`, anyio's `to_thread.run_sync` as
    // FastAPI's sync handlers do) with a sync client, the agent run with `--thread-pools`:
    // under uvloop (what uvicorn picks when installed) and on the default loop.
    Scenario {
        name: "thread_pool_uvloop",
        fanout: 1,
        recall_target: RECALL,
        since: ANY,
        logs: &[],
        front: Front::Uvicorn { event_loop: "uvloop", fanout: false, eager: false, after: false, pool: true },
    },
    Scenario {
        name: "thread_pool_asyncio",
        fanout: 1,
        recall_target: RECALL,
        since: ANY,
        logs: &[],
        front: Front::Uvicorn { event_loop: "asyncio", fanout: false, eager: false, after: false, pool: true },
    },
    // The control: a thread per connection. No target: it should simply be right.
    Scenario { name: "threaded", fanout: 1, recall_target: None, since: ANY, logs: &[], front: Front::Threaded },
    Scenario { name: "mcp_tool", fanout: 1, recall_target: RECALL, since: ANY, logs: &[], front: Front::Mcp },
    Scenario { name: "nginx_proxy", fanout: 1, recall_target: RECALL, since: ANY, logs: &[], front: Front::Nginx },
    Scenario { name: "node_http", fanout: 1, recall_target: RECALL, since: ANY, logs: &[], front: Front::Node },
    // Log correlation: the asyncio front logs in its handler (before and after its call) and in
    // a child task the handler creates and awaits; the threaded front in its handler.
    Scenario {
        name: "logs_asyncio",
        fanout: 1,
        recall_target: RECALL,
        since: ANY,
        logs: &["handler", "child", "after-call"],
        front: Front::Uvicorn { event_loop: "asyncio", fanout: false, eager: false, after: false, pool: false },
    },
    Scenario {
        name: "logs_threaded",
        fanout: 1,
        recall_target: None,
        since: ANY,
        logs: &["handler", "after-call"],
        front: Front::Threaded,
    },
];

fn apps() -> PathBuf {
    crate::root().join("tests/apps/fidelity")
}

/// Start `cmd` (in the apps folder, its output to `log`) and wait until `port` listens.
fn serve(cmd: &mut Command, port: u16, log: &Path) -> anyhow::Result<Proc> {
    let err = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let p = Proc::spawn(cmd.current_dir(apps()).stdout(Stdio::null()).stderr(err))?;
    wait_for_port(port).with_context(|| format!("see {}", log.display()))?;
    Ok(p)
}

fn uvicorn(python: &Path, app: &str, port: u16, event_loop: &str) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", &port.to_string()]).args([
        "--loop",
        event_loop,
        "--no-access-log",
        "--log-level",
        "warning",
    ]);
    cmd
}

/// The backend every front calls (uvicorn, asyncio): (process, port).
pub fn start_backend(python: &Path, dir: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let p = serve(&mut uvicorn(python, "back:app", port, "asyncio"), port, &dir.join("back.log"))?;
    Ok((p, port))
}

impl Scenario {
    /// Whether `--python` can run this scenario's front on another interpreter: uvicorn on
    /// the default loop, aiohttp (their packages are in `pythons.rs`).
    pub fn any_python(&self) -> bool {
        self.logs.is_empty()
            && matches!(self.front, Front::Uvicorn { event_loop: "asyncio", .. } | Front::Aiohttp { .. })
    }

    /// Start the front, calling the backend on `backend`, its files in `dir` named `label`:
    /// (process, port).
    pub fn start(&self, python: &Path, dir: &Path, label: &str, backend: u16) -> anyhow::Result<(Proc, u16)> {
        let port = free_port()?;
        let backend_url = format!("http://127.0.0.1:{backend}");
        let log = dir.join(format!("{label}.front.log"));
        let python_app = |script: &str| {
            let mut cmd = Command::new(python);
            cmd.arg(script).arg(port.to_string());
            cmd
        };
        let mut cmd = match self.front {
            Front::Uvicorn { event_loop, fanout, eager, after, pool } => {
                let mut cmd = uvicorn(python, "front_asgi:app", port, event_loop);
                cmd.env("FIDELITY_POOL", if pool { "1" } else { "0" });
                cmd.env("FIDELITY_FANOUT", if fanout { "1" } else { "0" });
                cmd.env("FIDELITY_EAGER", if eager { "1" } else { "0" });
                cmd.env("FIDELITY_AFTER", if after { "1" } else { "0" });
                cmd
            }
            Front::Aiohttp { fanout, eager } => {
                let mut cmd = python_app("front_aiohttp.py");
                cmd.env("FIDELITY_FANOUT", if fanout { "1" } else { "0" });
                cmd.env("FIDELITY_EAGER", if eager { "1" } else { "0" });
                cmd
            }
            Front::Threaded => python_app("front_threaded.py"),
            Front::Mcp => python_app("front_mcp.py"),
            Front::Node => {
                let mut cmd = Command::new("node");
                cmd.arg("front_node.js").arg(port.to_string());
                cmd
            }
            Front::Nginx => return Ok((nginx(dir, port, backend)?, port)),
        };
        cmd.env("FIDELITY_LOGS", if self.logs.is_empty() { "0" } else { "1" });
        Ok((serve(cmd.env("FIDELITY_BACKEND", backend_url), port, &log)?, port))
    }

    /// How the load reaches the front on `port`.
    pub fn load(&self, port: u16) -> (Mode, String) {
        match self.front {
            Front::Mcp => (Mode::Mcp, format!("http://127.0.0.1:{port}/mcp")),
            // nginx rewrites the path only: the upstream request keeps the query, so it
            // carries the call's from and k itself.
            Front::Nginx => (Mode::Http, format!("http://127.0.0.1:{port}/call?req={{id}}&from={{id}}&k=0")),
            _ => (Mode::Http, format!("http://127.0.0.1:{port}/call?req={{id}}")),
        }
    }

    /// How the front's server exchange of a request is recognised.
    pub fn parent_key(&self) -> ParentKey {
        match self.front {
            Front::Mcp => ParentKey::McpHeader,
            _ => ParentKey::Query,
        }
    }

    /// Extra agent arguments: MCP requests are told apart by the session's header; thread
    /// pools and Node.js are followed on request.
    pub fn agent_args(&self) -> &'static [&'static str] {
        match self.front {
            Front::Mcp => &["--header", "X-Fidelity-Req"],
            Front::Uvicorn { pool: true, .. } => &["--thread-pools"],
            Front::Node => &["--node-inject"],
            _ => &[],
        }
    }
}

/// nginx proxying `/call` to the backend's `/leaf` over keep-alive upstream connections.
fn nginx(dir: &Path, port: u16, backend: u16) -> anyhow::Result<Proc> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix)?;
    let http = format!(
        "access_log off;\n\
         upstream back {{ server 127.0.0.1:{backend}; keepalive 16; }}\n\
         server {{ listen 127.0.0.1:{port};\n\
           location = /call {{ rewrite ^ /leaf break; proxy_pass http://back;\n\
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
    );
    procs::nginx_with(&prefix, port, &http)
}
