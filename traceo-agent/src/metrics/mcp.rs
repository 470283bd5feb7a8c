//! MCP tool-call metrics: `traceo_mcp_tool_calls_total{service,tool,outcome}` and
//! `traceo_mcp_tool_call_duration_seconds{service,tool}`, from the MCP server's side. Tool
//! names come from clients, so they are capped per service like routes are.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::http::{DURATION_BUCKETS, OVERFLOW_ROUTE};
use crate::mcp::McpInfo;

/// Distinct tool names per service before new ones fold into `__overflow__`.
const MAX_TOOLS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    tool: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    service: String,
    tool: String,
}

type DurationFamily = Family<ToolLabels, Histogram, fn() -> Histogram>;

pub struct McpMetrics {
    calls: Family<CallLabels, Counter>,
    duration: DurationFamily,
    tools: Mutex<HashMap<String, HashSet<String>>>,
}

impl McpMetrics {
    pub fn register(r: &mut Registry) -> McpMetrics {
        let m = McpMetrics {
            calls: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            tools: Mutex::new(HashMap::new()),
        };
        r.register(
            "traceo_mcp_tool_calls",
            "MCP tools/call requests served, by tool and outcome (ok, tool_error, rpc_error, http_error, unknown)",
            m.calls.clone(),
        );
        r.register_with_unit(
            "traceo_mcp_tool_call_duration",
            "Duration of MCP tools/call requests as the server answered them",
            Unit::Seconds,
            m.duration.clone(),
        );
        m
    }

    /// Count the tool calls of one server-side MCP exchange.
    pub fn observe(&self, service: &str, info: &McpInfo, duration_s: Option<f64>) {
        for call in info.messages.iter().filter(|m| m.method == "tools/call") {
            let tool = self.bounded_tool(service, call.tool.as_deref().unwrap_or("unknown"));
            let labels = CallLabels {
                service: service.to_owned(),
                tool: tool.clone(),
                outcome: call.outcome.as_str().to_owned(),
            };
            self.calls.get_or_create(&labels).inc();
            if let Some(d) = duration_s {
                self.duration.get_or_create(&ToolLabels { service: service.to_owned(), tool }).observe(d);
            }
        }
    }

    fn bounded_tool(&self, service: &str, tool: &str) -> String {
        let mut tools = self.tools.lock().expect("metrics lock");
        let known = tools.entry(service.to_owned()).or_default();
        if known.contains(tool) || known.len() < MAX_TOOLS {
            known.insert(tool.to_owned());
            tool.to_owned()
        } else {
            OVERFLOW_ROUTE.to_owned()
        }
    }
}
