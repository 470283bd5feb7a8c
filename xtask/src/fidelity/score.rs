//! Scoring the parent links the agent exported against the ground truth the load put in its
//! requests: request `req=X` to the front made the calls `from=X&k=J` to the backend, so the
//! front's client exchange for (X, J) must be the child of the front's server exchange for X,
//! and the backend's server exchange for (X, J) the child of that client exchange.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

use serde::Serialize;
use serde_json::Value;

/// The `--service` names the harness gives the two tiers.
pub const FRONT: &str = "front";
pub const BACK: &str = "back";
/// The header that names an MCP session's request id (kept with `--header`, lower case).
pub const MCP_HEADER: &str = "x-fidelity-req";

/// How the front's server exchange of request X is recognised.
#[derive(Clone, Copy, Debug)]
pub enum ParentKey {
    /// Its target carries `req=X`.
    Query,
    /// It carried the MCP `tools/call` of the session whose requests all had `X-Fidelity-Req: X`.
    McpHeader,
}

/// What the load did: the ids of the requests the front answered, each making `fanout` calls.
pub struct Truth<'a> {
    pub ids: &'a [String],
    pub fanout: u32,
    pub parent: ParentKey,
}

/// Calls whose client exchange had one `link` value, and how many of those were right or wrong.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KindCount {
    pub calls: u64,
    pub right: u64,
    pub wrong: u64,
}

/// The backend's server exchanges of the calls: each the child of its front client exchange?
#[derive(Debug, Default, Serialize)]
pub struct Stitch {
    pub right: u64,
    pub wrong: u64,
    pub no_link: u64,
    /// Calls with no backend server exchange (or no front client exchange to stitch to).
    pub missing: u64,
    pub precision: f64,
    pub recall: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Score {
    /// Calls the front made (requests answered x fan-out).
    pub calls: u64,
    /// Calls with a front client exchange in the log.
    pub exchanges: u64,
    /// Client exchanges with a parent.
    pub links: u64,
    pub right: u64,
    pub wrong: u64,
    pub no_link: u64,
    /// Calls with no client exchange.
    pub missing: u64,
    /// Links to a parent that cannot be judged: the request's server exchange is missing.
    pub unjudged: u64,
    /// Requests with no front server exchange.
    pub servers_missing: u64,
    /// Exchanges logged again for a request or call already seen (only the first is scored).
    pub duplicates: u64,
    /// right / (right + wrong), 1 when no link was judged.
    pub precision: f64,
    /// right / calls.
    pub recall: f64,
    /// By the client exchange's `link` (`none` when null).
    pub link_kinds: BTreeMap<String, KindCount>,
    pub stitch: Stitch,
}

/// The value of `key` in a target's query string (values are plain ids, never encoded).
fn query_param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

fn text<'a>(line: &'a Value, field: &str) -> Option<&'a str> {
    line[field].as_str()
}

/// The request id of a front server exchange, if it is the one that carried a request.
fn request_id(line: &Value, key: ParentKey) -> Option<&str> {
    match key {
        ParentKey::Query => query_param(text(line, "target")?, "req"),
        ParentKey::McpHeader => {
            let messages = line["mcp"]["messages"].as_array()?;
            messages.iter().any(|m| m["method"] == "tools/call").then_some(())?;
            line["headers"][MCP_HEADER].as_str()
        }
    }
}

/// The (from, k) of a call, from its target.
fn call_id(line: &Value) -> Option<(&str, &str)> {
    let target = text(line, "target")?;
    Some((query_param(target, "from")?, query_param(target, "k")?))
}

/// Is `child` the child of `parent` (same trace, parent span)?
fn child_of(child: &Value, parent: &Value) -> bool {
    !child["parent_span_id"].is_null()
        && child["parent_span_id"] == parent["span_id"]
        && child["trace_id"] == parent["trace_id"]
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 { f64::NAN } else { num as f64 / den as f64 }
}

/// Exchanges under one key: the first logged, and how many were.
type Seen<'a, K> = HashMap<K, (&'a Value, u64)>;

/// The exchanges the scoring looks at, by request id and by call.
#[derive(Default)]
struct Index<'a> {
    servers: Seen<'a, &'a str>,
    clients: Seen<'a, (&'a str, &'a str)>,
    backs: Seen<'a, (&'a str, &'a str)>,
}

impl<'a> Index<'a> {
    fn new(lines: &'a [Value], key: ParentKey) -> Index<'a> {
        let mut index = Index::default();
        for line in lines {
            match (text(line, "service"), text(line, "direction")) {
                (Some(FRONT), Some("server")) => request_id(line, key).map(|id| keep(&mut index.servers, id, line)),
                (Some(FRONT), Some("client")) => call_id(line).map(|call| keep(&mut index.clients, call, line)),
                (Some(BACK), Some("server")) => call_id(line).map(|call| keep(&mut index.backs, call, line)),
                _ => None,
            };
        }
        index
    }
}

fn keep<'a, K: Eq + Hash>(seen: &mut Seen<'a, K>, key: K, line: &'a Value) {
    seen.entry(key).or_insert((line, 0)).1 += 1;
}

/// The first exchange under `key`, counting the ones logged after it in `duplicates`.
fn first<'a, K: Eq + Hash>(seen: &Seen<'a, K>, key: &K, duplicates: &mut u64) -> Option<&'a Value> {
    let (line, n) = seen.get(key)?;
    *duplicates += n - 1;
    Some(line)
}

/// Score the agent's JSON lines (all of one run; lines of other requests are ignored).
pub fn score(lines: &[Value], truth: &Truth) -> Score {
    let index = Index::new(lines, truth.parent);
    let mut s = Score::default();
    for id in truth.ids {
        let server = first(&index.servers, &id.as_str(), &mut s.duplicates);
        s.servers_missing += u64::from(server.is_none());
        for k in 0..truth.fanout {
            let k = k.to_string();
            s.calls += 1;
            let call = (id.as_str(), k.as_str());
            let Some(client) = first(&index.clients, &call, &mut s.duplicates) else {
                s.missing += 1;
                s.stitch.missing += 1;
                continue;
            };
            s.exchanges += 1;
            let kind = s.link_kinds.entry(text(client, "link").unwrap_or("none").to_owned()).or_default();
            kind.calls += 1;
            if client["parent_span_id"].is_null() {
                s.no_link += 1;
            } else {
                s.links += 1;
                match server {
                    None => s.unjudged += 1,
                    Some(server) if child_of(client, server) => {
                        s.right += 1;
                        kind.right += 1;
                    }
                    Some(_) => {
                        s.wrong += 1;
                        kind.wrong += 1;
                    }
                }
            }
            match first(&index.backs, &call, &mut s.duplicates) {
                None => s.stitch.missing += 1,
                Some(back) if child_of(back, client) => s.stitch.right += 1,
                Some(back) if back["parent_span_id"].is_null() => s.stitch.no_link += 1,
                Some(_) => s.stitch.wrong += 1,
            }
        }
    }
    s.precision = if s.right + s.wrong == 0 { 1.0 } else { ratio(s.right, s.right + s.wrong) };
    s.recall = ratio(s.right, s.calls);
    let st = &mut s.stitch;
    st.precision = if st.right + st.wrong == 0 { 1.0 } else { ratio(st.right, st.right + st.wrong) };
    st.recall = ratio(st.right, s.calls);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(service: &str, direction: &str, target: &str, ids: [Option<&str>; 3], link: Option<&str>) -> Value {
        let [trace, span, parent] = ids;
        json!({"service": service, "direction": direction, "target": target, "trace_id": trace,
               "span_id": span, "parent_span_id": parent, "link": link})
    }

    fn server(id: &str, trace: &str, span: &str) -> Value {
        line(FRONT, "server", &format!("/call?req={id}"), [Some(trace), Some(span), None], None)
    }

    fn client(id: &str, trace: &str, span: &str, parent: Option<&str>, link: Option<&str>) -> Value {
        line(FRONT, "client", &format!("/leaf?from={id}&k=0"), [Some(trace), Some(span), parent], link)
    }

    fn back(id: &str, trace: &str, span: &str, parent: Option<&str>) -> Value {
        line(BACK, "server", &format!("/leaf?from={id}&k=0"), [Some(trace), Some(span), parent], Some("connection"))
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn right_wrong_no_link_and_missing() {
        let lines = vec![
            server("a", "ta", "sa"),
            server("b", "tb", "sb"),
            server("c", "tc", "sc"),
            server("d", "td", "sd"),
            server("e", "te", "se"),
            // a: right, and its backend end is stitched to it.
            client("a", "ta", "ca", Some("sa"), Some("inferred")),
            back("a", "ta", "ba", Some("ca")),
            // b: linked to a's request: wrong; its backend end has no parent.
            client("b", "ta", "cb", Some("sa"), Some("inferred")),
            back("b", "ta", "bb", None),
            // c: no link; its backend end points elsewhere.
            client("c", "tc2", "cc", None, None),
            back("c", "tc", "bc", Some("ca")),
            // d: no client exchange at all.
            // e: the right span id in another trace is still wrong.
            client("e", "tx", "ce", Some("se"), Some("thread")),
            // Traffic of other requests is ignored.
            client("zz", "tz", "cz", Some("sa"), Some("inferred")),
        ];
        let wanted = ids(&["a", "b", "c", "d", "e"]);
        let s = score(&lines, &Truth { ids: &wanted, fanout: 1, parent: ParentKey::Query });
        assert_eq!((s.calls, s.exchanges, s.links), (5, 4, 3));
        assert_eq!((s.right, s.wrong, s.no_link, s.missing, s.unjudged), (1, 2, 1, 1, 0));
        assert_eq!((s.servers_missing, s.duplicates), (0, 0));
        assert!((s.precision - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.recall - 0.2).abs() < 1e-9);
        assert_eq!(s.link_kinds["inferred"], KindCount { calls: 2, right: 1, wrong: 1 });
        assert_eq!(s.link_kinds["none"], KindCount { calls: 1, right: 0, wrong: 0 });
        assert_eq!(s.link_kinds["thread"], KindCount { calls: 1, right: 0, wrong: 1 });
        let st = &s.stitch;
        assert_eq!((st.right, st.wrong, st.no_link, st.missing), (1, 1, 1, 2));
        assert!((st.precision - 0.5).abs() < 1e-9 && (st.recall - 0.2).abs() < 1e-9);
    }

    #[test]
    fn fan_out_missing_servers_and_duplicates() {
        let fan = |k: u32, parent: Option<&str>| {
            line(FRONT, "client", &format!("/leaf?from=a&k={k}"), [Some("ta"), Some("c"), parent], Some("task"))
        };
        let lines = vec![
            server("a", "ta", "sa"),
            fan(0, Some("sa")),
            fan(1, Some("sa")),
            fan(1, None), // a duplicate: the first line counts
            fan(2, None),
            // b's server exchange is missing: its link cannot be judged.
            client("b", "tb", "cb", Some("sb"), Some("inferred")),
        ];
        let wanted = ids(&["a"]);
        let s = score(&lines, &Truth { ids: &wanted, fanout: 3, parent: ParentKey::Query });
        assert_eq!((s.calls, s.right, s.wrong, s.no_link, s.missing, s.duplicates), (3, 2, 0, 1, 0, 1));
        assert_eq!(s.precision, 1.0);
        let wanted = ids(&["b"]);
        let s = score(&lines, &Truth { ids: &wanted, fanout: 1, parent: ParentKey::Query });
        assert_eq!((s.links, s.right, s.wrong, s.unjudged, s.servers_missing), (1, 0, 0, 1, 1));
        assert_eq!(s.precision, 1.0, "nothing judged: no wrong link exported");
        assert_eq!(s.recall, 0.0);
    }

    #[test]
    fn mcp_parent_is_the_tools_call_of_the_session() {
        let post = |method: &str, span: &str| {
            json!({"service": FRONT, "direction": "server", "target": "/mcp", "trace_id": format!("t{span}"),
                   "span_id": span, "parent_span_id": null, "headers": {MCP_HEADER: "m1"},
                   "mcp": {"messages": [{"method": method, "tool": "call"}]}})
        };
        let lines = vec![
            post("initialize", "s-init"),
            post("tools/call", "s-call"),
            client("m1", "ts-init", "c1", Some("s-init"), Some("inferred")),
        ];
        let wanted = ids(&["m1"]);
        let s = score(&lines, &Truth { ids: &wanted, fanout: 1, parent: ParentKey::McpHeader });
        assert_eq!((s.right, s.wrong), (0, 1), "the session's initialize POST is not the parent");
        let lines = vec![post("tools/call", "s-call"), client("m1", "ts-call", "c1", Some("s-call"), Some("inferred"))];
        let s = score(&lines, &Truth { ids: &wanted, fanout: 1, parent: ParentKey::McpHeader });
        assert_eq!((s.right, s.wrong, s.recall), (1, 0, 1.0));
    }

    #[test]
    fn query_params_match_whole_keys_and_values() {
        assert_eq!(query_param("/leaf?from=a-1&k=0", "from"), Some("a-1"));
        assert_eq!(query_param("/leaf?xfrom=b&from=a", "from"), Some("a"));
        assert_eq!(query_param("/leaf?req=a&from=a", "k"), None);
        assert_eq!(query_param("/leaf", "from"), None);
    }
}

/// The log-correlation scenarios: every record the front logs names its request
/// (`fidelity req=ID where=...`), so its trace id must be that request's server exchange's.
#[derive(Debug, Default, Serialize)]
pub struct LogScore {
    /// Records the front should have logged (requests answered x records per request).
    pub records: u64,
    /// Of those, records the agent wrote.
    pub seen: u64,
    /// Records with a trace id.
    pub tied: u64,
    pub right: u64,
    pub wrong: u64,
    /// Records written without ids.
    pub untied: u64,
    /// Records tied where the request's server exchange is missing (not judged).
    pub unjudged: u64,
    /// right / (right + wrong), 1 when none was judged.
    pub precision: f64,
    /// right / records.
    pub recall: f64,
    /// By where the record was written (`handler`, `child`, `after-call`): records, right, wrong.
    pub by_place: BTreeMap<String, KindCount>,
}

/// `(req, where)` of a front record `fidelity req=ID where=PLACE`.
fn record_key(message: &str) -> Option<(&str, &str)> {
    let rest = &message[message.find("fidelity req=")? + "fidelity req=".len()..];
    let (req, rest) = rest.split_once(' ')?;
    let place = rest.strip_prefix("where=")?.split_whitespace().next()?;
    Some((req, place))
}

/// Score the agent's log records (`--log-records`) against the requests' server exchanges.
pub fn score_logs(records: &[Value], lines: &[Value], ids: &[String], places: &[&str]) -> LogScore {
    let index = Index::new(lines, ParentKey::Query);
    let mut by_key: HashMap<(&str, &str), &Value> = HashMap::new();
    for r in records.iter().filter(|r| text(r, "service") == Some(FRONT)) {
        if let Some(key) = text(r, "message").and_then(record_key) {
            by_key.entry(key).or_insert(r);
        }
    }
    let mut s = LogScore::default();
    let mut ignored = 0;
    for id in ids {
        let server = first(&index.servers, &id.as_str(), &mut ignored);
        for place in places {
            s.records += 1;
            let count = s.by_place.entry((*place).to_owned()).or_default();
            count.calls += 1;
            let Some(record) = by_key.get(&(id.as_str(), *place)) else { continue };
            s.seen += 1;
            if record["trace_id"].is_null() {
                s.untied += 1;
                continue;
            }
            s.tied += 1;
            match server {
                None => s.unjudged += 1,
                Some(server) if record["trace_id"] == server["trace_id"] => {
                    s.right += 1;
                    count.right += 1;
                }
                Some(_) => {
                    s.wrong += 1;
                    count.wrong += 1;
                }
            }
        }
    }
    s.precision = if s.right + s.wrong == 0 { 1.0 } else { s.right as f64 / (s.right + s.wrong) as f64 };
    s.recall = ratio(s.right, s.records);
    s
}

#[cfg(test)]
mod log_tests {
    use super::*;
    use serde_json::json;

    fn record(message: &str, trace: Option<&str>) -> Value {
        json!({"service": FRONT, "message": message, "trace_id": trace})
    }

    #[test]
    fn records_right_wrong_untied_and_missing() {
        let lines = vec![
            json!({"service": FRONT, "direction": "server", "target": "/call?req=c10-1", "trace_id": "t1"}),
            json!({"service": FRONT, "direction": "server", "target": "/call?req=c10-10", "trace_id": "t10"}),
        ];
        let records = vec![
            record("fidelity req=c10-1 where=handler", Some("t1")),
            // Another request's trace: wrong (c10-1 is not a prefix match of c10-10).
            record("fidelity req=c10-10 where=handler", Some("t1")),
            record("fidelity req=c10-1 where=child", None),
            // c10-10's child record is missing; other services' records are ignored.
            json!({"service": BACK, "message": "fidelity req=c10-10 where=child", "trace_id": "t10"}),
        ];
        let ids = vec!["c10-1".to_owned(), "c10-10".to_owned()];
        let s = score_logs(&records, &lines, &ids, &["handler", "child"]);
        assert_eq!((s.records, s.seen, s.tied, s.right, s.wrong, s.untied), (4, 3, 2, 1, 1, 1), "{s:?}");
        assert_eq!(s.precision, 0.5);
        assert_eq!(s.recall, 0.25);
    }
}
