//! How messages end: lengths, chunks, close, bodyless responses, interim responses,
//! protocol switches, uncaptured bytes.

use crate::events::Direction;
use crate::http::ParseErrorKind;

use super::script::*;

#[test]
fn keep_alive_carries_many_exchanges() {
    let mut s = Script::accepted(1);
    for i in 0..5 {
        s.recv(&post(&format!("/items/{i}"), &"x".repeat(i)));
        s.send(&ok(&"y".repeat(10 * i)));
    }
    s.close();
    let (xs, stats) = run(&s.take());
    let got = summary(&xs);
    let want: Vec<_> =
        (0..5u64).map(|i| ("POST".to_string(), format!("/items/{i}"), Some(200), i, Some(10 * i))).collect();
    assert_eq!(got, want);
    assert_eq!(stats.exchanges, 5);
    assert_eq!(stats.total_parse_errors(), 0);
    assert!(xs.iter().all(|x| &*x.route == "/items/{id}" && x.flags.names().is_empty()), "{xs:#?}");
}

#[test]
fn chunked_bodies_with_trailers_both_ways() {
    let mut s = Script::accepted(1);
    s.recv(b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    s.recv(b"6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n");
    s.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n");
    s.recv(&get("/next")).send(&ok("z"));
    let (xs, stats) = run(&s.take());
    assert_eq!(
        summary(&xs),
        vec![
            ("POST".into(), "/up".into(), Some(200), 11, Some(3)),
            ("GET".into(), "/next".into(), Some(200), 0, Some(1)),
        ]
    );
    assert_eq!(xs[0].request_body_prefix, b"hello world", "decoded body prefix");
    assert_eq!(xs[0].response_body_prefix, b"abc");
    assert_eq!(stats.total_parse_errors(), 0);
}

#[test]
fn response_without_length_ends_at_close() {
    let mut s = Script::accepted(1);
    s.recv(b"GET /old HTTP/1.0\r\n\r\n");
    s.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>");
    s.send(b"</html>");
    let before_close = s.now_ns;
    s.close();
    let (xs, _) = run(&s.take());
    let x = one(&xs);
    assert_eq!((x.status, x.response_body_bytes), (Some(200), Some(13)));
    assert!(!x.flags.truncated, "read-until-close is complete at close");
    assert!(x.response_last_ns.is_some_and(|t| t < before_close), "last byte is the last write, not the close");
}

#[test]
fn client_response_without_length_ends_at_peer_eof() {
    let mut s = Script::connected(1);
    s.send(&get("/stream"));
    s.recv(b"HTTP/1.1 200 OK\r\n\r\npart1");
    s.recv(b"part2");
    s.peer_eof();
    // Without flushing at EOF the exchange would only appear at close; stop here.
    let events = s.take();
    let mut tracker = crate::http::ConnTracker::new(Default::default());
    let mut xs = Vec::new();
    for ev in &events {
        tracker.handle(&mut ev.clone(), &mut |x| xs.extend(x.into_exchange().map(|x| *x)));
    }
    let x = one(&xs);
    assert_eq!((x.status, x.response_body_bytes), (Some(200), Some(10)));
    assert_eq!(x.role.as_str(), "client");
}

#[test]
fn head_204_304_have_no_body_even_with_content_length() {
    let mut s = Script::accepted(1);
    s.recv(b"HEAD /file HTTP/1.1\r\n\r\n");
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n");
    s.recv(b"DELETE /file/1 HTTP/1.1\r\n\r\n");
    s.send(b"HTTP/1.1 204 No Content\r\n\r\n");
    s.recv(b"GET /file HTTP/1.1\r\nIf-None-Match: \"a\"\r\n\r\n");
    s.send(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n");
    s.recv(&get("/after")).send(&ok("done"));
    let (xs, stats) = run(&s.take());
    let statuses: Vec<_> = xs.iter().map(|x| (&*x.method, x.status, x.response_body_bytes)).collect();
    assert_eq!(
        statuses,
        vec![
            ("HEAD", Some(200), Some(0)),
            ("DELETE", Some(204), Some(0)),
            ("GET", Some(304), Some(0)),
            ("GET", Some(200), Some(4)),
        ]
    );
    assert_eq!(stats.total_parse_errors(), 0);
}

#[test]
fn continue_100_is_not_the_final_response() {
    let mut s = Script::accepted(1);
    s.recv(b"PUT /data HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    s.send(b"HTTP/1.1 100 Continue\r\n\r\n");
    s.recv(b"abcd");
    s.send(&status(201, "made"));
    let (xs, stats) = run(&s.take());
    assert_eq!(summary(&xs), vec![("PUT".into(), "/data".into(), Some(201), 4, Some(4))]);
    assert_eq!(stats.unpaired_responses, 0);
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut s = Script::accepted(1);
    let mut reqs = get("/a");
    reqs.extend(post("/b", "12345"));
    reqs.extend(get("/c"));
    s.recv(&reqs);
    let mut resps = status(200, "A");
    resps.extend(status(201, "BB"));
    resps.extend(status(404, "CCC"));
    s.send(&resps);
    let (xs, _) = run(&s.take());
    assert_eq!(
        summary(&xs),
        vec![
            ("GET".into(), "/a".into(), Some(200), 0, Some(1)),
            ("POST".into(), "/b".into(), Some(201), 5, Some(2)),
            ("GET".into(), "/c".into(), Some(404), 0, Some(3)),
        ]
    );
}

#[test]
fn byte_by_byte_equals_whole() {
    let mut wire_in = post("/x", "{\"a\":1}");
    wire_in.extend(get("/y"));
    let mut wire_out = ok("first");
    wire_out.extend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n");
    let mut whole = Script::accepted(1);
    whole.recv(&wire_in).send(&wire_out);
    let mut split = Script::accepted(1);
    split.pieces(Direction::Ingress, &wire_in, 1).pieces(Direction::Egress, &wire_out, 1);
    let (a, _) = run(&whole.take());
    let (b, stats) = run(&split.take());
    assert_eq!(summary(&a).len(), 2);
    assert_eq!(summary(&a), summary(&b));
    assert_eq!(stats.total_parse_errors(), 0);
}

#[test]
fn server_sent_events_end_at_last_chunk_with_ttfb() {
    let mut s = Script::connected(1);
    s.send(&get("/events"));
    let sent_ns = s.now_ns - STEP_NS;
    s.now_ns += 5_000_000; // the server thinks for 5 ms
    s.recv(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
    for i in 0..3 {
        s.now_ns += 100_000_000; // an event every 100 ms
        let ev = format!("data: {i}\n\n");
        s.recv(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
    }
    s.recv(b"0\r\n\r\n");
    let (xs, _) = run(&s.take());
    let x = one(&xs);
    assert_eq!(x.content_type(), Some("text/event-stream"));
    assert_eq!(x.response_body_bytes, Some(3 * 9));
    let ttfb = x.ttfb_ns().unwrap_or_else(|| panic!("ttfb"));
    let duration = x.duration_ns().unwrap_or_else(|| panic!("duration"));
    assert_eq!(x.request_first_ns, sent_ns, "client request starts at the write's entry");
    assert!((5_000_000..6_000_000).contains(&ttfb), "ttfb {ttfb}");
    assert!(duration > 300_000_000 && duration < 400_000_000, "duration {duration}");
}

#[test]
fn upgrade_101_stops_parsing() {
    let mut s = Script::accepted(1);
    s.recv(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    s.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
    s.recv(b"\x81\x85garbagebytes");
    s.send(b"\x81\x02hi");
    s.close();
    let (xs, stats) = run(&s.take());
    let x = one(&xs);
    assert_eq!(x.status, Some(101));
    assert!(x.flags.upgraded, "{:?}", x.flags);
    assert_eq!(stats.total_parse_errors(), 0);
    assert_eq!(stats.non_http_connections, 0);
}

#[test]
fn connect_tunnel_stops_parsing_but_refusal_does_not() {
    let mut s = Script::connected(1);
    s.send(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n");
    // Seen before the proxy's answer: must wait for it, not parse as a request.
    s.send(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03");
    s.recv(b"HTTP/1.1 200 Connection Established\r\n\r\n");
    s.recv(b"\x16\x03\x03\x00\x5d\x02");
    let mut refused = Script::connected(2);
    refused.send(b"CONNECT blocked:443 HTTP/1.1\r\n\r\n");
    refused.recv(&status(403, "no"));
    refused.send(&get("/plain")).recv(&ok("yes"));
    let mut events = s.take();
    events.extend(refused.take());
    let (xs, stats) = run(&events);
    let got: Vec<_> = xs.iter().map(|x| (x.conn_id, x.target.as_str(), x.status, x.flags.upgraded)).collect();
    assert_eq!(
        got,
        vec![
            (1, "api.example.com:443", Some(200), true),
            (2, "blocked:443", Some(403), false),
            (2, "/plain", Some(200), false),
        ]
    );
    assert_eq!(stats.total_parse_errors(), 0);
}

#[test]
fn sendfile_body_is_counted_by_length() {
    let mut s = Script::accepted(1);
    s.recv(&get("/big.iso"));
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n");
    s.sendfile(600_000).sendfile(400_000);
    s.recv(&get("/next")).send(&ok("n"));
    let (xs, stats) = run(&s.take());
    assert_eq!(
        summary(&xs),
        vec![
            ("GET".into(), "/big.iso".into(), Some(200), 0, Some(1_000_000)),
            ("GET".into(), "/next".into(), Some(200), 0, Some(1)),
        ]
    );
    assert!(xs[0].flags.truncated && !xs[1].flags.truncated);
    assert_eq!(stats.total_parse_errors(), 0);
}

#[test]
fn truncated_capture_of_large_body_keeps_framing() {
    let body = "b".repeat(100_000);
    let mut s = Script::accepted(1);
    s.recv(&get("/report"));
    // One write carries head and body; only the first 256 bytes were captured.
    s.send_truncated(&ok(&body), 256);
    s.recv(&post("/next", "{}")).send(&ok("fine"));
    let (xs, stats) = run(&s.take());
    assert_eq!(
        summary(&xs),
        vec![
            ("GET".into(), "/report".into(), Some(200), 0, Some(100_000)),
            ("POST".into(), "/next".into(), Some(200), 2, Some(4)),
        ]
    );
    assert!(xs[0].flags.truncated);
    assert!(xs[0].response_body_prefix.iter().all(|&b| b == b'b') && !xs[0].response_body_prefix.is_empty());
    assert_eq!(stats.total_parse_errors(), 0);
}

#[test]
fn lost_bytes_inside_a_head_resync_at_next_request() {
    let mut s = Script::accepted(1);
    // The capture stops inside the request head; the rest of the head is lost.
    s.data(Direction::Ingress, b"GET /a HTTP/1.1\r\nHo", 200, crate::events::Syscall::Read);
    s.send(&ok("a"));
    s.recv(&get("/b")).send(&ok("b"));
    let (xs, stats) = run(&s.take());
    assert_eq!(stats.parse_errors(ParseErrorKind::LostBytesInHeaders), 1);
    let b = xs.iter().find(|x| x.target == "/b").unwrap_or_else(|| panic!("{:#?}", summary(&xs)));
    assert_eq!((b.status, b.response_body_bytes), (Some(200), Some(1)));
    assert!(stats.midstream_resyncs >= 1);
}

#[test]
fn invalid_chunk_size_is_a_parse_error() {
    let mut s = Script::accepted(1);
    s.recv(&get("/c"));
    s.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnope\r\n0\r\n\r\n");
    s.recv(&get("/d")).send(&ok("d"));
    let (xs, stats) = run(&s.take());
    assert_eq!(stats.parse_errors(ParseErrorKind::BadChunkSize), 1);
    let c = xs.iter().find(|x| x.target == "/c").unwrap_or_else(|| panic!("{:#?}", summary(&xs)));
    assert!(c.flags.parse_error && c.status == Some(200), "{:?}", c.flags);
    let d = xs.iter().find(|x| x.target == "/d").unwrap_or_else(|| panic!("{:#?}", summary(&xs)));
    assert_eq!(d.status, Some(200), "the connection recovers");
}

/// Each message knows the TCP sequence number of its first byte, also when it starts inside
/// a read (pipelining), after uncaptured bytes, or with the numbers wrapping past 2^32.
#[test]
fn every_message_knows_its_first_bytes_tcp_sequence_number() {
    let (sent0, received0) = (u32::MAX - 20, 7_000);
    let mut s = Script::accepted(1);
    s.with_tcp_seq(sent0, received0);
    let (a, b, c) = (get("/a"), post("/b", "12345"), get("/c"));
    s.recv(&[a.clone(), b.clone()].concat());
    s.pieces(Direction::Ingress, &c, 3);
    let (ra, rb) = (status(200, "A"), status(201, "BB"));
    s.send(&ra);
    s.send_truncated(&rb, 4);
    let rc = status(404, "CCC");
    s.send(&rc);
    let (xs, _) = run(&s.take());
    let n = |v: &[u8]| v.len() as u32;
    let want = [
        [received0, sent0],
        [received0 + n(&a), sent0.wrapping_add(n(&ra))],
        [received0 + n(&a) + n(&b), sent0.wrapping_add(n(&ra) + n(&rb))],
    ];
    let got: Vec<_> = xs.iter().map(|x| x.tcp_seq).collect();
    assert_eq!(got, want.map(Some), "{xs:#?}");
    // Without numbers from the kernel there are none.
    let mut s = Script::accepted(2);
    s.recv(&a).send(&ra);
    assert_eq!(run(&s.take()).0[0].tcp_seq, None);
}
