//! Database spans, live: a PostgreSQL server and a Redis server started by the test on
//! loopback, a FastAPI app (tests/apps/db_app.py) using asyncpg (pooled) and redis-py's
//! asyncio client, 50 requests at once. Ground truth comes from the app's answers (which
//! pool connection each statement ran on, and its position there; which Redis connection
//! each request used; whether its INSERT hit the unique violation); the agent's JSON lines
//! must put every operation under the request that issued it.

mod support;

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

const N: usize = 50;

fn ready(test: &str) -> bool {
    if !(require_root(test) && require_python(test)) {
        return false;
    }
    let deps = Command::new(python())
        .args(["-c", "import asyncpg, redis, fastapi"])
        .output()
        .is_ok_and(|o| o.status.success());
    let servers = pg::bin().is_some() && Path::new("/usr/bin/redis-server").exists();
    if !(deps && servers) {
        let why =
            format!("{test} needs postgresql, redis-server and asyncpg/redis in the venv: run `cargo xtask setup`");
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        return false;
    }
    true
}

/// A private PostgreSQL cluster (run as the `postgres` user: initdb refuses root).
fn postgres(dir: &Path, port: u16) -> Proc {
    postgres_with(dir, port, &[])
}

/// The same, with extra `-c name=value` settings.
fn postgres_with(dir: &Path, port: u16, settings: &[String]) -> Proc {
    let bin = pg::bin().expect("postgresql");
    let p = Proc::spawn(&mut pg::cluster(&bin, dir, port, settings).unwrap_or_else(|e| panic!("{e}")));
    wait_for_port(port);
    p
}

fn redis(port: u16) -> Proc {
    let p = Proc::spawn(
        Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null()),
    );
    wait_for_port(port);
    p
}

fn port_of(addr: &Value) -> u16 {
    addr.as_str().and_then(|a| a.rsplit(':').next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn fifty_concurrent_requests_each_own_their_queries() {
    if !ready("db_concurrent") {
        return;
    }
    let dir = temp_dir("db-spans");
    let (pg_port, redis_port, app_port) = (free_port(), free_port(), free_port());
    let _pg = postgres(&dir, pg_port);
    let _redis = redis(redis_port);
    let dsn = format!("postgresql://postgres@127.0.0.1:{pg_port}/postgres");
    let _app = uvicorn_app("db_app:app", app_port, 1, &[("PG_DSN", &dsn), ("REDIS_PORT", &redis_port.to_string())]);
    // The agent after the app: its runtime (asyncio task) tracking is in place once the agent
    // is ready; the app opens its pool at the first request, so each pool connection's
    // startup is seen.
    let (mut agent, log, metrics_port) = start_agent(&dir, &[format!("app=port:{app_port}")]);
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                scope.spawn(move || {
                    let body = curl(&[&format!("http://127.0.0.1:{app_port}/work?i={i}")]);
                    serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("answer {body:?}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });

    // Wait for every request's exchange and its operations.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let lines = json_lines(&log);
        let servers = lines.iter().filter(|l| l["kind"] == "exchange" && l["direction"] == "server").count();
        // The app's own operations (pool setup, resets and redis-py's handshake come too).
        let ops = lines
            .iter()
            .filter(|l| l["kind"] == "operation")
            .filter(|l| l["collection"] == "items" || l["operation"] == "INCRBY" || l["operation"] == "GET")
            .count();
        if servers >= N && ops >= 4 * N || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    agent.stop();

    // Each request's span id, by i.
    let mut request_span: HashMap<usize, String> = HashMap::new();
    for l in lines.iter().filter(|l| l["kind"] == "exchange" && l["direction"] == "server") {
        let target = l["target"].as_str().unwrap_or("");
        if let Some(i) = target.strip_prefix("/work?i=").and_then(|i| i.parse().ok()) {
            request_span.insert(i, l["span_id"].as_str().expect("span id").to_owned());
        }
    }
    assert_eq!(request_span.len(), N, "every request has its server exchange");

    // Ground truth: (pool connection port, position among the app's statements on it) -> (i, which).
    let mut truth: HashMap<(u16, u64), (usize, usize)> = HashMap::new();
    let mut redis_owner: HashMap<u16, usize> = HashMap::new();
    let mut violations = 0;
    for a in &answers {
        let i = a["i"].as_u64().expect("i") as usize;
        for (k, s) in a["statements"].as_array().expect("statements").iter().enumerate() {
            truth.insert((s["port"].as_u64().expect("port") as u16, s["seq"].as_u64().expect("seq")), (i, k));
        }
        redis_owner.insert(a["redis_port"].as_u64().expect("redis port") as u16, i);
        violations += usize::from(a["unique_violation"] == true);
    }
    assert_eq!(violations, N / 2, "two requests share each tag");

    // The app's statements (on `items`) per pool connection, in the order they were sent.
    let ops: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "operation").collect();
    let mut pg_by_conn: HashMap<u16, Vec<&Value>> = HashMap::new();
    for op in ops.iter().filter(|o| o["db_system"] == "postgresql" && o["collection"] == "items") {
        pg_by_conn.entry(port_of(&op["local"])).or_default().push(op);
    }
    let (mut right, mut wrong, mut none) = (0, 0, 0);
    let mut judge = |op: &Value, i: usize| match op["parent_span_id"].as_str() {
        Some(p) if Some(p) == request_span.get(&i).map(String::as_str) => right += 1,
        Some(_) => wrong += 1,
        None => none += 1,
    };
    let mut violations_seen = 0;
    let mut selects = 0;
    for (port, list) in &mut pg_by_conn {
        list.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
        for (seq, op) in list.iter().enumerate() {
            let &(i, k) = truth
                .get(&(*port, seq as u64))
                .unwrap_or_else(|| panic!("no statement {seq} on connection {port}: {op}"));
            let (name, text) = if k == 0 {
                ("SELECT", "SELECT count(*) FROM items WHERE tag = $1")
            } else {
                ("INSERT", "INSERT INTO items (tag, n) VALUES ($1, $2)")
            };
            assert_eq!(op["operation"], name, "request {i} statement {k}: {op}");
            assert_eq!(op["query_text"], text, "sanitised and named each time: {op}");
            assert_eq!(op["db_namespace"], "postgres");
            if k == 0 {
                selects += 1;
                assert_eq!(op["rows"], 1, "{op}");
            }
            if op["status_code"] == "23505" {
                violations_seen += 1;
            }
            judge(op, i);
        }
    }
    assert_eq!(selects, N, "the prepared SELECT is named at each of its {N} executions");
    assert_eq!(violations_seen, N / 2, "each unique violation has its SQLSTATE");
    for op in
        ops.iter().filter(|o| o["db_system"] == "redis" && (o["operation"] == "INCRBY" || o["operation"] == "GET"))
    {
        let i = *redis_owner.get(&port_of(&op["local"])).unwrap_or_else(|| panic!("unknown Redis connection: {op}"));
        assert!(op["query_text"] == "INCRBY ? ?" || op["query_text"] == "GET ?", "no key leaves the agent: {op}");
        judge(op, i);
    }
    let total = right + wrong + none;
    println!("db operations: {total} judged, {right} right parent, {wrong} wrong, {none} without parent");
    assert_eq!(wrong, 0, "precision 1.0: no operation under another request");
    assert_eq!(total, 4 * N, "two statements and two Redis commands per request");
    assert_eq!(right, total, "every operation under the request that issued it");
    for l in &lines {
        let text = l.to_string();
        assert!(!text.contains("hits:") && !text.contains("\"t1\""), "no value or key leaves the agent: {text}");
    }
    assert!(metrics.contains("traceo_agent_db_connections_total"), "{metrics}");
    assert!(
        metrics.contains("traceo_db_client_operation_duration_seconds_count{service=\"app\",db_system_name=\"postgresql\",db_operation_name=\"INSERT\",db_collection_name=\"items\",db_response_status_code=\"23505\"}"),
        "{metrics}"
    );
}

/// libpq over TLS (`sslmode=require`) against a server with `ssl=on` and a self-signed
/// certificate: the socket carries ciphertext, and the session is read from the OpenSSL
/// probes' plaintext.
#[test]
fn a_psql_session_over_tls_is_read_in_plaintext() {
    if !ready("db_tls") {
        return;
    }
    let dir = temp_dir("db-tls");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success(), "openssl req");
    let pg_port = free_port();
    let settings =
        ["ssl=on".to_owned(), format!("ssl_cert_file={}", cert.display()), format!("ssl_key_file={}", key.display())];
    // The server refuses a key others can read; postgres_with gives the folder to its user.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod key");
    let _pg = postgres_with(&dir, pg_port, &settings);

    let (mut agent, log, metrics_port) = start_agent(&dir, &["psql=comm:psql".to_owned()]);
    let conninfo = format!("host=127.0.0.1 port={pg_port} user=postgres dbname=postgres sslmode=require");
    let out = Command::new("psql")
        .arg(&conninfo)
        .args(["-X", "-A", "-t", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
        .args(["-c", "SELECT 'tls-canary' AS x, 41 + 1"])
        .output()
        .expect("psql");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    // The server says the session was encrypted: the wire carried no plaintext.
    assert_eq!(said.lines().next(), Some("t"), "{said}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let ops = loop {
        let ops: Vec<Value> = json_lines(&log).into_iter().filter(|l| l["kind"] == "operation").collect();
        if ops.len() >= 2 || Instant::now() > deadline {
            break ops;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let metrics = scrape(metrics_port);
    agent.stop();

    let texts: Vec<&str> = ops.iter().filter_map(|o| o["query_text"].as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("pg_stat_ssl")), "{ops:#?}");
    let canary = ops
        .iter()
        .find(|o| o["query_text"] == "SELECT ? AS x, ? + ?")
        .unwrap_or_else(|| panic!("the second statement, sanitised: {ops:#?}"));
    assert_eq!(canary["db_system"], "postgresql");
    assert_eq!(canary["db_namespace"], "postgres");
    assert_eq!(canary["rows"], 1);
    assert_eq!(canary["tls"], true, "read as TLS plaintext: {canary}");
    assert_eq!(port_of(&canary["peer"]), pg_port);
    assert!(metric_sum(&metrics, "traceo_tls_plaintext_events_total") > 0.0, "{metrics}");
    assert!(!std::fs::read_to_string(&log).unwrap_or_default().contains("tls-canary"), "a literal left the agent");
}
