//! Runtime awareness: which traced processes serve many requests on one thread in a way the
//! probes can tell apart, and keeping the kernel told (`RUNTIME_PROCS`) and the runtime
//! probes attached.
//!
//! - CPython: its current `contextvars.Context` read at each socket syscall (one per asyncio
//!   task), and task lineage from a probe on task creation (`python`).
//! - nginx: a probe on `ngx_http_upstream_init` names the client connection each upstream
//!   connect or request serves.
//! - Node.js (`--node-inject`): a script evaluated through the inspector marks each outbound
//!   write with its inbound connection (`node`, `node_marks`).
//!
//! Per process, one [`Runtime`]; logged once when it changes and shown by `check`.

pub mod node;
pub mod node_marks;
pub mod python;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use traceo_ebpf_common::{RuntimeProc, runtime_kind};

use crate::{
    loader::{Probes, programs},
    tls::libraries::FileId,
};

/// What the runtime tracking was asked to do beyond the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// `--thread-pools`.
    pub thread_pools: bool,
    /// `--node-inject`: the marker sink's port.
    pub node_sink: Option<u16>,
}

/// nginx's function that starts the upstream part of a proxied request (exported).
pub const NGINX_UPSTREAM_SYMBOL: &str = "ngx_http_upstream_init";

/// What the agent knows about a traced process's runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// Nothing known: calls get a parent only from certain evidence (propagated context,
    /// connection ends, a thread serving one request).
    Other,
    /// CPython whose current context is read at each socket syscall; `tasks` when the task
    /// probe is attached too (lineage of tasks created while serving a request);
    /// `thread_pools` with `--thread-pools`: whether the context-copy probe is attached.
    Python { version: String, tasks: bool, note: Option<String>, thread_pools: Option<Result<(), String>> },
    /// CPython the agent could not measure (named why).
    PythonUnsupported(String),
    /// nginx with its upstream probe (`Err`: why not).
    Nginx(Result<(), String>),
    /// Node.js: whether the marker script was injected (`None`: not asked, `--node-inject`
    /// is off).
    Node(Option<Result<(), String>>),
}

impl Runtime {
    pub fn describe(&self) -> String {
        match self {
            Runtime::Other => "no runtime tracking (parents from threads, connections and headers)".into(),
            Runtime::Python { version, tasks, note, thread_pools } => {
                let tasks = if *tasks {
                    "task tracking on (context per task, task lineage)".to_owned()
                } else {
                    format!("context per task on, task lineage off ({})", note.as_deref().unwrap_or("no task probe"))
                };
                let pools = match thread_pools {
                    None => "",
                    Some(Ok(())) => "; thread pools followed (to_thread, run_in_threadpool)",
                    Some(Err(_)) => "; thread pools not followed",
                };
                let why = match thread_pools {
                    Some(Err(why)) => format!(" ({why})"),
                    _ => String::new(),
                };
                format!("python{version} asyncio: {tasks}{pools}{why}")
            }
            Runtime::PythonUnsupported(why) => format!("python: no task tracking ({why})"),
            Runtime::Nginx(Ok(())) => "nginx: upstream requests tied to their client requests".into(),
            Runtime::Nginx(Err(why)) => format!("nginx: upstream tracking off ({why})"),
            Runtime::Node(None) => {
                "node: no runtime tracking (--node-inject ties outbound calls to their requests)".into()
            }
            Runtime::Node(Some(Ok(()))) => {
                "node: outbound calls tied to their requests (script injected through the inspector)".into()
            }
            Runtime::Node(Some(Err(why))) => format!("node: script not injected ({why})"),
        }
    }
}

/// Each traced process's runtime. Plans ([`plan`]: reading the executable, measuring a
/// CPython once per executable, finding symbols) are made on the attach worker; what comes
/// back is applied here, on the ring's thread (a map write and the attach syscalls). Until
/// then the process has no `RUNTIME_PROCS` entry: its calls carry no runtime signal and get
/// parents only from certain evidence, as for any other process.
#[derive(Default)]
pub struct Runtimes {
    processes: HashMap<u32, Runtime>,
    /// Processes whose plan is asked for and not back yet.
    pending: std::collections::HashSet<u32>,
    /// What was found, logged per process (the first few per finding at info).
    logged: crate::findings::FindingLog<String>,
}

impl Runtimes {
    /// A process became traced or ran a new program: its runtime is to be planned (the
    /// caller asks the attach worker; the plan comes back through [`Runtimes::planned`]).
    pub fn track(&mut self, pid: u32) {
        self.pending.insert(pid);
    }

    /// Whether `pid`'s runtime is planned or being planned.
    pub fn known(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid) || self.pending.contains(&pid)
    }

    /// The worker could not take `pid`'s request (its queue was full): asked again at the
    /// next refresh (as a process not planned yet; its map entry was cleared at its exec,
    /// or it has none yet).
    pub fn not_asked(&mut self, pid: u32) {
        self.pending.remove(&pid);
        self.processes.remove(&pid);
    }

    /// A plan made off the ring's thread: tell the kernel, attach the runtime probes.
    pub fn planned(&mut self, probes: &mut Probes, pid: u32, plan: Plan) {
        // No longer traced since it was asked for (refresh forgot it). A plan may also come
        // for a process already planned (asked again at its exec): it replaces the last.
        if !self.pending.remove(&pid) && !self.processes.contains_key(&pid) {
            return;
        }
        let runtime = apply(probes, pid, plan);
        if self.processes.get(&pid) != Some(&runtime) && runtime != Runtime::Other {
            let comm = crate::procfs::comm(pid).unwrap_or_default();
            let description = runtime.describe();
            let message = format!("pid {pid} ({comm}): {description}");
            self.logged.log(description, log::Level::Info, &message);
        }
        self.processes.insert(pid, runtime);
    }

    /// Called with the traced processes: forget the gone ones; returns the new ones, whose
    /// runtime is to be planned.
    pub fn refresh(&mut self, probes: &mut Probes, traced: &std::collections::HashSet<u32>) -> Vec<u32> {
        let gone: Vec<u32> = self.processes.keys().filter(|p| !traced.contains(p)).copied().collect();
        for pid in gone {
            self.processes.remove(&pid);
            probes.forget_runtime(pid);
        }
        self.pending.retain(|p| traced.contains(p));
        let new: Vec<u32> =
            traced.iter().filter(|p| !self.processes.contains_key(p) && !self.pending.contains(p)).copied().collect();
        for &pid in &new {
            self.track(pid);
        }
        new
    }
}

/// Tell the kernel and attach what `plan` found.
fn apply(probes: &mut Probes, pid: u32, plan: Plan) -> Runtime {
    // A plan is the whole truth about the process: no entry, no probe hold left from an
    // earlier program (a hold taken again below costs no syscall).
    probes.forget_runtime(pid);
    match plan {
        Plan::Other => Runtime::Other,
        Plan::Unsupported(why) => Runtime::PythonUnsupported(why),
        Plan::Python { measured, module, note, copies } => {
            let thread_pools = copies.map(|found| {
                found.and_then(|file| {
                    probes
                        .hold_runtime_probe(&file, python::CONTEXT_COPY_SYMBOL, programs::CONTEXT_COPY, pid)
                        .map_err(|e| format!("{e:#}"))
                })
            });
            let layout = measured.layout(matches!(thread_pools, Some(Ok(()))));
            let rt = RuntimeProc { kind: runtime_kind::PYTHON, _pad: 0, python: layout };
            if let Err(e) = probes.set_runtime(pid, rt) {
                return Runtime::PythonUnsupported(format!("kernel map: {e:#}"));
            }
            let (tasks, note) = match module {
                None => (false, note),
                Some(module) => {
                    match probes.hold_runtime_probe(&module, python::TASK_INIT_SYMBOL, programs::TASK_INIT, pid) {
                        Ok(()) => (true, None),
                        Err(e) => (false, Some(format!("{e:#}"))),
                    }
                }
            };
            Runtime::Python { version: measured.version, tasks, note, thread_pools }
        }
        Plan::Nginx(Err(why)) => Runtime::Nginx(Err(why)),
        Plan::Node { injected, .. } => Runtime::Node(injected),
        Plan::Nginx(Ok(exe)) => {
            let attached =
                probes.hold_runtime_probe(&exe, NGINX_UPSTREAM_SYMBOL, programs::NGINX_UPSTREAM_INIT, pid).and_then(
                    |()| probes.set_runtime(pid, RuntimeProc { kind: runtime_kind::NGINX, ..Default::default() }),
                );
            Runtime::Nginx(attached.map_err(|e| format!("{e:#}")))
        }
    }
}

/// What a process's runtime offers, before anything is attached.
pub enum Plan {
    Other,
    /// CPython, measured; `module`: the `_asyncio` file to probe for task creation (with its
    /// symbol), else `note` says why lineage is off.
    Python {
        measured: python::Measured,
        module: Option<PathBuf>,
        note: Option<String>,
        /// With `--thread-pools`: the `_contextvars` file to probe for context copies, or why
        /// there is none.
        copies: Option<Result<PathBuf, String>>,
    },
    Unsupported(String),
    /// nginx: its executable (through /proc/PID/root), or why it cannot be probed.
    Nginx(Result<PathBuf, String>),
    /// Node.js: identified (its executable) or not (why); `injected`: the marker script's
    /// injection, when asked for.
    Node {
        found: Result<PathBuf, String>,
        injected: Option<Result<(), String>>,
    },
}

/// [`plan`], then the offsets of the symbols it will probe resolved into `symbols` (so the
/// attach on the ring's thread parses nothing). The attach worker's.
pub fn plan_with_offsets(
    pid: u32,
    measured: &mut HashMap<FileId, Result<python::Measured, String>>,
    symbols: &crate::loader::symbols::SymbolOffsets,
    options: Options,
) -> Plan {
    let mut p = plan(pid, measured, options.thread_pools);
    if let (Plan::Node { found, injected }, Some(port)) = (&mut p, options.node_sink) {
        *injected = Some(match found {
            Ok(_) => node::inject(pid, port),
            Err(why) => Err(format!("not identified as Node.js: {why}")),
        });
    }
    match &p {
        Plan::Python { module, copies, .. } => {
            if let Some(module) = module {
                let _ = symbols.offset(module, python::TASK_INIT_SYMBOL);
            }
            if let Some(Ok(file)) = copies {
                let _ = symbols.offset(file, python::CONTEXT_COPY_SYMBOL);
            }
        }
        Plan::Nginx(Ok(exe)) => {
            let _ = symbols.offset(exe, NGINX_UPSTREAM_SYMBOL);
        }
        _ => {}
    }
    p
}

/// Look at `pid`: measure its interpreter once per executable (`measured` caches);
/// `thread_pools`: find where context copies are made too.
pub fn plan(pid: u32, measured: &mut HashMap<FileId, Result<python::Measured, String>>, thread_pools: bool) -> Plan {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let Ok(target) = std::fs::read_link(&exe) else { return Plan::Other };
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    if target.file_name().is_some_and(|n| n == "nginx") {
        let file = root.join(target.to_string_lossy().trim_start_matches('/'));
        return Plan::Nginx(if python::has_symbol(&file, NGINX_UPSTREAM_SYMBOL) {
            Ok(file)
        } else {
            Err(format!("{} does not export {NGINX_UPSTREAM_SYMBOL}", target.display()))
        });
    }
    if target.file_name().is_some_and(|n| n == "node" || n == "nodejs") {
        return Plan::Node { found: node::identify(pid), injected: None };
    }
    if !python::is_python(&target) {
        return Plan::Other;
    }
    let Some(id) = FileId::of(&exe) else { return Plan::Other };
    let m = match measured.entry(id).or_insert_with(|| python::measure(&exe).map_err(|e| format!("{e:#}"))) {
        Ok(m) => m.clone(),
        Err(why) => return Plan::Unsupported(why.clone()),
    };
    let (module, note) = match (&m.asyncio_module, m.task_context) {
        (_, None) => (None, Some("task layout not found".to_owned())),
        (None, _) => (None, Some("_asyncio is built into the interpreter".to_owned())),
        (Some(file), Some(_)) => {
            let module = root.join(file.trim_start_matches('/'));
            if python::has_symbol(&module, python::TASK_INIT_SYMBOL) {
                (Some(module), None)
            } else {
                let hint = format!(
                    "{file} is stripped: no {} symbol, so tasks a request creates are not followed \
                     (a build with symbols, such as pyenv's or python.org's, has it)",
                    python::TASK_INIT_SYMBOL
                );
                (None, Some(hint))
            }
        }
    };
    let copies = thread_pools.then(|| copies_module(&root, &m));
    Plan::Python { measured: m, module, note, copies }
}

/// The `_contextvars` file whose copy function the thread-pool probe goes on, or why not.
fn copies_module(root: &Path, m: &python::Measured) -> Result<PathBuf, String> {
    if m.context_entered.is_none() {
        return Err("PyContext.ctx_entered not found".into());
    }
    let Some(file) = &m.contextvars_module else {
        return Err("_contextvars is built into the interpreter".into());
    };
    let module = root.join(file.trim_start_matches('/'));
    if python::has_symbol(&module, python::CONTEXT_COPY_SYMBOL) {
        Ok(module)
    } else {
        Err(format!("{file} is stripped: no {} symbol", python::CONTEXT_COPY_SYMBOL))
    }
}

/// One line for `check --service`.
pub fn describe_plan(plan: &Plan) -> String {
    match plan {
        Plan::Other => Runtime::Other.describe(),
        Plan::Unsupported(why) => Runtime::PythonUnsupported(why.clone()).describe(),
        Plan::Python { measured, module, note, copies } => {
            let version = measured.version.clone();
            let line = Runtime::Python { version, tasks: module.is_some(), note: note.clone(), thread_pools: None };
            match copies {
                None => line.describe(),
                Some(Ok(_)) => format!("{}; thread pools can be followed (--thread-pools)", line.describe()),
                Some(Err(why)) => format!("{}; thread pools cannot be followed ({why})", line.describe()),
            }
        }
        Plan::Nginx(found) => Runtime::Nginx(found.as_ref().map(|_| ()).map_err(Clone::clone)).describe(),
        Plan::Node { found: Err(why), .. } => format!("node: not identified as Node.js ({why})"),
        Plan::Node { injected, .. } => Runtime::Node(injected.clone()).describe(),
    }
}
