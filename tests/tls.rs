//! HTTPS through the OpenSSL probes: real TLS servers and clients (uvicorn + httpx, nginx,
//! curl, openssl s_server behind an SSL BIO), traced by `traceo-agent run`, must show up in JSON lines, span
//! links and metrics like plain HTTP does; TLS the probes cannot see into (wget's GnuTLS) is
//! reported, and nothing else breaks. They need root; see support::require_root.

mod support;

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{tls::*, *};

/// Exchanges of one service and direction.
fn side<'a>(x: &'a [Value], service: &str, direction: &str) -> Vec<&'a Value> {
    x.iter().filter(|e| e["service"] == service && e["direction"] == direction).collect()
}

/// "METHOD target status" of each exchange, sorted.
fn summary(x: &[&Value]) -> Vec<String> {
    let mut v: Vec<String> = x.iter().map(|e| format!("{} {} {}", e["method"], e["target"], e["status"])).collect();
    v.sort();
    v
}

/// Wait until the JSON lines hold `n` exchanges (the pipeline emits a few ms after the I/O).
fn wait_for_exchanges(log: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let x = json_lines(log);
        if x.len() >= n || Instant::now() > deadline {
            return x;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of one metric line (`name{labels} value`) whose text contains every `part`.
fn metric(text: &str, parts: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn assert_all_tls(x: &[&Value], tls: bool, what: &str) {
    for e in x {
        assert_eq!(e["tls"], tls, "{what}: tls should be {tls}: {e}");
    }
}

/// Each of `children` has a parent among `parents` (by span id), found the way `link` says.
fn assert_parented(children: &[&Value], parents: &[&Value], link: &str, what: &str) {
    for c in children {
        let parent = parents.iter().find(|p| p["span_id"] == c["parent_span_id"]);
        let parent = parent.unwrap_or_else(|| panic!("{what}: no parent for {c}"));
        assert_eq!(c["trace_id"], parent["trace_id"], "{what}: one trace");
        assert_eq!(c["link"], link, "{what}: {c}");
        assert_eq!(c["target"], parent["target"], "{what}: the parent is the same request one hop earlier");
    }
}

#[test]
fn uvicorn_https_and_httpx_keepalive_give_every_exchange_on_both_sides_marked_tls() {
    if !require_root("uvicorn_https") || !require_python("uvicorn_https") {
        return;
    }
    let dir = temp_dir("tls-uvicorn");
    let (cert, key) = self_signed(&dir);
    let port = free_port();
    let _server = uvicorn_https(port, &cert, &key);
    let requests = r#"[["GET","/hello"],["POST","/echo"],["GET","/items/7"],["PUT","/items/7"],
        ["DELETE","/items/7"],["GET","/status/404"],["GET","/hello"],["POST","/upload"]]"#;
    let mut client = https_client(&format!("https://127.0.0.1:{port}"), requests);
    let (mut agent, log, metrics_port) =
        start_agent(&dir, &[format!("api=port:{port}"), format!("client=pid:{}", client.pid())]);

    client.send_line("go");
    let mut out = None;
    let said: Vec<String> = (0..8).map(|_| client.read_line(&mut out)).collect();
    assert!(said.iter().all(|l| !l.is_empty()), "client output: {said:?}");
    let x = wait_for_exchanges(&log, 16);
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    agent.stop();

    let (server, clientx) = (side(&x, "api", "server"), side(&x, "client", "client"));
    let want = vec![
        "\"DELETE\" \"/items/7\" 204",
        "\"GET\" \"/hello\" 200",
        "\"GET\" \"/hello\" 200",
        "\"GET\" \"/items/7\" 200",
        "\"GET\" \"/status/404\" 404",
        "\"POST\" \"/echo\" 200",
        "\"POST\" \"/upload\" 200",
        "\"PUT\" \"/items/7\" 200",
    ];
    assert_eq!(summary(&server), want, "server side (uvicorn: memory BIOs)");
    assert_eq!(summary(&clientx), want, "client side (httpx: socket BIOs)");
    assert_all_tls(&server, true, "server");
    assert_all_tls(&clientx, true, "client");
    let echo = server.iter().find(|e| e["route"] == "/echo").expect("echo");
    assert_eq!((echo["request_bytes"].as_u64(), echo["response_bytes"].as_u64()), (Some(1000), Some(1000)));
    let conns: std::collections::HashSet<&Value> = clientx.iter().map(|e| &e["conn_id"]).collect();
    assert_eq!(conns.len(), 1, "one keep-alive connection");
    // Both ends of one TLS connection on this host: each server span is its client's child.
    assert_parented(&server, &clientx, "connection", "server spans");

    let https = |parts: &[&str]| metric(&metrics, parts);
    assert_eq!(
        https(&["traceo_http_requests_total{", "service=\"api\"", "/hello", "url_scheme=\"https\""]),
        Some(2.0),
        "{metrics}"
    );
    assert!(!metrics.contains("service=\"api\",direction=\"server\",http_request_method=\"GET\",http_route=\"/hello\",http_response_status_code=\"200\",server_address=\"\",url_scheme=\"http\""));
    assert!(https(&["traceo_tls_plaintext_events_total"]).unwrap_or(0.0) >= 32.0, "{metrics}");
    assert_eq!(https(&["traceo_tls_unbound_events_total"]), Some(0.0), "{metrics}");
    assert_eq!(https(&["traceo_agent_non_http_connections_total"]), Some(0.0), "ciphertext never reached the parser");
}

#[test]
fn nginx_terminating_tls_for_plain_uvicorn_links_front_to_backend_and_curl_reuses_its_connection() {
    if !require_root("nginx_tls") || !require_python("nginx_tls") {
        return;
    }
    let dir = temp_dir("tls-nginx");
    let (cert, key) = self_signed(&dir);
    let (api, front) = (free_port(), free_port());
    let _backend = uvicorn(api, 1);
    let server = format!(
        "upstream api {{ server 127.0.0.1:{api}; keepalive 4; }}\n  \
         server {{ listen 127.0.0.1:{front} ssl; ssl_certificate {}; ssl_certificate_key {};\n    \
         location / {{ proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
        cert.display(),
        key.display()
    );
    let nginx = nginx(&dir.join("nginx"), &server, front);
    // One curl, three URLs: one TLS connection, reused.
    let base = format!("https://127.0.0.1:{front}");
    let urls = [format!("{base}/hello"), format!("{base}/items/3"), format!("{base}/status/404")];
    let client = held("curl", &["-sSk", &urls[0], &urls[1], &urls[2]]);
    let (mut agent, log, _) = start_agent(
        &dir,
        &[format!("nginx=pid:{}", nginx.pid()), format!("api=port:{api}"), format!("curl=pid:{}", client.pid())],
    );
    release(client);
    let x = wait_for_exchanges(&log, 12);
    agent.stop();

    let want = vec!["\"GET\" \"/hello\" 200", "\"GET\" \"/items/3\" 200", "\"GET\" \"/status/404\" 404"];
    let (front_x, upstream, backend, curl_x) = (
        side(&x, "nginx", "server"),
        side(&x, "nginx", "client"),
        side(&x, "api", "server"),
        side(&x, "curl", "client"),
    );
    for (what, got, tls) in [
        ("nginx server", &front_x, true),
        ("nginx upstream", &upstream, false),
        ("api", &backend, false),
        ("curl", &curl_x, true),
    ] {
        assert_eq!(summary(got), want, "{what}: {x:#?}");
        assert_all_tls(got, tls, what);
    }
    let conns: std::collections::HashSet<&Value> = curl_x.iter().map(|e| &e["conn_id"]).collect();
    assert_eq!(conns.len(), 1, "curl reused one connection for its three requests");
    // curl -> nginx (TLS, both ends traced) -> nginx's upstream call -> uvicorn.
    assert_parented(&front_x, &curl_x, "connection", "nginx TLS front");
    assert_parented(&backend, &upstream, "connection", "uvicorn backend");
    for u in &upstream {
        let parent = front_x.iter().find(|f| f["span_id"] == u["parent_span_id"]);
        let parent = parent.unwrap_or_else(|| panic!("upstream call without its TLS front request: {u}"));
        assert_eq!((&u["trace_id"], &u["target"]), (&parent["trace_id"], &parent["target"]));
    }
}

/// `openssl s_server -www` reads and writes through an SSL BIO (`BIO_f_ssl`), which calls
/// OpenSSL's internal read/write and never the exported `SSL_read`/`SSL_write`. The probes sit
/// on those internal functions (found behind the exported ones), so its end of the connection
/// is traced like curl's (plain `SSL_read`/`SSL_write`), and the two ends are stitched.
#[test]
fn openssl_s_server_behind_an_ssl_bio_is_traced_through_openssls_internal_functions() {
    if !require_root("s_server") {
        return;
    }
    let dir = temp_dir("tls-s-server");
    let (cert, key) = self_signed(&dir);
    let port = free_port();
    let _server = Proc::spawn(
        Command::new("openssl")
            .args(["s_server", "-www", "-quiet", "-accept", &port.to_string(), "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    let client = held("curl", &["-sSk", &format!("https://127.0.0.1:{port}/")]);
    let (mut agent, log, metrics_port) =
        start_agent(&dir, &[format!("s_server=port:{port}"), format!("curl=pid:{}", client.pid())]);
    let page = release(client);
    let x = wait_for_exchanges(&log, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    agent.stop();

    let client = side(&x, "curl", "client");
    assert_eq!(summary(&client), vec!["\"GET\" \"/\" 200"], "{x:#?}");
    assert_all_tls(&client, true, "curl");
    assert_eq!(client[0]["response_bytes"].as_u64(), Some(page.len() as u64), "the page, read until the close");
    let server = side(&x, "s_server", "server");
    assert_eq!(summary(&server), vec!["\"GET\" \"/\" 200"], "{x:#?}");
    assert_all_tls(&server, true, "s_server");
    assert_parented(&server, &client, "connection", "s_server behind its SSL BIO");
    assert_eq!(metric(&metrics, &["traceo_tls_opaque_connections_total"]).unwrap_or(0.0), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, &["traceo_agent_non_http_connections_total"]), Some(0.0), "{metrics}");
}

#[test]
fn tls_the_probes_cannot_see_and_processes_without_libssl_are_reported_and_break_nothing() {
    if !require_root("opaque_tls") || !require_python("opaque_tls") {
        return;
    }
    let dir = temp_dir("tls-opaque");
    let (cert, key) = self_signed(&dir);
    let (tls_port, plain_port) = (free_port(), free_port());
    let _tls_server = uvicorn_https(tls_port, &cert, &key);
    let plain = Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/apps/plain_socket_server.py"))
            .arg(plain_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(plain_port);
    // wget uses GnuTLS; held in its handshake by a listener that never answers, it stays up
    // for `check` to look at.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let _stuck_wget = Proc::spawn(
        Command::new("wget")
            .args(["-q", "--no-check-certificate", "--timeout=60", "--tries=1", "-O", "/dev/null"])
            .arg(format!("https://127.0.0.1:{silent_port}/"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(500));
    let check = Command::new(AGENT)
        .args(["check", "--service", "w=comm:wget", "--service", &format!("plain=pid:{}", plain.pid())])
        .output()
        .expect("run check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("GnuTLS: HTTPS NOT visible"), "check should name wget's TLS library:\n{report}");
    assert!(report.contains("no TLS library loaded"), "the plain server maps no libssl:\n{report}");
    assert!(report.contains("OpenSSL (system libssl)"), "{report}");

    let url = format!("https://127.0.0.1:{tls_port}/hello");
    let wget = held("wget", &["-q", "--no-check-certificate", "-O", "-", &url]);
    let (mut agent, log, metrics_port) = start_agent(
        &dir,
        &[format!("w=pid:{}", wget.pid()), format!("api=port:{tls_port}"), format!("plain=port:{plain_port}")],
    );
    assert_eq!(release(wget), "hello", "wget over TLS");
    assert_eq!(curl(&[&format!("http://127.0.0.1:{plain_port}/ping")]), "plain");
    let x = wait_for_exchanges(&log, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    let agent_log = agent.stop().join("\n");

    // wget's own side is invisible (GnuTLS): no exchange, but counted and logged once.
    assert!(side(&x, "w", "client").is_empty(), "{x:#?}");
    assert!(metric(&metrics, &["traceo_tls_opaque_connections_total"]).unwrap_or(0.0) >= 1.0, "{metrics}");
    assert!(agent_log.contains("no plaintext seen"), "{agent_log}");
    // The server it talked to is OpenSSL: that side is traced, and so is the plain server.
    let api = side(&x, "api", "server");
    assert_eq!(summary(&api), vec!["\"GET\" \"/hello\" 200"], "{x:#?}");
    assert_all_tls(&api, true, "api");
    let plain_x = side(&x, "plain", "server");
    assert_eq!(summary(&plain_x), vec!["\"GET\" \"/ping\" 200"], "{x:#?}");
    assert_all_tls(&plain_x, false, "plain");
    assert_eq!(metric(&metrics, &["traceo_agent_non_http_connections_total"]), Some(0.0), "{metrics}");
}

#[test]
fn process_churn_never_poisons_the_tls_probes_of_later_services() {
    if !require_root("tls_churn") || !require_python("tls_churn") {
        return;
    }
    let dir = temp_dir("tls-churn");
    // A traced service that forks a short-lived child again and again: probing each child's
    // libssl races its exit, and those attaches fail.
    let churner = dir.join("churner");
    std::fs::copy("/bin/sh", &churner).expect("copy /bin/sh");
    let _churn = Proc::spawn(Command::new(&churner).args(["-c", "while :; do /bin/true; done"]));
    let port = free_port();
    let (mut agent, log, metrics_port) =
        start_agent(&dir, &["churn=comm:churner".to_owned(), format!("api=port:{port}")]);
    std::thread::sleep(Duration::from_secs(3));
    // A service and a client started afterwards: their HTTPS must be traced.
    let (cert, key) = self_signed(&dir);
    let _server = uvicorn_https(port, &cert, &key);
    let requests = r#"[["GET","/hello"],["GET","/items/7"],["GET","/hello"],["GET","/status/404"]]"#;
    let mut client = https_client(&format!("https://127.0.0.1:{port}"), requests);
    // Give the agent a rescan to find the server by its port and its late libssl.
    std::thread::sleep(Duration::from_secs(7));
    let started = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    client.send_line("go");
    let mut out = None;
    let said: Vec<String> = (0..4).map(|_| client.read_line(&mut out)).collect();
    assert!(said.iter().all(|l| !l.is_empty()), "client output: {said:?}");
    let x = wait_for_exchanges(&log, 4);
    agent.stop();
    let server = side(&x, "api", "server");
    assert_eq!(server.len(), 4, "every HTTPS request of the later service is traced: {x:?}\nmetrics:\n{started}");
    assert_all_tls(&server, true, "later service");
}

#[test]
fn a_libssl_loaded_late_from_elsewhere_is_probed_at_the_next_rescan() {
    if !require_root("tls_late") || !require_python("tls_late") {
        return;
    }
    let dir = temp_dir("tls-late");
    // A private copy of OpenSSL (another inode than the system's, which the agent probes at
    // once): found only by reading the traced process's memory map.
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).expect("lib dir");
    for name in ["libssl.so.3", "libcrypto.so.3"] {
        std::fs::copy(Path::new("/usr/lib/x86_64-linux-gnu").join(name), lib.join(name))
            .unwrap_or_else(|e| panic!("copy {name} (Debian's OpenSSL 3 expected): {e}"));
    }
    let port = free_port();
    let (mut agent, log, metrics_port) = start_agent(&dir, &[format!("api=port:{port}")]);
    // The service starts after the agent, loading the copy.
    let (cert, key) = self_signed(&dir);
    let _server = Proc::spawn(
        Command::new(python())
            .args(["-m", "uvicorn", "echo_app:app", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--no-access-log", "--ssl-certfile"])
            .arg(&cert)
            .arg("--ssl-keyfile")
            .arg(&key)
            .env("LD_LIBRARY_PATH", &lib)
            .current_dir(repo().join("tests/apps"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port);
    // A rescan (every 5 s) finds the copy in its map.
    std::thread::sleep(Duration::from_secs(7));
    let requests = r#"[["GET","/hello"],["GET","/items/7"],["GET","/status/404"]]"#;
    let mut client = https_client(&format!("https://127.0.0.1:{port}"), requests);
    client.send_line("go");
    let mut out = None;
    let said: Vec<String> = (0..3).map(|_| client.read_line(&mut out)).collect();
    assert!(said.iter().all(|l| !l.is_empty()), "client output: {said:?}");
    let x = wait_for_exchanges(&log, 3);
    let metrics = curl(&[&format!("http://127.0.0.1:{metrics_port}/metrics")]);
    let agent_log = agent.stop().join("\n");
    let copy = lib.join("libssl.so.3").display().to_string();
    assert!(
        agent_log.lines().any(|l| l.contains("uses OpenSSL") && l.contains(&copy)),
        "the agent never found the service's private libssl ({copy}); its log:\n{agent_log}"
    );
    let server = side(&x, "api", "server");
    assert_eq!(server.len(), 3, "every HTTPS request to the service is traced: {x:?}\nmetrics:\n{metrics}");
    assert_all_tls(&server, true, "service with a private libssl");
    assert!(
        metric(&metrics, &["traceo_tls_probed_libraries"]).is_some_and(|n| n >= 2.0),
        "the system's libssl and the copy are both probed:\n{metrics}"
    );
}

/// Node.js links OpenSSL into its executable, built with `ssl_read_internal` inlined into
/// `SSL_read_ex`: no thin wrapper, so the agent probes its public functions instead (and says
/// so). Its HTTPS requests over a keep-alive connection are traced on both ends all the same.
#[test]
fn node_with_openssl_linked_in_is_traced_through_its_public_functions() {
    if !require_root("node_https") || !require_python("node_https") || !require_node("node_https") {
        return;
    }
    let dir = temp_dir("tls-node");
    let (cert, key) = self_signed(&dir);
    let port = free_port();
    let _server = uvicorn_https(port, &cert, &key);
    const CLIENT: &str = r#"
        const https = require('https');
        const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
        const get = (path) => new Promise((ok, fail) => https.get(
            { host: '127.0.0.1', port: +process.argv[1], path, agent, rejectUnauthorized: false },
            (r) => { let b = ''; r.on('data', (d) => b += d); r.on('end', () => ok(`${r.statusCode} ${b}`)); },
        ).on('error', fail));
        process.stdin.once('data', async () => {
            for (const p of ['/hello', '/items/7']) console.log(await get(p));
            agent.destroy();
            process.exit(0);
        });
        console.log('ready');
    "#;
    let mut client = Proc::spawn(
        Command::new("node").args(["-e", CLIENT, &port.to_string()]).stdin(Stdio::piped()).stdout(Stdio::piped()),
    );
    let mut out = None;
    assert_eq!(client.read_line(&mut out), "ready");
    let (mut agent, log, metrics_port) =
        start_agent(&dir, &[format!("api=port:{port}"), format!("node=pid:{}", client.pid())]);
    // The node executable is probed once the agent has read the process's memory map.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&scrape(metrics_port), &["traceo_tls_probed_libraries"]).unwrap_or(0.0) < 2.0 {
        assert!(Instant::now() < deadline, "node's executable was never probed:\n{}", scrape(metrics_port));
        std::thread::sleep(Duration::from_millis(200));
    }
    client.send_line("go");
    let said: Vec<String> = (0..2).map(|_| client.read_line(&mut out)).collect();
    assert_eq!(said[0], "200 hello", "{said:?}");
    let x = wait_for_exchanges(&log, 4);
    let agent_log = agent.stop().join("\n");

    assert!(
        agent_log.lines().any(|l| l.contains("ssl_read_internal not found") && l.contains("probing SSL_read")),
        "the fallback to node's public functions is logged:\n{agent_log}"
    );
    let want = vec!["\"GET\" \"/hello\" 200", "\"GET\" \"/items/7\" 200"];
    let (server, clientx) = (side(&x, "api", "server"), side(&x, "node", "client"));
    assert_eq!(summary(&clientx), want, "node's side (its own OpenSSL, public functions): {x:#?}");
    assert_eq!(summary(&server), want, "uvicorn's side (the system's libssl, internal functions): {x:#?}");
    assert_all_tls(&clientx, true, "node");
    assert_all_tls(&server, true, "api");
    assert_parented(&server, &clientx, "connection", "node -> uvicorn over TLS");
}
