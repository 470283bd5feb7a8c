//! traceo's userspace agent, as a library so tests can drive each stage.
//!
//! Stages, in data-flow order (see DESIGN.md):
//! - `loader`: load the kernel object, set its globals, attach (`loader::tracefs`, `loader::btf`)
//! - `source`: ring buffer or record file -> `events` (decoded by `decode`; wire types stop there)
//! - `tracking`: which processes are traced (`selector`, `procfs`)
//! - `record`: the record file format
//! - `http`: byte streams -> HTTP exchanges; `metrics`: Prometheus; `sink`: what consumes events
//! - `event_json`, `output`: what is printed
//! - `live`, `check`, `commands`: the subcommands

pub mod attach;
pub mod census;
pub mod check;
pub mod cli;
pub mod commands;
pub mod container;
pub mod correlate;
pub mod db;
pub mod decode;
pub mod event_json;
pub mod events;
pub mod findings;
pub mod fnv;
pub mod http;
pub mod joins;
pub mod live;
pub mod loader;
pub mod logs;
pub mod mcp;
pub mod metrics;
pub mod output;
pub mod passed_spans;
pub mod procfs;
pub mod recent;
pub mod record;
pub mod runtime;
pub mod scrub;
pub mod selector;
pub mod sentry;
pub mod shared_state;
pub mod sink;
pub mod source;
pub mod spans;
pub mod tls;
pub mod tracking;
