//! MCP awareness: JSON-RPC 2.0 in the bodies of MCP exchanges (streamable HTTP: requests are
//! JSON, responses JSON or `text/event-stream`). Works on the bounded body prefixes the HTTP
//! layer keeps, so a message cut short still yields what its first bytes say.

use serde::Serialize;
use serde_json::Value;

use crate::http::Exchange;

/// How a tool call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// The tool ran and reported failure (`result.isError`), inside a 200.
    ToolError,
    /// A JSON-RPC error object, inside a 200.
    RpcError,
    /// No 2xx response (or none at all).
    HttpError,
    /// The response was not seen or not readable.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError => "tool_error",
            Outcome::RpcError => "rpc_error",
            Outcome::HttpError => "http_error",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One JSON-RPC request (or notification) of an exchange, with what its response said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McpMessage {
    pub method: String,
    /// `params.name` of `tools/call`.
    pub tool: Option<String>,
    /// The JSON-RPC id as text; `None` for notifications.
    pub id: Option<String>,
    pub error_code: Option<i64>,
    pub outcome: Outcome,
}

/// What an MCP exchange carried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McpInfo {
    /// Requests in body order (a batch has several).
    pub messages: Vec<McpMessage>,
    pub session_id: Option<String>,
}

impl McpInfo {
    /// The span name: `tools/call upload_csv`, `initialize`, or `batch (n)`.
    pub fn name(&self) -> String {
        match self.messages.as_slice() {
            [one] => match &one.tool {
                Some(tool) => format!("{} {tool}", one.method),
                None => one.method.clone(),
            },
            many => format!("batch ({})", many.len()),
        }
    }
}

/// The MCP content of `ex`, when its request body is JSON-RPC 2.0.
pub fn parse(ex: &Exchange) -> Option<McpInfo> {
    let body = &ex.request_body_prefix;
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(first, b'{' | b'[') || !contains(body, b"\"jsonrpc\"") {
        return None;
    }
    let mut messages = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items.iter().filter_map(request_of).collect(),
        Ok(v) => request_of(&v).into_iter().collect(),
        // Cut short by the capture: read what the first bytes say.
        Err(_) => scan_request(body).into_iter().collect::<Vec<_>>(),
    };
    if messages.is_empty() {
        return None;
    }
    let responses = responses(ex);
    let http_ok = ex.status.is_some_and(|s| (200..300).contains(&s));
    for m in &mut messages {
        m.outcome = if !http_ok {
            Outcome::HttpError
        } else if m.id.is_none() {
            Outcome::Ok
        } else {
            match responses.iter().find(|r| r.get("id").map(id_text) == m.id) {
                Some(r) => outcome_of(r, &mut m.error_code),
                // Nothing parsed whole (a response cut short): its first bytes decide.
                None if responses.is_empty() => scan_outcome(&ex.response_body_prefix, &mut m.error_code),
                None => Outcome::Unknown,
            }
        };
    }
    let session_id = ex
        .request_headers
        .get("mcp-session-id")
        .or_else(|| ex.response_headers.get("mcp-session-id"))
        .map(str::to_owned);
    Some(McpInfo { messages, session_id })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn request_of(v: &Value) -> Option<McpMessage> {
    let method = v.get("method")?.as_str()?.to_owned();
    let tool = (method == "tools/call").then(|| v.get("params")?.get("name")?.as_str().map(str::to_owned)).flatten();
    Some(McpMessage { method, tool, id: v.get("id").map(id_text), error_code: None, outcome: Outcome::Unknown })
}

/// The string value of the first `"key":` in `text`, if it is a plain string.
fn scan_string(text: &str, key: &str) -> Option<String> {
    let at = text.find(&format!("\"{key}\""))?;
    let rest = text[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let value = rest.strip_prefix('"')?;
    Some(value[..value.find('"')?].to_owned())
}

/// A request whose JSON was cut short: method, id and tool name from the first bytes.
fn scan_request(body: &[u8]) -> Option<McpMessage> {
    let text = String::from_utf8_lossy(body);
    let method = scan_string(&text, "method")?;
    let tool = if method == "tools/call" {
        let params = text.find("\"params\"")?;
        scan_string(&text[params..], "name")
    } else {
        None
    };
    let id = text.find("\"id\"").and_then(|at| {
        let rest = text[at + 4..].trim_start().strip_prefix(':')?.trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"').to_owned())
    });
    Some(McpMessage { method, tool, id, error_code: None, outcome: Outcome::Unknown })
}

/// The JSON-RPC responses in the response body: JSON (object or batch) or SSE `data:` lines.
fn responses(ex: &Exchange) -> Vec<Value> {
    let body = &ex.response_body_prefix;
    let sse = ex.response_headers.get("content-type").is_some_and(|c| c.starts_with("text/event-stream"))
        || body.starts_with(b"event:")
        || body.starts_with(b"data:");
    let mut out = vec![];
    if sse {
        for line in String::from_utf8_lossy(body).lines() {
            if let Some(data) = line.strip_prefix("data:") {
                if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                    push_messages(v, &mut out);
                }
            }
        }
    } else if let Ok(v) = serde_json::from_slice::<Value>(body) {
        push_messages(v, &mut out);
    }
    out
}

fn push_messages(v: Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => out.extend(items),
        v => out.push(v),
    }
}

fn outcome_of(response: &Value, error_code: &mut Option<i64>) -> Outcome {
    if let Some(err) = response.get("error") {
        *error_code = err.get("code").and_then(Value::as_i64);
        return Outcome::RpcError;
    }
    match response.get("result").and_then(|r| r.get("isError")).and_then(Value::as_bool) {
        Some(true) => Outcome::ToolError,
        _ if response.get("result").is_some() => Outcome::Ok,
        _ => Outcome::Unknown,
    }
}

/// A response cut short: an error object or `isError` in its first bytes decides.
fn scan_outcome(body: &[u8], error_code: &mut Option<i64>) -> Outcome {
    let text = String::from_utf8_lossy(body);
    if let Some(at) = text.find("\"error\"") {
        if let Some(code) = text[at..].find("\"code\"") {
            let rest = text[at + code + 6..].trim_start().trim_start_matches(':').trim_start();
            let end = rest.find(|c: char| !(c == '-' || c.is_ascii_digit())).unwrap_or(rest.len());
            *error_code = rest[..end].parse().ok();
        }
        return Outcome::RpcError;
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains("\"isError\":true") {
        Outcome::ToolError
    } else if compact.contains("\"result\"") {
        Outcome::Ok
    } else {
        Outcome::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::script::*;

    /// One server exchange: `request_body` POSTed to /mcp, answered with `status`,
    /// `content_type` and `response_body` (plus `extra` response headers).
    fn exchange(request_body: &str, status: u16, content_type: &str, response_body: &str, extra: &str) -> Exchange {
        let mut s = Script::accepted(1);
        s.recv(
            format!(
                "POST /mcp HTTP/1.1\r\nHost: mcp\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{request_body}",
                request_body.len()
            )
            .as_bytes(),
        );
        s.send(
            format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n{response_body}",
                response_body.len()
            )
            .as_bytes(),
        );
        let (xs, _) = run(&s.take());
        one(&xs).clone()
    }

    fn sse(json: &str) -> String {
        format!("event: message\r\ndata: {json}\r\n\r\n")
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"upload_csv","arguments":{"filename":"a.csv"}}}"#;

    #[test]
    fn initialize_with_a_json_answer_and_the_session_id() {
        let req = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#;
        let x = exchange(
            req,
            200,
            "application/json",
            r#"{"jsonrpc":"2.0","id":0,"result":{}}"#,
            "mcp-session-id: abc123\r\n",
        );
        let info = parse(&x).expect("MCP");
        assert_eq!(info.name(), "initialize");
        assert_eq!(info.session_id.as_deref(), Some("abc123"));
        assert_eq!((info.messages[0].id.as_deref(), info.messages[0].outcome), (Some("0"), Outcome::Ok));
    }

    #[test]
    fn tool_calls_answered_over_sse_ok_tool_error_and_rpc_error() {
        let ok = exchange(
            CALL,
            200,
            "text/event-stream",
            &sse(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"isError":false}}"#),
            "",
        );
        let info = parse(&ok).expect("MCP");
        assert_eq!(info.name(), "tools/call upload_csv");
        assert_eq!(info.messages[0].outcome, Outcome::Ok);

        let failed = exchange(
            CALL,
            200,
            "text/event-stream",
            &sse(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"isError":true}}"#),
            "",
        );
        assert_eq!(parse(&failed).expect("MCP").messages[0].outcome, Outcome::ToolError);

        let rpc = exchange(
            CALL,
            200,
            "application/json",
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"bad"}}"#,
            "",
        );
        let m = &parse(&rpc).expect("MCP").messages[0];
        assert_eq!((m.outcome, m.error_code), (Outcome::RpcError, Some(-32602)));

        let http = exchange(CALL, 500, "text/plain", "oops", "");
        assert_eq!(parse(&http).expect("MCP").messages[0].outcome, Outcome::HttpError);
    }

    #[test]
    fn notifications_and_batches() {
        let note =
            exchange(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, 202, "application/json", "", "");
        let m = &parse(&note).expect("MCP").messages[0];
        assert_eq!((m.method.as_str(), m.id.as_deref(), m.outcome), ("notifications/initialized", None, Outcome::Ok));

        let batch = format!(r#"[{CALL},{{"jsonrpc":"2.0","id":"b","method":"tools/list"}}]"#);
        let answers =
            r#"[{"jsonrpc":"2.0","id":"b","result":{"tools":[]}},{"jsonrpc":"2.0","id":3,"result":{"isError":true}}]"#;
        let info = parse(&exchange(&batch, 200, "application/json", answers, "")).expect("MCP");
        assert_eq!(info.name(), "batch (2)");
        assert_eq!(info.messages[0].outcome, Outcome::ToolError, "paired by id, not by position");
        assert_eq!(info.messages[1].outcome, Outcome::Ok);
    }

    #[test]
    fn a_request_cut_short_by_the_capture_still_names_its_tool() {
        let big = "x".repeat(10_000);
        let req = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"upload_csv","arguments":{{"content":"{big}"}}}}}}"#
        );
        let resp = sse(r#"{"jsonrpc":"2.0","id":7,"result":{"isError":false}}"#);
        let info = parse(&exchange(&req, 200, "text/event-stream", &resp, "")).expect("MCP");
        assert_eq!(info.name(), "tools/call upload_csv");
        assert_eq!((info.messages[0].id.as_deref(), info.messages[0].outcome), (Some("7"), Outcome::Ok));
    }

    #[test]
    fn other_json_is_not_mcp() {
        assert!(parse(&exchange(r#"{"job_id":"42"}"#, 200, "application/json", "{}", "")).is_none());
        assert!(parse(&exchange("a,b\n1,2\n", 200, "application/json", "{}", "")).is_none());
    }
}
