//! What the agent found about a process (its TLS library, its runtime), logged per process
//! at info for the first few processes with the same finding, then at debug: a service
//! forking hundreds of children must not flood the log, yet each of a handful of services
//! gets its own line (`check` and the trace-truth harness read them).

use std::collections::HashMap;
use std::hash::Hash;

/// Processes per finding logged at the finding's level; later ones at debug.
const PER_FINDING: u32 = 20;

pub struct FindingLog<K> {
    counts: HashMap<K, u32>,
}

impl<K: Eq + Hash> Default for FindingLog<K> {
    fn default() -> Self {
        FindingLog { counts: HashMap::new() }
    }
}

impl<K: Eq + Hash> FindingLog<K> {
    /// Log `message`, a finding `key` about one process, at `level` or, past the first
    /// [`PER_FINDING`] processes with that finding, at debug.
    pub fn log(&mut self, key: K, level: log::Level, message: &str) {
        let n = self.counts.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        match *n {
            n if n < PER_FINDING => log::log!(level, "{message}"),
            PER_FINDING => {
                log::log!(level, "{message} (more processes with this finding are logged at debug level)")
            }
            _ => log::debug!("{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_processes_of_a_finding_are_counted_apart() {
        let mut f = FindingLog::default();
        for _ in 0..PER_FINDING + 5 {
            f.log("a", log::Level::Info, "x");
        }
        f.log("b", log::Level::Info, "y");
        assert_eq!((f.counts["a"], f.counts["b"]), (PER_FINDING + 5, 1));
    }
}
