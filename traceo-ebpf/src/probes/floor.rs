//! An empty program, attached by `cargo xtask bench` to every tracepoint the agent uses: the
//! cost floor any tracepoint-based design pays, to compare the real programs against.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    0
}
