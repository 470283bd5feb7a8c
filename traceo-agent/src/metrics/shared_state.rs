//! `--shared-state`: `traceo_shared_state_{lookups,hits,misses,errors,dropped}_total`.

use prometheus_client::{metrics::counter::Counter, registry::Registry};

/// Shared with the Redis task, which counts as it goes (clones of one counter).
#[derive(Clone, Debug, Default)]
pub struct SharedStateMetrics {
    pub lookups: Counter,
    pub hits: Counter,
    pub misses: Counter,
    pub errors: Counter,
    pub dropped: Counter,
}

impl SharedStateMetrics {
    pub fn register(r: &mut Registry) -> SharedStateMetrics {
        let m = SharedStateMetrics::default();
        for (name, help, c) in [
            ("traceo_shared_state_lookups", "Lookups of another agent's key (a far client span, a job)", &m.lookups),
            ("traceo_shared_state_hits", "Lookups that found the key within the hold", &m.hits),
            ("traceo_shared_state_misses", "Lookups that found nothing (left host-local)", &m.misses),
            ("traceo_shared_state_errors", "Failed Redis connections and commands", &m.errors),
            ("traceo_shared_state_dropped", "Requests to Redis dropped: the queue was full", &m.dropped),
        ] {
            r.register(name, help, c.clone());
        }
        m
    }
}
