//! `traceo_container_info{service,container_id,k8s_pod_uid,k8s_pod_name,k8s_namespace_name} 1`:
//! which containers and pods a service's traced processes run in. An info metric rather than
//! labels on the HTTP families: those keep their documented label sets and series counts, and
//! a query joins the identity in with `* on(service) group_left(container_id, ...)`.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::container::ContainerFacts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    service: String,
    container_id: String,
    k8s_pod_uid: String,
    k8s_pod_name: String,
    k8s_namespace_name: String,
}

/// Processes remembered at most; past it the cache and the family start over (a process's
/// facts are read again on its next exchange).
const MAX_PROCESSES: usize = 4096;

pub struct ContainerMetrics {
    info: Family<ContainerLabels, Gauge>,
    /// pid -> service of the processes already read: facts are read once per process, not
    /// per exchange (and the lookup allocates nothing). Pids are the kernel's, not chosen by
    /// a peer: a fast hash (SipHash was most of the per-exchange lookup).
    seen: Mutex<HashMap<u32, String, foldhash::fast::RandomState>>,
}

impl ContainerMetrics {
    pub fn register(r: &mut Registry) -> ContainerMetrics {
        let info = Family::default();
        r.register(
            "traceo_container_info",
            "Containers and Kubernetes pods the traced processes of a service run in (value 1)",
            info.clone(),
        );
        ContainerMetrics { info, seen: Mutex::default() }
    }

    /// An exchange of `service` by live process `pid`: on first sight of the process, read
    /// its container facts from /proc.
    pub fn observe(&self, service: &str, pid: u32) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.get(&pid).is_some_and(|s| s == service) {
                return;
            }
            if seen.len() >= MAX_PROCESSES {
                seen.clear();
                self.info.clear();
            }
            seen.insert(pid, service.to_owned());
        }
        self.set(service, &crate::container::read(pid));
    }

    /// Export `facts` for `service` (nothing for a process outside any container).
    pub fn set(&self, service: &str, facts: &ContainerFacts) {
        if facts.is_empty() {
            return;
        }
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        let labels = ContainerLabels {
            service: service.to_owned(),
            container_id: s(&facts.container_id),
            k8s_pod_uid: s(&facts.pod_uid),
            k8s_pod_name: s(&facts.pod_name),
            k8s_namespace_name: s(&facts.namespace),
        };
        self.info.get_or_create(&labels).set(1);
    }
}

#[cfg(test)]
mod tests {
    use crate::container::ContainerFacts;
    use crate::metrics::{Metrics, MetricsConfig};

    #[test]
    fn one_info_series_per_service_and_container() {
        let m = Metrics::new(MetricsConfig::default());
        let facts = ContainerFacts {
            container_id: Some("ab".repeat(32)),
            pod_uid: Some("5b8e7c2a-1d3f-4e6a-9b0c-2d4e6f8a0b1c".into()),
            pod_name: Some("engine-0".into()),
            namespace: Some("traceo".into()),
        };
        m.containers.set("engine", &facts);
        m.containers.set("engine", &facts);
        m.containers.set("host-proc", &ContainerFacts::default());
        let text = m.encode();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("traceo_container_info{")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains(&format!("container_id=\"{}\"", "ab".repeat(32))), "{}", lines[0]);
        assert!(lines[0].contains("k8s_pod_name=\"engine-0\"") && lines[0].contains("k8s_namespace_name=\"traceo\""));
        assert!(lines[0].ends_with(" 1"), "{}", lines[0]);
    }
}
