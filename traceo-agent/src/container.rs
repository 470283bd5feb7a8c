//! Which container and Kubernetes pod a traced process runs in, from what the host shows of
//! it: the cgroup path in /proc/PID/cgroup (container id, pod uid) and the process's own
//! filesystem and environment (pod namespace, pod name). No container runtime or API server
//! is asked. Read once per traced process (the span resource cache and the metrics' process
//! cache hold the result), never per event.

use std::{fs, path::PathBuf};

/// What is known of a process's container; every field is `None` outside containers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    /// The runtime's 64-hex-digit container id (docker, containerd, cri-o, podman).
    pub container_id: Option<String>,
    /// The Kubernetes pod uid (from a kubepods cgroup path), dashes restored.
    pub pod_uid: Option<String>,
    /// The pod name: the container's HOSTNAME (Kubernetes sets it to the pod name).
    pub pod_name: Option<String>,
    /// The pod's namespace, from its service account's namespace file.
    pub namespace: Option<String>,
}

impl ContainerFacts {
    pub fn is_empty(&self) -> bool {
        *self == ContainerFacts::default()
    }

    /// (OTel resource attribute name, value) for each known fact.
    pub fn attributes(&self) -> Vec<(&'static str, &str)> {
        [
            ("container.id", &self.container_id),
            ("k8s.pod.uid", &self.pod_uid),
            ("k8s.pod.name", &self.pod_name),
            ("k8s.namespace.name", &self.namespace),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_deref()?)))
        .collect()
    }
}

/// Read `pid`'s container facts from /proc (empty when the process is gone or not contained).
pub fn read(pid: u32) -> ContainerFacts {
    let Ok(cgroup) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return ContainerFacts::default();
    };
    let (container_id, pod_uid) = parse_cgroup(&cgroup);
    let mut facts = ContainerFacts { container_id, pod_uid, ..ContainerFacts::default() };
    if facts.pod_uid.is_some() {
        // Only in a pod: elsewhere HOSTNAME is the host's or a container's own, not a pod's.
        let ns = var_run(pid).join("secrets/kubernetes.io/serviceaccount/namespace");
        facts.namespace = fs::read_to_string(ns).ok().map(|s| s.trim().to_owned()).filter(|s| valid_name(s));
        facts.pod_name = fs::read(format!("/proc/{pid}/environ")).ok().and_then(|env| hostname_from_environ(&env));
    }
    facts
}

/// The process's /var/run, seen from the host. Most images make /var/run a symlink to /run: an
/// absolute symlink under /proc/PID/root would resolve against the agent's root, not the
/// container's, so it is followed by hand inside the container's root.
fn var_run(pid: u32) -> PathBuf {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let var_run = root.join("var/run");
    match fs::read_link(&var_run) {
        Ok(target) if target.is_absolute() => root.join(target.strip_prefix("/").unwrap_or(&target)),
        Ok(target) => root.join("var").join(target),
        Err(_) => var_run,
    }
}

/// The container id and pod uid in a /proc/PID/cgroup text (cgroup v1 or v2): the innermost
/// path segment that is a container id, and a kubepods pod segment.
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut id = None;
    let mut pod = None;
    // v2's unified line ("0::") first; v1 lines agree with it when both exist.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_by_key(|l| !l.starts_with("0::"));
    for line in lines {
        let Some(path) = line.splitn(3, ':').nth(2) else { continue };
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if id.is_none() {
            id = segments.iter().rev().find_map(|s| container_id(s));
        }
        if pod.is_none() && segments.iter().any(|s| s.starts_with("kubepods")) {
            pod = segments.iter().rev().find_map(|s| pod_uid(s));
        }
        if id.is_some() && pod.is_some() {
            break;
        }
    }
    (id, pod)
}

/// `docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`, or a bare
/// `ID` (cgroupfs driver: `/docker/ID`, `/kubepods/burstable/podUID/ID`). cri-o's
/// `crio-conmon-ID.scope` is its monitor, not the container.
fn container_id(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".scope").unwrap_or(segment);
    let s = ["docker-", "cri-containerd-", "crio-", "libpod-", "containerd-"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// `podUID` (cgroupfs driver, dashes) or `kubepods-QOS-podUID.slice` (systemd driver, the
/// dashes of the uid written as underscores).
fn pod_uid(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = s.rsplit_once("-pod").map(|(_, u)| u).or_else(|| s.strip_prefix("pod"))?;
    let uid = uid.replace('_', "-").to_ascii_lowercase();
    let groups: Vec<usize> = uid.split('-').map(str::len).collect();
    let hex = uid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
    (hex && groups == [8, 4, 4, 4, 12]).then_some(uid)
}

/// A DNS-label-like Kubernetes name (pod names and namespaces are such).
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `HOSTNAME=...` in a NUL-separated environment block. Only that variable is looked at:
/// the rest of a process's environment may hold secrets and is never kept.
fn hostname_from_environ(env: &[u8]) -> Option<String> {
    env.split(|b| *b == 0)
        .find_map(|v| v.strip_prefix(b"HOSTNAME="))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
        .filter(|s| valid_name(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1f9e2b7c4d4a6e8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";
    const UID: &str = "5b8e7c2a-1d3f-4e6a-9b0c-2d4e6f8a0b1c";

    fn parsed(text: &str) -> (Option<String>, Option<String>) {
        parse_cgroup(text)
    }

    #[test]
    fn docker_cgroup_v1_cgroupfs() {
        let text = format!("12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(parsed(&text), (Some(ID.into()), None));
    }

    #[test]
    fn docker_cgroup_v2_systemd() {
        assert_eq!(parsed(&format!("0::/system.slice/docker-{ID}.scope\n")), (Some(ID.into()), None));
    }

    #[test]
    fn podman_cgroup_v2() {
        let text = format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n");
        assert_eq!(parsed(&text), (Some(ID.into()), None));
    }

    #[test]
    fn containerd_kubepods_systemd_driver_v2() {
        let uid_ = UID.replace('-', "_");
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(parsed(&text), (Some(ID.into()), Some(UID.into())));
    }

    #[test]
    fn containerd_kubepods_cgroupfs_driver_v1() {
        let text = format!(
            "12:cpuset:/kubepods/besteffort/pod{UID}/{ID}\n4:memory:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"
        );
        assert_eq!(parsed(&text), (Some(ID.into()), Some(UID.into())));
    }

    #[test]
    fn guaranteed_pod_has_no_qos_slice() {
        let uid_ = UID.replace('-', "_");
        let text = format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(parsed(&text), (Some(ID.into()), Some(UID.into())));
    }

    #[test]
    fn crio_kubepods_and_not_its_conmon() {
        let uid_ = UID.replace('-', "_");
        let pod = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice");
        let text = format!("0::{pod}/crio-{ID}.scope\n");
        assert_eq!(parsed(&text), (Some(ID.into()), Some(UID.into())));
        let conmon = format!("0::{pod}/crio-conmon-{ID}.scope\n");
        assert_eq!(parsed(&conmon), (None, Some(UID.into())));
    }

    #[test]
    fn hosts_processes_have_nothing() {
        assert_eq!(parsed("0::/user.slice/user-1000.slice/session-3.scope\n"), (None, None));
        assert_eq!(parsed("12:memory:/\n0::/\n"), (None, None));
        // A 64-hex segment outside known shapes still names a container (cgroupfs runtimes);
        // a pod-looking segment outside kubepods is not a pod.
        assert_eq!(parsed(&format!("0::/pod{UID}/x\n")), (None, None));
    }

    #[test]
    fn hostname_only_from_the_environment() {
        let env = b"PATH=/usr/bin\0SECRET=x\0HOSTNAME=engine-7d9f-abcde\0";
        assert_eq!(hostname_from_environ(env).as_deref(), Some("engine-7d9f-abcde"));
        assert_eq!(hostname_from_environ(b"PATH=/usr/bin\0"), None);
        assert_eq!(hostname_from_environ(b"HOSTNAME=bad name\0"), None);
    }

    #[test]
    fn this_process_reads_without_error() {
        // Whatever this test runs in, reading must not fail or invent a pod.
        let f = read(std::process::id());
        assert!(f.pod_uid.is_some() || f.pod_name.is_none());
    }
}
