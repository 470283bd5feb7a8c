//! Runtime awareness: which traced processes run an event loop whose tasks the probes can
//! tell apart, and keeping the kernel told (`PY_PROCS`) and the task probes attached.
//!
//! Per process, one of [`Runtime`]; logged once when it changes and shown by `check`.

pub mod python;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::{loader::Probes, tls::libraries::FileId};

/// What the agent knows about a traced process's runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// Not an interpreter the agent knows: calls get a parent only from certain evidence
    /// (propagated context, connection ends, a thread serving one request).
    Other,
    /// CPython whose current context is read at each socket syscall; `tasks` when the task
    /// probe is attached too (lineage of tasks created while serving a request).
    Python { version: String, tasks: bool, note: Option<String> },
    /// CPython the agent could not measure (named why).
    PythonUnsupported(String),
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
        }
    }
}

/// Executables measured, and each traced process's runtime.
#[derive(Default)]
pub struct Runtimes {
    measured: HashMap<FileId, Result<python::Measured, String>>,
    processes: HashMap<u32, Runtime>,
}

impl Runtimes {
    /// A process became traced or ran a new program: measure its interpreter (once per
    /// executable), tell the kernel, probe task creation.
    pub fn track(&mut self, probes: &mut Probes, pid: u32) {
        let runtime = self.assess(pid, probes);
        if self.processes.get(&pid) != Some(&runtime) {
            if runtime != Runtime::Other {
                let comm = crate::procfs::comm(pid).unwrap_or_default();
                log::info!("pid {pid} ({comm}): {}", runtime.describe());
            }
            self.processes.insert(pid, runtime);
        }
    }

    fn assess(&mut self, pid: u32, probes: &mut Probes) -> Runtime {
        match plan(pid, &mut self.measured) {
            Plan::Other => Runtime::Other,
            Plan::Unsupported(why) => Runtime::PythonUnsupported(why),
            Plan::Python { measured, module, note } => {
                if let Err(e) = probes.set_python(pid, measured.layout()) {
                    return Runtime::PythonUnsupported(format!("kernel map: {e:#}"));
                }
                let (tasks, note) = match module {
                    None => (false, note),
                    Some(module) => match probes.attach_task_probe(&module, pid) {
                        Ok(()) => (true, None),
                        Err(e) => (false, Some(format!("{e:#}"))),
                    },
                };
                Runtime::Python { version: measured.version, tasks, note }
            }
        }
    }

    /// Called with the traced processes: track new ones, forget the rest.
    pub fn refresh(&mut self, probes: &mut Probes, traced: &std::collections::HashSet<u32>) {
        let gone: Vec<u32> = self.processes.keys().filter(|p| !traced.contains(p)).copied().collect();
        for pid in gone {
            self.processes.remove(&pid);
            probes.forget_python(pid);
        }
        for &pid in traced {
            if !self.processes.contains_key(&pid) {
                self.track(probes, pid);
            }
        }
    }

    pub fn of(&self, pid: u32) -> Option<&Runtime> {
        self.processes.get(&pid)
    }

    /// Traced processes by runtime kind, for the agent's metrics.
    pub fn counts(&self) -> RuntimeCounts {
        let mut c = RuntimeCounts::default();
        for r in self.processes.values() {
            match r {
                Runtime::Python { tasks: true, .. } => c.python_tasks += 1,
                Runtime::Python { tasks: false, .. } => c.python_context_only += 1,
                Runtime::PythonUnsupported(_) => c.python_unsupported += 1,
                Runtime::Other => c.other += 1,
            }
        }
        c
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
}

/// Look at `pid`: measure its interpreter once per executable (`measured` caches).
pub fn plan(pid: u32, measured: &mut HashMap<FileId, Result<python::Measured, String>>) -> Plan {
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let Ok(target) = std::fs::read_link(&exe) else { return Plan::Other };
    if !python::is_python(&target) {
        return Plan::Other;
    }
    let Some(id) = FileId::of(&exe) else { return Plan::Other };
    let m = match measured.entry(id).or_insert_with(|| python::measure(&exe).map_err(|e| format!("{e:#}"))) {
        Ok(m) => m.clone(),
        Err(why) => return Plan::Unsupported(why.clone()),
    };
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    let (module, note) = match (&m.asyncio_module, m.task_context) {
        (_, None) => (None, Some("task layout not found".to_owned())),
        (None, _) => (None, Some("_asyncio is built into the interpreter".to_owned())),
        (Some(file), Some(_)) => {
            let module = root.join(file.trim_start_matches('/'));
            if python::has_symbol(&module, python::TASK_INIT_SYMBOL) {
                (Some(module), None)
            } else {
                let version = &m.version;
                let hint = format!(
                    "{file} is stripped: no {} symbol; install python{version}-dbg for task lineage",
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
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeCounts {
    pub python_tasks: u64,
    pub python_context_only: u64,
    pub python_unsupported: u64,
    pub other: u64,
}
