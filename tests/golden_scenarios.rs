//! The scenarios of tests/fixtures/README.md: what each fixture's exchanges must mean,
//! checked independently of the golden files (see golden.rs). The database fixtures' are in
//! golden_db_scenarios.rs.

use serde_json::Value;
use traceo_agent::http::route::UNMATCHED;

use super::*;

#[test]
fn httpx_keepalive_fixture() {
    scenario("httpx_keepalive");
}

pub(super) fn httpx_keepalive(x: &[Value], _raw: &[Value]) {
    // httpx 0.27 encodes json= with json.dumps defaults.
    let echo = r#"{"name": "traceo", "values": [1, 2, 3]}"#.len() as u64;
    let first = r#"{"title": "first"}"#.len() as u64;
    let second = r#"{"title": "second"}"#.len() as u64;
    let created = format!(r#"{{"id": 1, "received": {first}}}"#).len() as u64;
    let got = r#"{"id": "7"}"#.len() as u64;
    let put = format!(r#"{{"id": "7", "received": {second}}}"#).len() as u64;
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
            want("api server", "POST /echo", "/echo", 200, echo, echo),
            want("api server", "POST /items", "/items", 201, first, created),
            want("api server", "GET /items/7", "/items/{id}", 200, 0, got),
            want("api server", "PUT /items/7", "/items/{id}", 200, second, put),
            want("api server", "DELETE /items/7", "/items/{id}", 204, 0, 0),
            want("api server", "GET /missing", UNMATCHED, 404, 0, NOT_FOUND),
        ]),
    );
    one_connection(x, "api", "server");
    one_connection(x, "client", "client");
    for c in of(x, "client", "client") {
        assert!(c["user_agent"].as_str().is_some_and(|u| u.starts_with("python-httpx/")), "{c}");
    }
    let echo = of(x, "api", "server").into_iter().find(|e| e["target"] == "/echo").expect("echo");
    assert_eq!(echo["content_type"], "application/json");
}

#[test]
fn http_server_fixture() {
    scenario("http_server");
}

pub(super) fn http_server(x: &[Value], raw: &[Value]) {
    let hello = "hello from http.server\n".len() as u64;
    let not_found = raw_response_length(raw, "web", "HTTP/1.0 404 ");
    let unsupported = raw_response_length(raw, "web", "HTTP/1.0 501 ");
    let mut wants = vec![
        want("web server", "GET /hello.txt", "/hello.txt", 200, 0, hello),
        want("web server", "GET /missing.txt", UNMATCHED, 404, 0, not_found),
        want("web server", "POST /form", "/form", 501, "a=1".len() as u64, unsupported),
    ];
    wants.extend(wants.clone().into_iter().map(|w| w.at("client client")));
    expect(x, &wants);
    // HTTP/1.0 responses end the connection: one per request.
    let conns: BTreeSet<String> = of(x, "web", "server").iter().map(|e| e["conn_id"].to_string()).collect();
    assert_eq!(conns.len(), 3);
}

#[test]
fn http_server_curl_fixture() {
    scenario("http_server_curl");
}

/// The older fixture (see tests/replay.rs): `python -m http.server` traced by pid, curl
/// fetching /hello.txt ("fixture body\n") and /missing.
pub(super) fn http_server_curl(x: &[Value], raw: &[Value]) {
    let not_found = raw_response_length(raw, "web", "HTTP/1.0 404 ");
    expect(
        x,
        &[
            want("web server", "GET /hello.txt", "/hello.txt", 200, 0, "fixture body\n".len() as u64),
            want("web server", "GET /missing", UNMATCHED, 404, 0, not_found),
        ],
    );
}

#[test]
fn nginx_proxy_fixture() {
    scenario("nginx_proxy");
}

pub(super) fn nginx_proxy(x: &[Value], _raw: &[Value]) {
    let body = 100;
    let requests = |who: &str| {
        vec![
            want(who, "GET /hello", "/hello", 200, 0, HELLO),
            want(who, "POST /upload", "/upload", 200, body, upload_reply(body)),
            want(who, "GET /status/404", UNMATCHED, 404, 0, STATUS),
            want(who, "GET /stream", "/stream", 200, 0, stream_body()),
        ]
    };
    let wants: Vec<Want> = ["nginx server", "nginx client", "api server"].into_iter().flat_map(requests).collect();
    expect(x, &wants);
    // curl -> nginx on one connection; nginx -> uvicorn on one kept-alive upstream connection.
    one_connection(x, "nginx", "server");
    one_connection(x, "nginx", "client");
    // Each upstream call is the api's exchange seen from the other end of the same connection,
    // and happens within the nginx exchange that caused it.
    let (server, upstream, api) = (of(x, "nginx", "server"), of(x, "nginx", "client"), of(x, "api", "server"));
    for ((s, u), a) in server.iter().zip(&upstream).zip(&api) {
        assert_eq!((&u["local"], &u["peer"]), (&a["peer"], &a["local"]), "upstream connection ends: {u} {a}");
        assert!(s["ts"].as_str() <= u["ts"].as_str() && u["ts"].as_str() <= a["ts"].as_str(), "{s}\n{u}\n{a}");
        let ms = |v: &Value| v["duration_ms"].as_f64().expect("duration");
        assert!(
            ms(a) <= ms(u) && ms(u) <= ms(s),
            "durations nest: nginx {} > upstream {} > api {}",
            ms(s),
            ms(u),
            ms(a)
        );
    }
}

#[test]
fn curl_next_fixture() {
    scenario("curl_next");
}

pub(super) fn curl_next(x: &[Value], _raw: &[Value]) {
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
            want("api server", "GET /status/404", UNMATCHED, 404, 0, STATUS),
            want("api server", "POST /upload", "/upload", 200, 3, upload_reply(3)),
            want("api server", "GET /items/3", "/items/{id}", 200, 0, r#"{"id": "3"}"#.len() as u64),
        ]),
    );
    one_connection(x, "api", "server");
    one_connection(x, "client", "client");
}

#[test]
fn pipelining_fixture() {
    scenario("pipelining");
}

pub(super) fn pipelining(x: &[Value], raw: &[Value]) {
    // The three requests crossed in one send and one read.
    for (service, dir) in [("client", "egress"), ("api", "ingress")] {
        let first = data(raw, service, dir).into_iter().next().expect("a request");
        assert_eq!(text(first).matches(" HTTP/1.1\r\n").count(), 3, "{service} {dir} did not pipeline: {first}");
    }
    let echo = r#"{"pipelined": true}"#.len() as u64;
    // Distinct statuses and sizes: a pairing off by one would show.
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /status/201", "/status/{id}", 201, 0, STATUS),
            want("api server", "POST /echo", "/echo", 200, echo, echo),
            want("api server", "GET /status/404", "/status/{id}", 404, 0, STATUS), // /status/{id} answered 201 first: a served route keeps its 404s
        ]),
    );
    one_connection(x, "api", "server");
    // Each response ends after the previous one: completion times in request order.
    let end = |v: &&Value| {
        let ts = v["ts"].as_str().expect("ts");
        (ts.to_owned(), v["duration_ms"].as_f64().expect("duration"))
    };
    let server: Vec<(String, f64)> = of(x, "api", "server").iter().map(end).collect();
    for pair in server.windows(2) {
        assert_eq!(pair[0].0, pair[1].0, "the server read all three requests at once: same start");
        assert!(pair[0].1 <= pair[1].1, "responses came in order: {server:?}");
    }
}

#[test]
fn streaming_fixture() {
    scenario("streaming");
}

pub(super) fn streaming(x: &[Value], raw: &[Value]) {
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /stream", "/stream", 200, 0, stream_body()),
            want("api server", "GET /events", "/events", 200, 0, events_body()),
        ]),
    );
    let server = of(x, "api", "server");
    assert_eq!(server[1]["content_type"], "text/event-stream");
    // The app sleeps 10 ms after each part (5, then 3): the last byte leaves that much later.
    for (x, parts) in server.iter().zip([5.0, 3.0]) {
        let ms = x["duration_ms"].as_f64().expect("duration");
        assert!(ms >= parts * 10.0 - 1.0, "{}: {ms} ms for {parts} parts 10 ms apart", x["target"]);
    }
    // It really streamed: the chunks left in separate writes, the head first.
    let writes = data(raw, "api", "egress");
    assert!(writes.len() >= 5 + 3, "{} writes", writes.len());
    assert!(writes.iter().any(|w| text(w).contains("Transfer-Encoding: chunked")), "not chunked on the wire");
    one_connection(x, "api", "server");
}

#[test]
fn upload_5mib_fixture() {
    scenario("upload_5mib");
}

pub(super) fn upload_5mib(x: &[Value], raw: &[Value]) {
    const FILE: u64 = 5 * 1024 * 1024;
    // The multipart body curl -F builds around the file, from the boundary in its head.
    let head = text(data(raw, "client", "egress")[0]);
    let ctype = raw_header(head, "content-type").expect("content type");
    let boundary = ctype.split_once("boundary=").expect("multipart boundary").1;
    let body = format!("--{boundary}\r\n").len()
        + "Content-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n".len()
        + "Content-Type: application/octet-stream\r\n\r\n".len()
        + FILE as usize
        + format!("\r\n--{boundary}--\r\n").len();
    let body = body as u64;
    assert_eq!(raw_header(head, "content-length"), Some(body.to_string()), "curl's Content-Length");
    // Every byte the server read on the connection, captured or not: head + body.
    let read: u64 = data(raw, "api", "ingress").iter().filter_map(|e| e["len"].as_u64()).sum();
    let server_head = text(data(raw, "api", "ingress")[0]);
    let head_len = server_head.find("\r\n\r\n").expect("head in the first read") as u64 + 4;
    assert_eq!(read, head_len + body, "bytes the server read");
    // --capture-bytes 1024: most of the body was not captured.
    let flags = ["truncated"];
    expect(
        x,
        &both_ends(vec![want("api server", "POST /upload", "/upload", 200, body, upload_reply(body)).flagged(&flags)]),
    );
}

#[test]
fn expect_100_fixture() {
    scenario("expect_100");
}

pub(super) fn expect_100(x: &[Value], raw: &[Value]) {
    const BODY: u64 = 1024 * 1024;
    // On the wire: the head asks, the server says 100 Continue, then the final 200.
    let head = text(data(raw, "client", "egress")[0]);
    assert_eq!(raw_header(head, "expect").as_deref(), Some("100-continue"));
    let replies: Vec<&str> = data(raw, "api", "egress").iter().map(|e| text(e)).collect();
    assert!(replies[0].starts_with("HTTP/1.1 100 Continue\r\n"), "{replies:?}");
    assert!(replies[1].starts_with("HTTP/1.1 200 OK\r\n"), "{replies:?}");
    // The exchange is the request and its final response; 16 KiB capture per syscall.
    expect(
        x,
        &both_ends(vec![
            want("api server", "POST /upload", "/upload", 200, BODY, upload_reply(BODY)).flagged(&["truncated"]),
        ]),
    );
}

#[test]
fn head_fixture() {
    scenario("head");
}

pub(super) fn head(x: &[Value], raw: &[Value]) {
    // The HEAD responses announce bodies they do not carry.
    let replies: Vec<&str> = data(raw, "api", "egress").iter().map(|e| text(e)).collect();
    assert_eq!(raw_header(replies[0], "content-length").as_deref(), Some("5"), "{replies:?}");
    assert_eq!(raw_header(replies[1], "transfer-encoding").as_deref(), Some("chunked"), "{replies:?}");
    expect(
        x,
        &both_ends(vec![
            want("api server", "HEAD /hello", "/hello", 200, 0, 0),
            want("api server", "HEAD /stream", "/stream", 200, 0, 0),
            // Framed right after them on the same connection.
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
        ]),
    );
    one_connection(x, "api", "server");
    one_connection(x, "client", "client");
}

#[test]
fn no_content_204_fixture() {
    scenario("no_content_204");
}

pub(super) fn no_content_204(x: &[Value], _raw: &[Value]) {
    expect(
        x,
        &both_ends(vec![
            want("api server", "DELETE /items/5", "/items/{id}", 204, 0, 0),
            want("api server", "GET /status/204", "/status/{id}", 204, 0, 0),
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
        ]),
    );
    one_connection(x, "api", "server");
}

#[test]
fn not_modified_304_fixture() {
    scenario("not_modified_304");
}

pub(super) fn not_modified_304(x: &[Value], raw: &[Value]) {
    // record.sh writes "<html>" + "static page " * 100 + "</html>\n".
    let page = ("<html>".len() + "static page ".len() * 100 + "</html>\n".len()) as u64;
    let requests: Vec<&str> = data(raw, "client", "egress").iter().map(|e| text(e)).collect();
    assert_eq!(requests.len(), 4, "{requests:?}");
    assert!(raw_header(requests[1], "if-none-match").is_some(), "{}", requests[1]);
    assert!(raw_header(requests[2], "if-modified-since").is_some(), "{}", requests[2]);
    // nginx sends the file with sendfile: the kernel sees its length, not its bytes.
    let sendfiles = data(raw, "nginx", "egress").iter().filter(|e| e["syscall"] == "sendfile").count();
    assert_eq!(sendfiles, 2, "the two 200s use sendfile");
    let get = |who, status, size| want(who, "GET /page.html", "/page.html", status, 0, size);
    expect(
        x,
        &[
            get("nginx server", 200, page).flagged(&["truncated"]),
            get("nginx server", 304, 0),
            get("nginx server", 304, 0),
            get("nginx server", 200, page).flagged(&["truncated"]),
            get("client client", 200, page),
            get("client client", 304, 0),
            get("client client", 304, 0),
            get("client client", 200, page),
        ],
    );
    one_connection(x, "nginx", "server");
}

// ---------------------------------------------------------------------------------------
// HTTPS: uvicorn with --ssl-keyfile/--ssl-certfile (OpenSSL through asyncio's memory BIOs)
// and clients whose OpenSSL reads and writes the socket itself (socket BIOs).

fn is_plaintext(e: &Value) -> bool {
    e["syscall"].as_str().is_some_and(|s| s.starts_with("ssl_"))
}

/// A data event's payload bytes: `--events` writes valid UTF-8 as is, other bytes as `\xNN`.
pub(super) fn payload(e: &Value) -> Vec<u8> {
    let s = text(e);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = s.get(i + 2..i + 4).filter(|_| s[i..].starts_with("\\x"));
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                let c = s[i..].chars().next().expect("a char");
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i += c.len_utf8();
            }
        }
    }
    // Ciphertext could hold the text `\xNN` itself; then the lengths would not agree.
    assert_eq!(Some(out.len() as u64), e["captured"].as_u64(), "undecodable payload {e}");
    out
}

/// The socket bytes of connection `conn` in `direction`, cut into TLS records: their content
/// types. Panics unless the bytes are whole records (type 20..=23, version 3.x, a length).
fn tls_records(raw: &[Value], conn: &Value, direction: &str) -> Vec<u8> {
    let events: Vec<&Value> = raw
        .iter()
        .filter(|e| e["kind"] == "data" && &e["conn_id"] == conn && e["direction"] == direction && !is_plaintext(e))
        .collect();
    assert!(!events.is_empty(), "no {direction} socket bytes on connection {conn}");
    let mut bytes = Vec::new();
    for e in events {
        assert_eq!(e["captured"], e["len"], "connection {conn}: all bytes captured: {e}");
        assert!(!text(e).contains("HTTP/1.1"), "plain HTTP in the socket bytes of connection {conn}: {e}");
        bytes.extend(payload(e));
    }
    let (mut types, mut at) = (Vec::new(), 0);
    while at < bytes.len() {
        let h = &bytes[at..];
        assert!(
            h.len() >= 5 && (20..=23).contains(&h[0]) && h[1] == 3 && h[2] <= 4,
            "connection {conn} {direction}: no TLS record header at byte {at}: {:?}",
            &h[..h.len().min(5)]
        );
        types.push(h[0]);
        at += 5 + u16::from_be_bytes([h[3], h[4]]) as usize;
    }
    assert_eq!(at, bytes.len(), "connection {conn} {direction}: the last TLS record is cut");
    types
}

/// Plaintext events of `service` (ssl_read in, ssl_write out), concatenated per direction.
fn plaintext(raw: &[Value], service: &str, direction: &str) -> Vec<u8> {
    data(raw, service, direction).into_iter().filter(|e| is_plaintext(e)).flat_map(payload).collect()
}

/// What every HTTPS fixture shows: the traced server `api` and client `client` on the two
/// ends of one TLS connection. On the wire only TLS records (a handshake first, then
/// application data); the HTTP exchanges come from the OpenSSL probes' plaintext, which
/// crosses unchanged from one end to the other; each end's exchanges are on its socket's
/// connection, marked tls, and the server's are linked to the client's.
fn tls_connection(x: &[Value], raw: &[Value]) {
    for e in x {
        assert_eq!(e["tls"], true, "not marked tls: {e}");
    }
    let server_conn = one_connection(x, "api", "server");
    let client_conn = one_connection(x, "client", "client");
    let (server, client) = (of(x, "api", "server"), of(x, "client", "client"));
    assert_eq!((&server[0]["local"], &server[0]["peer"]), (&client[0]["peer"], &client[0]["local"]), "two ends");

    // The socket bytes: TLS records only, both ends, both ways.
    for (conn, out, into) in [(&client_conn, "egress", "ingress"), (&server_conn, "egress", "ingress")] {
        for direction in [out, into] {
            let types = tls_records(raw, conn, direction);
            assert_eq!(types[0], 22, "connection {conn} {direction} opens with a handshake record: {types:?}");
            assert!(types.contains(&23), "connection {conn} {direction}: no application data record: {types:?}");
        }
    }
    // The kernel saw the same ciphertext leave one end and reach the other.
    let sent: Vec<u8> =
        data(raw, "client", "egress").iter().filter(|e| !is_plaintext(e)).flat_map(|e| payload(e)).collect();
    let received: Vec<u8> =
        data(raw, "api", "ingress").iter().filter(|e| !is_plaintext(e)).flat_map(|e| payload(e)).collect();
    assert_eq!(sent, received, "client -> api ciphertext");

    // The plaintext: ssl_read in and ssl_write out only, one SSL object per end, from the
    // process of that end's exchanges.
    for (service, side) in [("api", &server), ("client", &client)] {
        let events: Vec<&Value> =
            raw.iter().filter(|e| e["kind"] == "data" && is_plaintext(e) && e["service"] == service).collect();
        assert!(!events.is_empty(), "{service}: no plaintext events");
        for e in &events {
            let want = if e["direction"] == "ingress" { "ssl_read" } else { "ssl_write" };
            assert_eq!(e["syscall"], want, "{service}: {e}");
            assert_eq!(e["pid"], side[0]["pid"], "{service}: plaintext from another process: {e}");
        }
        let objects: BTreeSet<String> = events.iter().map(|e| e["conn_id"].to_string()).collect();
        assert_eq!(objects.len(), 1, "{service}: one SSL object for one connection, got {objects:?}");
        assert!(!objects.contains(&server_conn.to_string()) && !objects.contains(&client_conn.to_string()));
    }
    let requests = plaintext(raw, "client", "egress");
    let responses = plaintext(raw, "api", "egress");
    assert_eq!(requests, plaintext(raw, "api", "ingress"), "the requests' plaintext, client -> api");
    assert_eq!(responses, plaintext(raw, "client", "ingress"), "the responses' plaintext, api -> client");
    // Each exchange's request line is in the plaintext, in order, and nothing more.
    let requests = String::from_utf8_lossy(&requests);
    assert_eq!(requests.matches(" HTTP/1.1\r\n").count(), server.len(), "request lines: {requests}");
    let mut at = 0;
    for e in &server {
        let line =
            format!("{} {} HTTP/1.1\r\n", e["method"].as_str().unwrap_or("?"), e["target"].as_str().unwrap_or("?"));
        let found =
            requests[at..].find(&line).unwrap_or_else(|| panic!("{line:?} not sent after byte {at}: {requests}"));
        at += found + line.len();
    }
    let statuses = String::from_utf8_lossy(&responses).matches("HTTP/1.1 ").count();
    assert_eq!(statuses, server.len(), "one status line per exchange in the plaintext");

    // Both ends of each exchange: the server span is the client span's child.
    for (s, c) in server.iter().zip(&client) {
        assert_eq!((&s["method"], &s["target"]), (&c["method"], &c["target"]));
        assert_eq!(s["trace_id"], c["trace_id"], "one trace: {s}\n{c}");
        assert_eq!(s["parent_span_id"], c["span_id"], "server under client: {s}\n{c}");
        assert_eq!(s["link"], "connection", "{s}");
    }
}

#[test]
fn https_keepalive_fixture() {
    scenario("https_keepalive");
}

pub(super) fn https_keepalive(x: &[Value], raw: &[Value]) {
    // httpx 0.28 (pinned by `cargo xtask setup`) encodes json= compactly; the app answers with
    // json.dumps defaults.
    let echo = serde_json::json!({"name": "traceo", "values": [1, 2, 3]}).to_string();
    let first = serde_json::json!({"title": "first"}).to_string();
    let second = serde_json::json!({"title": "second"}).to_string();
    let sent = String::from_utf8_lossy(&plaintext(raw, "client", "egress")).into_owned();
    for body in [&echo, &first, &second] {
        assert!(sent.contains(&format!("\r\n\r\n{body}")), "httpx did not send {body}: {sent}");
    }
    let (echo, first, second) = (echo.len() as u64, first.len() as u64, second.len() as u64);
    let created = format!(r#"{{"id": 1, "received": {first}}}"#).len() as u64;
    let got = r#"{"id": "7"}"#.len() as u64;
    let put = format!(r#"{{"id": "7", "received": {second}}}"#).len() as u64;
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
            want("api server", "POST /echo", "/echo", 200, echo, echo),
            want("api server", "POST /items", "/items", 201, first, created),
            want("api server", "GET /items/7", "/items/{id}", 200, 0, got),
            want("api server", "PUT /items/7", "/items/{id}", 200, second, put),
            want("api server", "DELETE /items/7", "/items/{id}", 204, 0, 0),
            want("api server", "GET /missing", UNMATCHED, 404, 0, NOT_FOUND),
        ]),
    );
    tls_connection(x, raw);
    for c in of(x, "client", "client") {
        assert!(c["user_agent"].as_str().is_some_and(|u| u.starts_with("python-httpx/")), "{c}");
    }
}

#[test]
fn curl_https_fixture() {
    scenario("curl_https");
}

pub(super) fn curl_https(x: &[Value], raw: &[Value]) {
    expect(
        x,
        &both_ends(vec![
            want("api server", "GET /hello", "/hello", 200, 0, HELLO),
            want("api server", "POST /upload", "/upload", 200, 3, upload_reply(3)),
            want("api server", "GET /status/404", UNMATCHED, 404, 0, STATUS),
            want("api server", "GET /stream", "/stream", 200, 0, stream_body()),
        ]),
    );
    tls_connection(x, raw);
    for c in of(x, "client", "client") {
        assert!(c["user_agent"].as_str().is_some_and(|u| u.starts_with("curl/")), "{c}");
    }
    // uvicorn wrote each /stream chunk with its own SSL_write (each then sent by a socket
    // write of its own: the memory BIO path holding writes until their socket write).
    let chunks = data(raw, "api", "egress").iter().filter(|e| is_plaintext(e) && text(e).contains("chunk ")).count();
    assert_eq!(chunks, 5, "one SSL_write per /stream chunk");
}
