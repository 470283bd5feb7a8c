//! `--service NAME=SELECTOR`: which processes a service is made of.

use std::fmt;

use anyhow::{Context as _, bail};

/// How a service's processes are found.
#[derive(Clone, Debug, PartialEq)]
pub enum Selector {
    /// This process and its descendants.
    Pid(u32),
    /// Processes whose kernel name (`comm`, at most 15 bytes) is this.
    Comm(String),
    /// Processes listening on this TCP port.
    Port(u16),
    /// Processes whose executable path matches this glob.
    Exe(glob::Pattern),
}

/// One `--service` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub selector: Selector,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Pid(p) => write!(f, "pid:{p}"),
            Selector::Comm(c) => write!(f, "comm:{c}"),
            Selector::Port(p) => write!(f, "port:{p}"),
            Selector::Exe(g) => write!(f, "exe:{}", g.as_str()),
        }
    }
}

const FORMS: &str = "pid:N, comm:NAME, port:N or exe:GLOB";

impl std::str::FromStr for Selector {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Selector> {
        let (kind, value) =
            s.split_once(':').with_context(|| format!("selector `{s}` has no kind: expected {FORMS}"))?;
        if value.is_empty() {
            bail!("selector `{s}` has an empty value: expected {FORMS}");
        }
        Ok(match kind {
            "pid" => Selector::Pid(value.parse().with_context(|| format!("`{value}` is not a process id"))?),
            "comm" => {
                if value.len() > 15 {
                    bail!("comm:{value} can never match: the kernel keeps at most 15 bytes of a process name");
                }
                Selector::Comm(value.to_owned())
            }
            "port" => Selector::Port(value.parse().with_context(|| format!("`{value}` is not a TCP port"))?),
            "exe" => {
                Selector::Exe(glob::Pattern::new(value).with_context(|| format!("`{value}` is not a valid glob"))?)
            }
            other => bail!("unknown selector kind `{other}` in `{s}`: expected {FORMS}"),
        })
    }
}

impl std::str::FromStr for ServiceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<ServiceSpec> {
        let (name, selector) = s
            .split_once('=')
            .with_context(|| format!("--service `{s}` should be NAME=SELECTOR, e.g. engine=port:8000"))?;
        if name.is_empty() {
            bail!("--service `{s}` has an empty NAME");
        }
        // One flat message: clap prints only the top of an error chain.
        let selector = selector.parse().map_err(|e: anyhow::Error| anyhow::anyhow!("in --service `{s}`: {e:#}"))?;
        Ok(ServiceSpec { name: name.to_owned(), selector })
    }
}

/// What a selector can be matched against.
pub struct ProcessFacts<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub exe: Option<&'a str>,
    pub listening_ports: &'a [u16],
}

impl Selector {
    pub fn matches(&self, p: &ProcessFacts<'_>) -> bool {
        match self {
            Selector::Pid(pid) => *pid == p.pid,
            Selector::Comm(c) => c == p.comm,
            Selector::Port(port) => p.listening_ports.contains(port),
            Selector::Exe(g) => p.exe.is_some_and(|e| g.matches(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let s: ServiceSpec = "engine=port:8000".parse().unwrap();
        assert_eq!((s.name.as_str(), s.selector.to_string()), ("engine", "port:8000".to_string()));
        assert_eq!("a=pid:12".parse::<ServiceSpec>().unwrap().selector, Selector::Pid(12));
        assert_eq!("a=comm:uvicorn".parse::<ServiceSpec>().unwrap().selector, Selector::Comm("uvicorn".into()));
        assert!(matches!("a=exe:/usr/bin/python3*".parse::<ServiceSpec>().unwrap().selector, Selector::Exe(_)));
    }

    #[test]
    fn mistakes_get_errors_that_name_the_fix() {
        for (input, needle) in [
            ("engine", "NAME=SELECTOR"),
            ("=pid:1", "empty NAME"),
            ("a=foo:1", "unknown selector kind `foo`"),
            ("a=pid:x", "not a process id"),
            ("a=port:70000", "not a TCP port"),
            ("a=comm:averyveryverylongname", "at most 15 bytes"),
            ("a=exe:[", "not a valid glob"),
            ("a=pid", "expected pid:N"),
        ] {
            let err = format!("{:#}", input.parse::<ServiceSpec>().unwrap_err());
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn matching() {
        let facts =
            ProcessFacts { pid: 5, comm: "uvicorn", exe: Some("/usr/bin/python3.11"), listening_ports: &[8000] };
        assert!(Selector::Pid(5).matches(&facts));
        assert!(!Selector::Pid(6).matches(&facts));
        assert!(Selector::Comm("uvicorn".into()).matches(&facts));
        assert!(Selector::Port(8000).matches(&facts));
        assert!(!Selector::Port(8001).matches(&facts));
        assert!("exe:*/python3*".parse::<Selector>().unwrap().matches(&facts));
        assert!(!"exe:*/nginx".parse::<Selector>().unwrap().matches(&facts));
    }
}
