//! Traffic that is not HTTP, or is broken, is counted and contained.

use crate::events::Direction;
use crate::http::{ParseErrorKind, TrackerConfig};

use super::script::*;

#[test]
fn non_http_connections_are_recognised_and_ignored() {
    let mut events = Vec::new();
    let streams: [(&str, &[u8]); 5] = [
        ("tls client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        ("postgres startup", b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
        ("redis", b"*1\r\n$4\r\nPING\r\n"),
        ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("lowercase junk", b"get / http/1.1\r\n\r\n"),
    ];
    for (i, (_, bytes)) in streams.iter().enumerate() {
        let mut s = Script::accepted(i as u64 + 1);
        s.recv(bytes).send(&ok("not really")).recv(&get("/not-parsed")).close();
        events.extend(s.take());
    }
    let (xs, stats) = run(&events);
    assert!(xs.is_empty(), "{:#?}", summary(&xs));
    assert_eq!(stats.non_http_connections, streams.len() as u64);
    assert_eq!(stats.total_parse_errors(), 0, "non-HTTP is not a parse error");
}

#[test]
fn detection_waits_for_enough_bytes() {
    let mut s = Script::accepted(1);
    s.pieces(Direction::Ingress, &get("/slow"), 1).send(&ok("ok"));
    let (xs, stats) = run(&s.take());
    assert_eq!(one(&xs).target, "/slow");
    assert_eq!(stats.non_http_connections, 0);
}

#[test]
fn oversized_head_is_an_error_and_other_connections_are_unaffected() {
    let mut huge = Script::accepted(1);
    huge.recv(b"GET /big HTTP/1.1\r\n");
    let filler = format!("X-Filler: {}\r\n", "f".repeat(1000));
    for _ in 0..70 {
        huge.recv(filler.as_bytes());
    }
    huge.recv(b"\r\n");
    let mut fine = Script::accepted(2);
    fine.recv(&get("/fine")).send(&ok("ok"));
    let mut events = huge.take();
    events.extend(fine.take());
    let (xs, stats) = run(&events);
    assert_eq!(stats.parse_errors(ParseErrorKind::HeaderTooLarge), 1);
    let fine_x = xs.iter().find(|x| x.conn_id == 2).unwrap_or_else(|| panic!("{:#?}", summary(&xs)));
    assert_eq!((fine_x.status, fine_x.flags.parse_error), (Some(200), false));
    let big = xs.iter().find(|x| x.conn_id == 1).unwrap_or_else(|| panic!("{:#?}", summary(&xs)));
    assert!(big.flags.parse_error && big.target == "/big", "{:?}", big.flags);
}

#[test]
fn bad_content_length_and_status_line_are_counted() {
    let mut s = Script::accepted(1);
    s.recv(b"POST /x HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n");
    s.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    s.recv(&get("/y"));
    s.send(b"HTTP/9.9 200 OK\r\n\r\n");
    s.recv(&get("/z")).send(&ok("z"));
    let (xs, stats) = run(&s.take());
    assert_eq!(stats.parse_errors(ParseErrorKind::BadContentLength), 1);
    assert_eq!(stats.parse_errors(ParseErrorKind::BadStatusLine), 1);
    let got: Vec<_> = xs.iter().map(|x| (x.target.as_str(), x.status, x.flags.parse_error)).collect();
    assert_eq!(got, vec![("/x", Some(400), true), ("/y", None, true), ("/z", Some(200), false)]);
}

#[test]
fn held_responses_are_bounded() {
    let cfg = TrackerConfig { max_buffer_bytes: 1024, ..Default::default() };
    let mut s = Script::accepted(1);
    // Responses with no request to answer pile up until the cap.
    for _ in 0..10 {
        s.send(&ok(&"r".repeat(200)));
    }
    s.recv(&get("/after")).send(&ok("a"));
    let (xs, stats) = run_with(cfg, &s.take());
    assert!(stats.parse_errors(ParseErrorKind::BufferFull) >= 1, "{stats:?}");
    let x = one(&xs);
    assert_eq!((x.target.as_str(), x.response_body_bytes), ("/after", Some(1)));
}

#[test]
fn pipelining_depth_is_bounded_without_losing_order() {
    let mut s = Script::accepted(1);
    let mut reqs = Vec::new();
    for i in 0..100 {
        reqs.extend(get(&format!("/p{i}")));
    }
    s.recv(&reqs);
    for i in 0..100 {
        s.send(&ok(&"x".repeat(i % 7)));
    }
    let (xs, stats) = run(&s.take());
    assert_eq!(xs.len(), 100);
    for (i, x) in xs.iter().enumerate() {
        assert_eq!((x.target.clone(), x.response_body_bytes), (format!("/p{i}"), Some((i % 7) as u64)));
    }
    assert_eq!(stats.total_parse_errors(), 0);
}

#[test]
fn udp_sockets_are_not_parsed() {
    let mut s = Script::accepted(1);
    if let Some(crate::events::Event::ConnOpen(c)) = s.events.first_mut() {
        c.sock_type = 2;
    }
    s.recv(&get("/dns?")).send(&ok(""));
    let (xs, stats) = run(&s.take());
    assert!(xs.is_empty());
    assert_eq!(stats.non_http_connections, 1);
}

/// The kernel lost an event of the connection (its next data event says so): the agent
/// never pairs a request with another's response, and flags what surrounds the loss.
#[test]
fn a_loss_resynchronises_the_connection_instead_of_mispairing() {
    for lost_response in [true, false] {
        let mut s = Script::accepted(1);
        s.recv(&get("/a"));
        // /a's response (or /b's request) went missing in the kernel.
        let next = if lost_response { get("/b") } else { status(404, "b") };
        s.recv_or_send_after_loss(!lost_response, &next);
        if lost_response {
            s.send(&status(201, "b"));
        }
        s.recv(&get("/c")).send(&status(202, "c")).recv(&get("/d")).send(&status(203, "d"));
        let (xs, stats) = run(&s.take());
        let got: Vec<(String, Option<u16>, bool)> =
            xs.iter().map(|x| (x.target.clone(), x.status, x.flags.after_loss)).collect();
        let mut expected = vec![("/a".to_owned(), None, true)];
        if lost_response {
            // /b was read after the loss: its own response, flagged as the first afresh.
            expected.push(("/b".to_owned(), Some(201), true));
            expected.push(("/c".to_owned(), Some(202), false));
        } else {
            // The response with no request left is counted, not paired with /c.
            expected.push(("/c".to_owned(), Some(202), true));
        }
        expected.push(("/d".to_owned(), Some(203), false));
        assert_eq!(got, expected, "lost response: {lost_response}");
        assert_eq!(stats.loss_resyncs, 1);
    }
}
