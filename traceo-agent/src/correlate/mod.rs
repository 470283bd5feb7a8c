//! Trace context for exchanges without code changes: ids assigned as requests are seen,
//! parents found through propagated headers, the two ends of local connections, and the
//! threads and windows of the process that made a call (see `correlator` for the ordering
//! problem and its bounds, `parent` for the in-process rules, `pairs` for connections).

mod context;
mod correlator;
mod ids;
mod node;
mod nodes;
mod pairs;
mod parent;
mod tasks;

#[cfg(test)]
mod tests;

pub use context::{Carried, TraceParent};
pub use correlator::{CorrelateConfig, CorrelateStats, Correlator};
pub use ids::{IdGen, SpanId, TraceId, push_hex};
pub use parent::{Answered, Inbound, Pick, Signal, pick_at_start, task_match};
pub use tasks::{Incarnation, TaskLineage};
