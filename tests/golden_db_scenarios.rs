//! The database scenarios of tests/fixtures/README.md (see golden_scenarios.rs for the HTTP
//! ones): tests/apps/db_client.py against servers record.sh starts; only the client is traced
//! (the agent reads PostgreSQL and Redis from the client's side).

use serde_json::Value;

use super::scenarios::payload;
use super::*;

/// Values the scenarios sent (db_client.py's SECRETS, record.sh's Redis password): on the
/// wire, never in what the agent reports.
const DB_SECRETS: &[&str] = &[
    "alice-secret-1",
    "bob-secret-2",
    "carol-secret-3",
    "dave-secret-4",
    "erin-secret-5",
    "redis-secret-value",
    "pubsub-secret-message",
    "redis-secret-password",
];

/// The operation lines of the client, in the order they were sent (stable on equal times).
fn operations(x: &[Value]) -> Vec<&Value> {
    let ops = of(x, "client", "client");
    assert_eq!(ops.len(), x.len(), "only the client's operations: {x:#?}");
    for op in &ops {
        assert_eq!(op["kind"], "operation", "{op}");
    }
    ops
}

/// The bytes of one connection in one direction, all captured.
fn wire(raw: &[Value], conn: &Value, direction: &str) -> Vec<u8> {
    let events: Vec<&Value> =
        raw.iter().filter(|e| e["kind"] == "data" && &e["conn_id"] == conn && e["direction"] == direction).collect();
    assert!(!events.is_empty(), "no {direction} bytes on connection {conn}");
    for e in &events {
        assert_eq!(e["captured"], e["len"], "all bytes captured: {e}");
    }
    events.into_iter().flat_map(payload).collect()
}

/// Each secret crossed the wire of these connections (so the check below can fail), and
/// nowhere in the agent's lines is there any of them.
fn no_value_leaves(x: &[Value], raw: &[Value], secrets: &[&str]) {
    let sent: Vec<u8> = data(raw, "client", "egress").into_iter().flat_map(payload).collect();
    let sent = String::from_utf8_lossy(&sent);
    for s in secrets {
        assert!(sent.contains(s), "the scenario did not send {s}");
        for line in x {
            assert!(!line.to_string().contains(s), "{s} left the agent: {line}");
        }
    }
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize
}

/// PostgreSQL messages (type, body) of a client's or server's stream, after the untyped
/// start: the client's SSLRequest and startup message, or the server's one-byte SSL answer.
fn pg_messages(mut b: &[u8], client: bool) -> Vec<(u8, &[u8])> {
    const SSL_REQUEST: usize = 80_877_103;
    if client {
        // SSLRequest (asyncpg's default sslmode is `prefer`), then the startup message.
        while be32(b, 4) == SSL_REQUEST {
            b = &b[8..];
        }
        b = &b[be32(b, 0)..];
    } else if b[0] == b'N' {
        b = &b[1..]; // "no SSL"
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = 1 + be32(b, 1);
        out.push((b[0], &b[5..end]));
        b = &b[end..];
    }
    out
}

/// The NUL-terminated strings at the front of a message body.
fn cstrings(body: &[u8]) -> Vec<String> {
    body.split(|&c| c == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// A query text with a literal left in it: a quoted string, or a number not part of `$N`.
fn has_literal(text: &str) -> bool {
    let b = text.as_bytes();
    text.contains('\'')
        || b.iter().enumerate().any(|(i, c)| {
            c.is_ascii_digit()
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'$' || b[i - 1] == b'_'))
        })
}

#[test]
fn postgres_asyncpg_fixture() {
    scenario("postgres_asyncpg");
}

pub(super) fn postgres_asyncpg(x: &[Value], raw: &[Value]) {
    let ops = operations(x);
    // (operation, collection, rows, SQLSTATE) of each statement db_client.py ran, in order.
    let got: Vec<(String, Value, Value, Value)> = ops
        .iter()
        .map(|o| {
            (
                o["operation"].as_str().unwrap_or("?").to_owned(),
                o["collection"].clone(),
                o["rows"].clone(),
                o["status_code"].clone(),
            )
        })
        .collect();
    let row = |op: &str, coll: Option<&str>, rows: Option<u64>, code: Option<&str>| {
        (op.to_owned(), serde_json::json!(coll), serde_json::json!(rows), serde_json::json!(code))
    };
    let select = row("SELECT", Some("accounts"), Some(1), None);
    assert_eq!(
        got,
        vec![
            row("CREATE", None, None, None),
            row("INSERT", Some("accounts"), Some(2), None),
            select.clone(),
            select.clone(),
            select,
            // The duplicate key: SQLSTATE 23505 (unique_violation), nothing inserted.
            row("INSERT", Some("accounts"), None, Some("23505")),
            row("COPY", Some("accounts"), Some(2), None),
        ],
        "{ops:#?}"
    );
    for op in &ops {
        assert_eq!((&op["db_system"], &op["db_namespace"]), (&"postgresql".into(), &"postgres".into()), "{op}");
        let text = op["query_text"].as_str().unwrap_or_else(|| panic!("no query text: {op}"));
        assert!(!has_literal(text), "a literal in {text:?}");
    }
    let texts: Vec<&str> = ops.iter().map(|o| o["query_text"].as_str().unwrap_or("")).collect();
    assert_eq!(texts[1], "INSERT INTO accounts (id, name, balance) VALUES (?, ?, ?), (?, ?, ?)");
    // The cached statement is named on each of its executions, as db_client.py wrote it.
    for text in &texts[2..5] {
        assert_eq!(*text, "SELECT name FROM accounts WHERE id = $1");
    }
    assert_eq!(texts[5], "INSERT INTO accounts (id, name, balance) VALUES ($1, $2, $3)");
    let conn = one_connection(x, "client", "client");

    // The wire: the SELECT was parsed once into a named statement, then only bound (by that
    // name) and executed: the agent named the later executions from its memory of the Parse.
    let sent = wire(raw, &conn, "egress");
    let messages = pg_messages(&sent, true);
    let parses: Vec<Vec<String>> = messages.iter().filter(|m| m.0 == b'P').map(|m| cstrings(m.1)).collect();
    let select_parses: Vec<&Vec<String>> = parses.iter().filter(|p| p[1] == texts[2]).collect();
    assert_eq!(select_parses.len(), 1, "one Parse of the SELECT: {parses:?}");
    let name = &select_parses[0][0];
    assert!(!name.is_empty(), "a named (cached) statement");
    let binds = messages.iter().filter(|m| m.0 == b'B' && cstrings(m.1).get(1) == Some(name)).count();
    assert_eq!(binds, 3, "three executions of {name}");
    // Simple queries for the CREATE, the literal INSERT and the COPY; the COPY's rows went as
    // CopyData and ended with CopyDone.
    let queries: Vec<String> = messages.iter().filter(|m| m.0 == b'Q').map(|m| cstrings(m.1)[0].clone()).collect();
    assert_eq!(queries.len(), 3, "{queries:?}");
    assert!(queries[1].contains("'alice-secret-1'") && queries[2].starts_with("COPY "), "{queries:?}");
    assert!(messages.iter().any(|m| m.0 == b'd') && messages.iter().any(|m| m.0 == b'c'), "no COPY data sent");
    // The server's one ErrorResponse carries 23505.
    let received = wire(raw, &conn, "ingress");
    let errors: Vec<Vec<String>> =
        pg_messages(&received, false).iter().filter(|m| m.0 == b'E').map(|m| cstrings(m.1)).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].iter().any(|f| f == "C23505"), "{errors:?}");
    no_value_leaves(x, raw, &DB_SECRETS[..5]);
}

/// Redis commands on a client's wire: (name, argument count) of each array of bulk strings.
fn resp_commands(mut b: &[u8]) -> Vec<(String, usize)> {
    let line = |b: &[u8]| -> (usize, usize) {
        let end = b.windows(2).position(|w| w == b"\r\n").expect("CRLF");
        (std::str::from_utf8(&b[1..end]).expect("ASCII").parse().expect("a length"), end + 2)
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        assert_eq!(b[0], b'*', "a command array");
        let (n, mut at) = line(b);
        let mut name = String::new();
        for i in 0..n {
            let (len, head) = line(&b[at..]);
            if i == 0 {
                name = String::from_utf8_lossy(&b[at + head..at + head + len]).to_ascii_uppercase();
            }
            at += head + len + 2;
        }
        out.push((name, n - 1));
        b = &b[at..];
    }
    out
}

/// Redis replies on a wire: each top-level reply's error prefix, `None` for the others.
fn resp_errors(mut b: &[u8]) -> Vec<Option<String>> {
    // One reply at the front of `b`: its error prefix and its length.
    fn reply(b: &[u8]) -> (Option<String>, usize) {
        let end = b.windows(2).position(|w| w == b"\r\n").expect("CRLF") + 2;
        let line = String::from_utf8_lossy(&b[1..end - 2]).into_owned();
        match b[0] {
            b'-' => (line.split(' ').next().map(str::to_owned), end),
            b'+' | b':' => (None, end),
            b'$' => (None, end + line.parse::<usize>().map_or(0, |n| n + 2)), // $-1: nil
            b'*' => {
                let mut at = end;
                for _ in 0..line.parse::<usize>().unwrap_or(0) {
                    at += reply(&b[at..]).1;
                }
                (None, at)
            }
            t => panic!("RESP2 reply type {t}"),
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let (error, len) = reply(b);
        out.push(error);
        b = &b[len..];
    }
    out
}

#[test]
fn redis_py_fixture() {
    scenario("redis_py");
}

pub(super) fn redis_py(x: &[Value], raw: &[Value]) {
    let ops = operations(x);
    for op in &ops {
        assert_eq!(op["db_system"], "redis", "{op}");
        assert!(op["rows"].is_null() && op["collection"].is_null(), "{op}");
    }
    // Two connections: the client's first, then one for PUBLISH (the pubsub object took the
    // idle first one from redis-py's pool and subscribed on it).
    let conns: Vec<Value> = raw.iter().filter(|e| e["kind"] == "conn_open").map(|e| e["conn_id"].clone()).collect();
    assert_eq!(conns.len(), 2, "{conns:?}");
    let named = |list: &[(&str, usize)]| list.iter().map(|(n, a)| (n.to_string(), *a)).collect::<Vec<_>>();
    // redis-py's handshake on each connection: AUTH with the password, its name and version.
    let handshake = named(&[("AUTH", 1), ("CLIENT", 3), ("CLIENT", 3)]);
    let sent: Vec<Vec<(String, usize)>> = conns.iter().map(|c| resp_commands(&wire(raw, c, "egress"))).collect();
    let mut commands = Vec::new();
    for s in &sent {
        assert_eq!(s[..3], handshake[..], "{s:?}");
        commands.extend_from_slice(&s[3..]);
    }
    // The scenario, on the wire (redis-py's incr() sends INCRBY key 1).
    let scenario = named(&[
        ("SET", 2),
        ("GET", 1),
        ("INCRBY", 2), // the pipeline's three
        ("INCRBY", 2),
        ("EXISTS", 1),
        ("INCRBY", 2), // on a string: ERR
        ("LPUSH", 2),  // on a string: WRONGTYPE
        ("SUBSCRIBE", 1),
        ("PUBLISH", 2),
    ]);
    assert_eq!(commands, scenario, "the client's commands on the wire: {sent:?}");

    let mut codes = Vec::new();
    for (conn, sent) in conns.iter().zip(&sent) {
        let on_conn: Vec<&Value> = ops.iter().copied().filter(|o| &o["conn_id"] == conn).collect();
        // One operation per command, named, its arguments as `?`; from SUBSCRIBE on, the
        // connection is not request/reply: neither it nor what follows is an operation.
        let paired = sent.iter().position(|c| c.0 == "SUBSCRIBE").unwrap_or(sent.len());
        let described: Vec<(String, usize)> = on_conn
            .iter()
            .map(|o| {
                let text = o["query_text"].as_str().unwrap_or_else(|| panic!("no query text: {o}"));
                let mut words = text.split(' ');
                let name = words.next().unwrap_or_default().to_owned();
                assert_eq!(o["operation"], name.as_str(), "{o}");
                assert!(words.clone().all(|w| w == "?"), "an argument left in {text:?}");
                (name, words.count())
            })
            .collect();
        assert_eq!(described, sent[..paired], "connection {conn}");
        // Each status is its reply's error prefix on the wire (Redis before 7.2 refuses the
        // handshake's CLIENT SETINFO too).
        let replies = resp_errors(&wire(raw, conn, "ingress"));
        let got: Vec<Option<String>> = on_conn.iter().map(|o| o["status_code"].as_str().map(str::to_owned)).collect();
        assert_eq!(got, replies[..paired], "status codes on connection {conn}");
        codes.extend_from_slice(&got[3..]);
        if paired < sent.len() {
            // The subscriber did get the published message: on its wire, not in the output.
            let pushed = String::from_utf8_lossy(&wire(raw, conn, "ingress")).into_owned();
            assert!(pushed.contains("$7\r\nmessage\r\n$4\r\nnews\r\n"), "{pushed:?}");
        }
    }
    // Of the scenario's commands, the two failing ones carry their error's prefix.
    let mut want = vec![None; scenario.len() - 1]; // SUBSCRIBE is no operation
    want[5] = Some("ERR".to_owned());
    want[6] = Some("WRONGTYPE".to_owned());
    assert_eq!(codes, want);

    // The pipeline's three commands left in one write: one start time.
    let first = &ops.iter().filter(|o| o["conn_id"] == conns[0]).collect::<Vec<_>>()[3 + 2..3 + 5];
    assert!(first.iter().all(|o| o["ts"] == first[0]["ts"]), "{first:#?}");
    let writes = data(raw, "client", "egress");
    assert!(writes.iter().any(|w| resp_commands(&payload(w)).len() == 3), "no write of three commands");
    no_value_leaves(x, raw, &DB_SECRETS[5..]);
}
