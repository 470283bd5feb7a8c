//! The client side of Node's inspector, just what the injection needs: `GET /json/list` for
//! the target's WebSocket path, a minimal WebSocket client (RFC 6455: the Upgrade handshake,
//! masked client text frames, server frames of any length), and `Runtime.evaluate` matched
//! by request id. Always talks to 127.0.0.1:`port`, never to the host a listing names.
//! Every read has a deadline.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// Largest HTTP answer or WebSocket message accepted (the listing and evaluate answers are
/// small; anything bigger is not an inspector).
const MAX_MESSAGE: u64 = 1 << 20;
/// Largest HTTP head accepted (the listing's and the WebSocket handshake's).
const MAX_HEAD: usize = 16 * 1024;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn connect(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr(port), timeout)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Read into `buf` with the socket's timeout shortened to what is left before `deadline`.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
    }
    stream.set_read_timeout(Some(left))?;
    stream.read(buf)
}

/// The WebSocket path of the first target in `GET /json/list` on 127.0.0.1:`port`.
pub fn debugger_path(port: u16, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(port, timeout).map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
    let request = format!("GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("inspector listing: {e}"))?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // The answer is complete once the headers and Content-Length bytes of body are in.
        if let Some((head_len, Some(length))) = http_head(&data) {
            if data.len() >= body_end(head_len, length)? {
                break;
            }
        }
        match read_some(&mut stream, &mut buf, deadline) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("inspector listing: {e}")),
        }
        if data.len() as u64 > MAX_MESSAGE || (data.len() > MAX_HEAD && http_head(&data).is_none()) {
            return Err("inspector listing too large: not Node's inspector".into());
        }
    }
    let (head_len, length) = http_head(&data).ok_or("inspector listing: no HTTP answer")?;
    let status = String::from_utf8_lossy(&data[..head_len]);
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err("inspector listing: not a 200 answer (is 127.0.0.1:9229 Node's inspector?)".into());
    }
    let end = match length {
        Some(length) => body_end(head_len, length)?.min(data.len()),
        None => data.len(),
    };
    parse_list(&data[head_len..end])
}

/// Where a body of `length` bytes (a Content-Length: whatever listens may send any number)
/// ends after a head of `head_len` bytes; one above [`MAX_MESSAGE`] is refused.
fn body_end(head_len: usize, length: usize) -> Result<usize, String> {
    if length as u64 > MAX_MESSAGE {
        return Err("inspector listing too large: not Node's inspector".into());
    }
    head_len.checked_add(length).ok_or_else(|| "inspector listing: Content-Length overflows".into())
}

/// Length of the HTTP head (through the blank line) and its Content-Length, once complete.
fn http_head(data: &[u8]) -> Option<(usize, Option<usize>)> {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&data[..end]);
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    });
    Some((end, length))
}

/// The path of `webSocketDebuggerUrl` in a `/json/list` body (a JSON array of targets; the
/// first `node` target, else the first with a URL).
pub fn parse_list(body: &[u8]) -> Result<String, String> {
    let list: Value = serde_json::from_slice(body).map_err(|_| "inspector listing is not JSON")?;
    let targets = list.as_array().ok_or("inspector listing is not a JSON array")?;
    let url = |t: &Value| t.get("webSocketDebuggerUrl").and_then(Value::as_str).map(str::to_owned);
    let url = targets
        .iter()
        .find(|t| t.get("type").and_then(Value::as_str) == Some("node"))
        .and_then(url)
        .or_else(|| targets.iter().find_map(url))
        .ok_or("inspector listing names no webSocketDebuggerUrl")?;
    let rest = url.strip_prefix("ws://").ok_or("webSocketDebuggerUrl is not ws://")?;
    let path = &rest[rest.find('/').ok_or("webSocketDebuggerUrl has no path")?..];
    if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err("webSocketDebuggerUrl has a malformed path".into());
    }
    Ok(path.to_owned())
}

/// WebSocket opcodes used here.
const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One client frame (FIN set, always masked as RFC 6455 requires of clients).
pub fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A frame's header: FIN, opcode, mask key if masked, payload length, header length. `None`
/// until `data` holds the whole header.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    pub head_len: usize,
}

pub fn decode_head(data: &[u8]) -> Option<FrameHead> {
    let (&b0, &b1) = (data.first()?, data.get(1)?);
    let (len, mut at) = match b1 & 0x7f {
        126 => (u16::from_be_bytes(data.get(2..4)?.try_into().ok()?) as u64, 4),
        127 => (u64::from_be_bytes(data.get(2..10)?.try_into().ok()?), 10),
        n => (n as u64, 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let key: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    Some(FrameHead { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, mask, len, head_len: at })
}

/// Header plus payload bytes of the frame `head` starts, when its payload and the `so_far`
/// bytes of message already joined stay within [`MAX_MESSAGE`] (the payload length is a
/// 64-bit number from the wire: checked before any arithmetic on it).
fn frame_total(head: &FrameHead, so_far: usize) -> Option<usize> {
    let joined = (so_far as u64).checked_add(head.len)?;
    if head.len > MAX_MESSAGE || joined > MAX_MESSAGE {
        return None;
    }
    head.head_len.checked_add(usize::try_from(head.len).ok()?)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SAFETY: writes at most N bytes into a local buffer of N bytes.
    let got = unsafe { libc::getrandom(out.as_mut_ptr().cast(), N, 0) };
    if got != N as isize {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        for (i, b) in out.iter_mut().enumerate() {
            *b = (t >> (8 * (i % 16))) as u8;
        }
    }
    out
}

/// A WebSocket session with the inspector.
pub struct Session {
    stream: TcpStream,
    /// Bytes read past the last frame.
    pending: Vec<u8>,
    next_id: u64,
}

impl Session {
    /// Open the WebSocket at `path` on 127.0.0.1:`port`.
    pub fn open(port: u16, path: &str, timeout: Duration) -> Result<Session, String> {
        let deadline = Instant::now() + timeout;
        let mut stream = connect(port, timeout).map_err(|e| format!("cannot connect to the inspector: {e}"))?;
        let key = base64(&random::<16>());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).map_err(|e| format!("inspector handshake: {e}"))?;
        let mut data = Vec::new();
        let mut buf = [0u8; 1024];
        let head_len = loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if data.len() > MAX_HEAD {
                return Err("inspector handshake: answer too large".into());
            }
            match read_some(&mut stream, &mut buf, deadline) {
                Ok(0) => return Err("inspector handshake: connection closed".into()),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("inspector handshake: {e}")),
            }
        };
        if !data.starts_with(b"HTTP/1.1 101") {
            return Err("inspector refused the WebSocket upgrade".into());
        }
        Ok(Session { stream, pending: data[head_len..].to_vec(), next_id: 1 })
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.stream.write_all(&encode_frame(opcode, payload, random::<4>()))
    }

    /// Make sure `pending` holds at least `n` bytes.
    fn fill(&mut self, n: usize, deadline: Instant) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while self.pending.len() < n {
            match read_some(&mut self.stream, &mut buf, deadline)? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "inspector closed the connection")),
                got => self.pending.extend_from_slice(&buf[..got]),
            }
        }
        Ok(())
    }

    /// The next text message (fragments joined); pings answered, other frames skipped.
    fn read_message(&mut self, deadline: Instant) -> io::Result<Vec<u8>> {
        let mut message = Vec::new();
        loop {
            let head = loop {
                if let Some(head) = decode_head(&self.pending) {
                    break head;
                }
                let want = self.pending.len() + 1;
                self.fill(want, deadline)?;
            };
            let total = frame_total(&head, message.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "inspector message too large"))?;
            self.fill(total, deadline)?;
            let mut payload: Vec<u8> = self.pending.drain(..total).skip(head.head_len).collect();
            if let Some(mask) = head.mask {
                payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
            }
            match head.opcode {
                TEXT | CONTINUATION => {
                    message.extend_from_slice(&payload);
                    if head.fin {
                        return Ok(message);
                    }
                }
                PING => self.send(PONG, &payload)?,
                CLOSE => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "inspector closed the session")),
                _ => {}
            }
        }
    }

    /// `Runtime.evaluate` of `expression`: the `result` object of the answer with our id
    /// (events and other answers are skipped).
    pub fn evaluate(&mut self, expression: &str, command_line_api: bool, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "includeCommandLineAPI": command_line_api, "returnByValue": true },
        });
        self.send(TEXT, request.to_string().as_bytes()).map_err(|e| format!("inspector: {e}"))?;
        loop {
            let message = self.read_message(deadline).map_err(|e| format!("inspector: {e}"))?;
            let Ok(answer) = serde_json::from_slice::<Value>(&message) else { continue };
            if answer.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if answer.get("error").is_some() {
                return Err("inspector refused Runtime.evaluate".into());
            }
            return answer.get("result").cloned().ok_or_else(|| "inspector answer has no result".into());
        }
    }

    /// Send `Runtime.evaluate` of `expression` and wait at most `timeout` for its answer
    /// (which may never come: `process._debugEnd()` closes the session).
    pub fn evaluate_briefly(&mut self, expression: &str, timeout: Duration) {
        let _ = self.evaluate(expression, false, timeout);
    }
}

/// The value of a by-value evaluate result, if it did not throw.
pub fn value(result: &Value) -> Option<&Value> {
    if result.get("exceptionDetails").is_some() {
        return None;
    }
    result.get("result")?.get("value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_each_length_form_masked() {
        let mask = [1, 2, 3, 4];
        let short = encode_frame(TEXT, b"abc", mask);
        assert_eq!(&short[..6], &[0x81, 0x83, 1, 2, 3, 4]);
        assert_eq!(&short[6..], &[b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
        for (len, head_len) in [(125usize, 6usize), (126, 8), (65535, 8), (65536, 14)] {
            let payload = vec![b'x'; len];
            let frame = encode_frame(TEXT, &payload, mask);
            let head = decode_head(&frame).expect("whole header");
            assert_eq!(head, FrameHead { fin: true, opcode: TEXT, mask: Some(mask), len: len as u64, head_len });
            assert_eq!(frame.len(), head_len + len);
            let back: Vec<u8> = frame[head_len..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(back, payload);
        }
    }

    #[test]
    fn server_frames_decode_and_wait_for_the_whole_header() {
        assert_eq!(
            decode_head(&[0x81, 0x05, b'h']),
            Some(FrameHead { fin: true, opcode: TEXT, mask: None, len: 5, head_len: 2 })
        );
        assert_eq!(
            decode_head(&[0x01, 126, 0x01, 0x00]),
            Some(FrameHead { fin: false, opcode: TEXT, mask: None, len: 256, head_len: 4 })
        );
        let mut long = vec![0x89, 127];
        long.extend_from_slice(&70000u64.to_be_bytes());
        assert_eq!(
            decode_head(&long),
            Some(FrameHead { fin: true, opcode: PING, mask: None, len: 70000, head_len: 10 })
        );
        assert_eq!(decode_head(&long[..9]), None);
        assert_eq!(decode_head(&[0x81]), None);
        assert_eq!(decode_head(&[0x81, 0x80, 1, 2]), None, "mask key incomplete");
    }

    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0u8; 16]).len(), 24);
    }

    #[test]
    fn listing_gives_the_node_targets_path() {
        let body = br#"[ {
  "description": "node.js instance",
  "devtoolsFrontendUrl": "devtools://devtools/bundled/js_app.html?experiments=true&v8only=true&ws=127.0.0.1:9229/0f2c936f-b1cd-4ac9-aab3-f63b0f33d55e",
  "id": "0f2c936f-b1cd-4ac9-aab3-f63b0f33d55e",
  "title": "front_node.js",
  "type": "node",
  "url": "file:///tmp/front_node.js",
  "webSocketDebuggerUrl": "ws://127.0.0.1:9229/0f2c936f-b1cd-4ac9-aab3-f63b0f33d55e"
} ]"#;
        assert_eq!(parse_list(body), Ok("/0f2c936f-b1cd-4ac9-aab3-f63b0f33d55e".to_owned()));
        assert!(parse_list(b"[]").is_err());
        assert!(parse_list(b"{}").is_err());
        assert!(parse_list(b"<html>").is_err());
        assert!(parse_list(br#"[{"webSocketDebuggerUrl": "http://x/y"}]"#).is_err());
        assert!(parse_list(br#"[{"webSocketDebuggerUrl": "ws://x/a b"}]"#).is_err());
    }

    #[test]
    fn http_head_is_complete_only_with_its_blank_line() {
        assert_eq!(http_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"), None);
        assert_eq!(http_head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]"), Some((38, Some(2))));
        assert_eq!(http_head(b"HTTP/1.1 200 OK\r\n\r\n"), Some((19, None)));
    }

    #[test]
    fn hostile_lengths_are_refused_without_overflow() {
        let max = MAX_MESSAGE as usize;
        assert_eq!(body_end(38, 2), Ok(40));
        assert_eq!(body_end(38, max), Ok(38 + max));
        assert!(body_end(38, max + 1).is_err());
        assert!(body_end(38, usize::MAX).is_err());
        assert!(body_end(usize::MAX, 1).is_err());
        let head = |len: u64| FrameHead { fin: true, opcode: TEXT, mask: None, len, head_len: 10 };
        assert_eq!(frame_total(&head(5), 0), Some(15));
        assert_eq!(frame_total(&head(MAX_MESSAGE), 0), Some(10 + max));
        assert_eq!(frame_total(&head(MAX_MESSAGE), 1), None, "fragments joined past the cap");
        assert_eq!(frame_total(&head(MAX_MESSAGE + 1), 0), None);
        assert_eq!(frame_total(&head(u64::MAX), 0), None);
        assert_eq!(frame_total(&head(u64::MAX), usize::MAX), None);
        assert_eq!(frame_total(&head(u64::MAX - 3), 5), None, "a sum that would wrap");
        assert_eq!(frame_total(&head(1), usize::MAX), None);
    }

    /// A one-connection server on 127.0.0.1 answering whatever it is sent with `answer`.
    fn hostile_server(answer: Vec<u8>) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(&answer);
            // Held open (not closed) so a client waiting for more runs into its own limits.
            std::thread::sleep(Duration::from_secs(3));
        });
        port
    }

    const SHORT: Duration = Duration::from_secs(2);

    #[test]
    fn a_hostile_listing_is_an_error_not_a_panic() {
        for length in [u64::MAX.to_string(), (usize::MAX - 10).to_string(), (MAX_MESSAGE + 1).to_string()] {
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n[]");
            let why = debugger_path(hostile_server(answer.into_bytes()), SHORT).expect_err("huge Content-Length");
            assert!(why.contains("too large"), "{why}");
        }
        // A head that never ends.
        let why = debugger_path(hostile_server(vec![b'a'; MAX_HEAD + 10]), SHORT).expect_err("endless head");
        assert!(why.contains("too large"), "{why}");
        // Not UTF-8, not HTTP, not JSON.
        let mut junk = b"HTTP/1.1 200 \xff\xfe\r\nContent-Length: 3\r\n\r\n".to_vec();
        junk.extend_from_slice(&[0xff, 0x00, 0xfe]);
        assert!(debugger_path(hostile_server(junk), SHORT).is_err());
        assert!(debugger_path(hostile_server(b"\x00\xff\r\n\r\n".to_vec()), SHORT).is_err());
        // A body shorter than its Content-Length, then closed.
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[]".to_vec();
        assert!(debugger_path(hostile_server(short), SHORT).is_err());
    }

    /// A session to a server whose handshake answer is followed by `frames`.
    fn hostile_session(frames: &[u8]) -> Session {
        let mut answer = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        answer.extend_from_slice(frames);
        Session::open(hostile_server(answer), "/x", SHORT).expect("handshake")
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        let mut frames = Vec::new();
        // 64-bit lengths that overflow any sum, above the cap, and just above it.
        for len in [u64::MAX, u64::MAX - 1, 1 << 63, MAX_MESSAGE + 1] {
            let mut frame = vec![0x81, 127];
            frame.extend_from_slice(&len.to_be_bytes());
            frames.push(frame);
        }
        // Masked (servers must not mask: accepted, not a panic) with an overflowing length.
        let mut masked = vec![0x81, 0x80 | 127];
        masked.extend_from_slice(&u64::MAX.to_be_bytes());
        masked.extend_from_slice(&[1, 2, 3, 4]);
        frames.push(masked);
        // Fragments whose joined length passes the cap.
        let mut fragments = Vec::new();
        for _ in 0..2 {
            fragments.extend_from_slice(&[0x01, 127]);
            fragments.extend_from_slice(&(MAX_MESSAGE / 2 + 1).to_be_bytes());
            fragments.resize(fragments.len() + (MAX_MESSAGE / 2 + 1) as usize, b'x');
        }
        frames.push(fragments);
        for frame in frames {
            let mut session = hostile_session(&frame);
            let why = session.read_message(Instant::now() + SHORT).expect_err("hostile frame");
            assert_eq!(why.kind(), io::ErrorKind::InvalidData, "{why}");
        }
        // Not UTF-8, not JSON, a masked reserved opcode, then a truncated frame: skipped or
        // errors until the deadline, never a panic.
        let mut junk = vec![0x81, 3, 0xff, 0xfe, 0x00, 0x83, 0x81, 9, 9, 9, 9, b'z', 0x81, 126, 0x00];
        junk.extend_from_slice(&[0x81, 20, b'{']);
        let mut session = hostile_session(&junk);
        assert!(session.evaluate("1", false, Duration::from_millis(300)).is_err());
    }

    #[test]
    fn evaluate_values_hide_exceptions() {
        let ok = json!({"result": {"type": "string", "value": "injected"}});
        assert_eq!(value(&ok), Some(&json!("injected")));
        let thrown = json!({"result": {"type": "object"}, "exceptionDetails": {"text": "Uncaught"}});
        assert_eq!(value(&thrown), None);
    }
}
