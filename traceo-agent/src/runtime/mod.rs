//! Runtime awareness: which traced processes serve many requests on one thread in a way the
//! probes can tell apart, and keeping the kernel told (`RUNTIME_PROCS`) and the runtime
//! probes attached.
//!
//! - CPython: its current `contextvars.Context` read at each socket syscall (one per asyncio
//!   task), and task lineage from a probe on task creation (`python`).
//! - nginx: a probe on `ngx_http_upstream_init` names the client connection each upstream
//!   connect or request serves.
//!
//! Per process, one [`Runtime`]; logged once when it changes and shown by `check`.

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

/// nginx's function that starts the upstream part of a proxied request (exported).
pub const NGINX_UPSTREAM_SYMBOL: &str = "ngx_http_upstream_init";

/// What the agent knows about a traced process's runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// Nothing known: calls get a parent only from certain evidence (propagated context,
    /// connection ends, a thread serving one request).
    Other,
    /// CPython whose current context is read at each socket syscall; `tasks` when the task
    /// probe is attached too (lineage of tasks created while serving a request).
    Python { version: String, tasks: bool, note: Option<String> },
    /// CPython the agent could not measure (named why).
    PythonUnsupported(String),
    /// nginx with its upstream probe (`Err`: why not).
    Nginx(Result<(), String>),
}

impl Runtime {
    pub fn describe(&self) -> String {
        match self {
            Runtime::Other => "no runtime tracking (parents from threads, connections and headers)".into(),
            Runtime::Python { version, tasks: true, .. } => {
                format!("python{version} asyncio: task tracking on (context per task, task lineage)")
            }
            Runtime::Python { version, tasks: false, note } => format!(
                "python{version} asyncio: context per task on, task lineage off ({})",
                note.as_deref().unwrap_or("no task probe")
            ),
            Runtime::PythonUnsupported(why) => format!("python: no task tracking ({why})"),
            Runtime::Nginx(Ok(())) => "nginx: upstream requests tied to their client requests".into(),
            Runtime::Nginx(Err(why)) => format!("nginx: upstream tracking off ({why})"),
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
        Plan::Python { measured, module, note } => {
            let rt = RuntimeProc { kind: runtime_kind::PYTHON, _pad: 0, python: measured.layout() };
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
            Runtime::Python { version: measured.version, tasks, note }
        }
        Plan::Nginx(Err(why)) => Runtime::Nginx(Err(why)),
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
    },
    Unsupported(String),
    /// nginx: its executable (through /proc/PID/root), or why it cannot be probed.
    Nginx(Result<PathBuf, String>),
}

/// [`plan`], then the offsets of the symbols it will probe resolved into `symbols` (so the
/// attach on the ring's thread parses nothing). The attach worker's.
pub fn plan_with_offsets(
    pid: u32,
    measured: &mut HashMap<FileId, Result<python::Measured, String>>,
    symbols: &crate::loader::symbols::SymbolOffsets,
) -> Plan {
    let p = plan(pid, measured);
    match &p {
        Plan::Python { module: Some(module), .. } => {
            let _ = symbols.offset(module, python::TASK_INIT_SYMBOL);
        }
        Plan::Nginx(Ok(exe)) => {
            let _ = symbols.offset(exe, NGINX_UPSTREAM_SYMBOL);
        }
        _ => {}
    }
    p
}

/// Look at `pid`: measure its interpreter once per executable (`measured` caches).
pub fn plan(pid: u32, measured: &mut HashMap<FileId, Result<python::Measured, String>>) -> Plan {
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
    Plan::Python { measured: m, module, note }
}

/// One line for `check --service`.
pub fn describe_plan(plan: &Plan) -> String {
    match plan {
        Plan::Other => Runtime::Other.describe(),
        Plan::Unsupported(why) => Runtime::PythonUnsupported(why.clone()).describe(),
        Plan::Python { measured, module, note } => {
            let version = measured.version.clone();
            Runtime::Python { version, tasks: module.is_some(), note: note.clone() }.describe()
        }
        Plan::Nginx(found) => Runtime::Nginx(found.as_ref().map(|_| ()).map_err(Clone::clone)).describe(),
    }
}
