//! Property tests: no input panics, and splitting never changes what is reconstructed.

use proptest::prelude::*;

use crate::events::{Direction, Event, OpenHow, Syscall};

use super::script::*;

/// Cut `bytes` at the given (sorted, deduplicated) offsets.
fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// One generated exchange: request and response bytes, and what should come out.
#[derive(Clone, Debug)]
struct Case {
    request: Vec<u8>,
    response: Vec<u8>,
    want: Summary,
}

fn encode_body(body: &[u8], chunked: bool, chunk: usize) -> (String, Vec<u8>) {
    if !chunked {
        return (format!("Content-Length: {}\r\n", body.len()), body.to_vec());
    }
    let mut wire = Vec::new();
    for piece in body.chunks(chunk.max(1)) {
        wire.extend(format!("{:x}\r\n", piece.len()).into_bytes());
        wire.extend(piece);
        wire.extend(b"\r\n");
    }
    wire.extend(b"0\r\n\r\n");
    ("Transfer-Encoding: chunked\r\n".to_string(), wire)
}

prop_compose! {
    fn case()(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        path in "/[a-z]{1,8}(/[0-9]{1,4})?",
        status in prop::sample::select(vec![200u16, 201, 202, 400, 404, 500]),
        req_body in prop::collection::vec(any::<u8>(), 0..300),
        resp_body in prop::collection::vec(any::<u8>(), 0..600),
        req_chunked in any::<bool>(),
        resp_chunked in any::<bool>(),
        chunk in 1usize..64,
    ) -> Case {
        let req_body = if method == "GET" || method == "DELETE" { Vec::new() } else { req_body };
        let (req_framing, req_wire) = encode_body(&req_body, req_chunked && !req_body.is_empty(), chunk);
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: h\r\n{req_framing}\r\n").into_bytes();
        request.extend(req_wire);
        let (resp_framing, resp_wire) = encode_body(&resp_body, resp_chunked, chunk);
        let mut response = format!("HTTP/1.1 {status} S\r\n{resp_framing}\r\n").into_bytes();
        response.extend(resp_wire);
        Case {
            request,
            response,
            want: (method.to_string(), path, Some(status), req_body.len() as u64, Some(resp_body.len() as u64)),
        }
    }
}

/// Pieces of HTTP that drive the state machines into their corners when shuffled.
const FRAGMENTS: [&[u8]; 16] = [
    b"GET / HTTP/1.1\r\n",
    b"HEAD /h HTTP/1.1\r\n",
    b"CONNECT x:1 HTTP/1.1\r\n",
    b"POST /p HTTP/1.0\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\n",
    b"HTTP/1.1 204 N\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: websocket\r\n",
    b"\r\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn arbitrary_bytes_never_panic(
        streams in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..200), 0u64..400),
            1..30,
        ),
        how in prop::sample::select(vec![None, Some(OpenHow::Accepted), Some(OpenHow::Existing)]),
        http_prefix in any::<bool>(),
    ) {
        let mut s = match how { Some(h) => Script::opened(1, h), None => Script::unseen(1) };
        if http_prefix {
            s.recv(b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        }
        for (egress, bytes, extra) in &streams {
            let dir = if *egress { Direction::Egress } else { Direction::Ingress };
            // Sometimes the capture is short of what moved, sometimes the read is an EOF.
            s.data(dir, bytes, bytes.len() as u64 + extra % 3 * extra, Syscall::Read);
        }
        let (xs, stats) = run(&s.take());
        prop_assert!(stats.exchanges == xs.len() as u64);
    }

    #[test]
    fn splitting_does_not_change_the_conversation(
        cases in prop::collection::vec(case(), 1..6),
        cuts_in in prop::collection::vec(any::<usize>(), 0..40),
        cuts_out in prop::collection::vec(any::<usize>(), 0..40),
        client in any::<bool>(),
    ) {
        let want: Vec<_> = cases.iter().map(|c| c.want.clone()).collect();
        let (req_dir, resp_dir) = if client {
            (Direction::Egress, Direction::Ingress)
        } else {
            (Direction::Ingress, Direction::Egress)
        };
        let how = if client { OpenHow::Connected } else { OpenHow::Accepted };
        // Whole messages, one syscall each.
        let mut whole = Script::opened(1, how);
        for c in &cases {
            whole.data(req_dir, &c.request, c.request.len() as u64, Syscall::Read);
            whole.data(resp_dir, &c.response, c.response.len() as u64, Syscall::Read);
        }
        // The same bytes cut anywhere (across message boundaries too).
        let all_req: Vec<u8> = cases.iter().flat_map(|c| c.request.clone()).collect();
        let all_resp: Vec<u8> = cases.iter().flat_map(|c| c.response.clone()).collect();
        let mut split = Script::opened(2, how);
        let reqs = split_at(&all_req, &cuts_in);
        let resps = split_at(&all_resp, &cuts_out);
        // Requests first (pipelined), then responses: FIFO pairing must hold.
        for piece in reqs {
            split.data(req_dir, piece, piece.len() as u64, Syscall::Read);
        }
        for piece in resps {
            split.data(resp_dir, piece, piece.len() as u64, Syscall::Read);
        }
        let mut events: Vec<Event> = whole.take();
        events.extend(split.take());
        let (xs, stats) = run(&events);
        let by_conn = |id| summary(&xs.iter().filter(|x| x.conn_id == id).cloned().collect::<Vec<_>>());
        prop_assert_eq!(&by_conn(1), &want);
        prop_assert_eq!(&by_conn(2), &want);
        prop_assert_eq!(stats.total_parse_errors(), 0);
    }

    #[test]
    fn shuffled_http_fragments_never_panic(
        steps in prop::collection::vec((any::<bool>(), 0usize..FRAGMENTS.len(), 0u64..3, 0usize..4), 1..60),
        how in prop::sample::select(vec![None, Some(OpenHow::Accepted), Some(OpenHow::Connected), Some(OpenHow::Existing)]),
        max_buffer in prop::sample::select(vec![64usize, 1024, 256 * 1024]),
    ) {
        let mut s = match how { Some(h) => Script::opened(1, h), None => Script::unseen(1) };
        for (egress, frag, lost, repeat) in &steps {
            let dir = if *egress { Direction::Egress } else { Direction::Ingress };
            let bytes = FRAGMENTS[*frag].repeat(repeat + 1);
            s.data(dir, &bytes, bytes.len() as u64 + lost * 7, Syscall::Read);
        }
        s.close();
        let cfg = crate::http::TrackerConfig { max_buffer_bytes: max_buffer, ..Default::default() };
        let (xs, stats) = run_with(cfg, &s.take());
        prop_assert_eq!(stats.exchanges, xs.len() as u64);
        prop_assert_eq!(stats.active_connections, 0);
        for x in &xs {
            prop_assert!(x.response_body_prefix.len() <= 4096 && x.request_body_prefix.len() <= 4096);
        }
    }
}
