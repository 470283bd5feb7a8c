//! Whole-tracker tests: events in, exchanges and counters out.

mod framing;
mod json;
mod props;
mod robustness;
mod roles;
pub(crate) mod script;
