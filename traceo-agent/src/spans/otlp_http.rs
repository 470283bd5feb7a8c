//! OTLP/HTTP with protobuf bodies (`--otlp-protocol http/protobuf`): each export request is
//! one HTTP/1.1 POST on a kept-alive connection. Measured beside OTLP/gRPC under load, gRPC
//! cost the agent more per span than encoding it: HTTP/2 sends a 256 KiB request in 16 KiB
//! frames through 64 KiB flow-control windows the collector reopens, each a wake-up of the
//! exporter thread; here the request is one `writev` of the head and the span blocks as they
//! are (more only when the socket takes less, or past 1,024 buffers in one call).

use std::io::IoSlice;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A response head larger than this is refused (a collector's is a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;
/// A response body larger than this is refused (an export response is a few bytes, more
/// only with a partial-success message).
const MAX_BODY: usize = 1 << 20;
/// Idle connections kept for reuse (one per request in flight at most).
const MAX_IDLE: usize = 4;

/// Why a request failed, as the exporter logs it.
#[derive(Debug)]
pub struct Failure(pub String);

impl Failure {
    fn io(what: &str, e: std::io::Error) -> Failure {
        Failure(format!("{what}: {e}"))
    }
}

/// An OTLP/HTTP collector: where to connect, and the connections kept alive.
pub struct HttpCollector {
    /// `host:port`, to connect to and for the Host header.
    authority: String,
    /// The URL's path before `/v1/traces` (empty, or e.g. `/otlp`).
    prefix: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<TcpStream>>,
}

impl HttpCollector {
    /// `http://host:port[/prefix]`; `https` is refused (no TLS in this build).
    pub fn new(url: &str, connect_timeout: Duration) -> anyhow::Result<HttpCollector> {
        let url = url.trim();
        let rest = super::transport::without_http_scheme(url)?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.is_empty() || !authority.contains(':') {
            anyhow::bail!("OTLP endpoint {url}: expected http://HOST:PORT (OTLP/HTTP's usual port is 4318)");
        }
        let prefix = path.trim_end_matches('/');
        // A signal's full URL given as the endpoint: its path is added per signal.
        let prefix = prefix.strip_suffix("/v1/traces").or(prefix.strip_suffix("/v1/logs")).unwrap_or(prefix);
        Ok(HttpCollector {
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// POST `body` (its chunks one after another) to the signal's `path` (`/v1/traces`); the
    /// response body of a 2xx answer.
    pub async fn post(&self, path: &str, body: &[Vec<u8>]) -> Result<Vec<u8>, Failure> {
        let head = format!(
            "POST {}{path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            self.prefix,
            self.authority,
            body.iter().map(Vec::len).sum::<usize>()
        );
        // A kept connection whose sending failed goes once more on a new connection: the
        // collector cannot have taken a request it did not get whole. Once sent, a request is
        // never sent again (the collector may have taken it before the connection broke):
        // its spans are counted lost rather than maybe exported twice.
        if let Some(conn) = self.take_idle() {
            match exchange(conn, head.as_bytes(), body).await {
                Ok(answer) => return self.answered(answer),
                Err((e, Sent::Whole)) => return Err(e),
                Err((_, Sent::NotWhole)) => {}
            }
        }
        let conn = self.connect().await?;
        match exchange(conn, head.as_bytes(), body).await {
            Ok(answer) => self.answered(answer),
            Err((e, _)) => Err(e),
        }
    }

    /// A kept connection still open; those the collector closed while idle are let go.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::iter::from_fn(|| idle.pop()).find(still_open)
    }

    fn answered(&self, answer: Answer) -> Result<Vec<u8>, Failure> {
        if let Some(conn) = answer.reusable {
            let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        if (200..300).contains(&answer.status) {
            return Ok(answer.body);
        }
        // A collector's error body is a protobuf Status or text: its printable part helps.
        let text: String = String::from_utf8_lossy(&answer.body[..answer.body.len().min(200)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        Err(Failure(format!("HTTP {} {}", answer.status, text.trim())))
    }

    async fn connect(&self) -> Result<TcpStream, Failure> {
        let conn = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| Failure(format!("connect to {}: timed out", self.authority)))?
            .map_err(|e| Failure::io(&format!("connect to {}", self.authority), e))?;
        // The head and body go in one write; nothing is left for Nagle to hold.
        let _ = conn.set_nodelay(true);
        Ok(conn)
    }
}

/// Whether an idle connection may carry a request: nothing to read (a byte there would be
/// an answer to nothing, an end of file the collector's close). Asked of the socket itself,
/// not of the runtime's readiness, which may not have seen the close yet.
fn still_open(conn: &TcpStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local on an open socket this stream owns.
    let n = unsafe { libc::recv(conn.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// How far a failed request got.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sent {
    /// Its bytes did not all reach the socket: the collector cannot have taken it.
    NotWhole,
    Whole,
}

/// A response read whole, and its connection if it may carry another request.
struct Answer {
    status: u16,
    body: Vec<u8>,
    reusable: Option<TcpStream>,
}

/// Send one request and read its response; an error says whether the request was sent.
async fn exchange(mut conn: TcpStream, head: &[u8], body: &[Vec<u8>]) -> Result<Answer, (Failure, Sent)> {
    if let Err(e) = write_all_vectored(&mut conn, head, body).await {
        return Err((Failure::io("send", e), Sent::NotWhole));
    }
    let failed = |why: Failure| (why, Sent::Whole);
    let io = |e| failed(Failure::io("read", e));
    // The head, past any interim (1xx) answers.
    let mut buf = Vec::with_capacity(1024);
    let (status, length, close, head_len) = loop {
        if let Some(parsed) = parse_head(&buf).map_err(failed)? {
            if !(100..200).contains(&parsed.0) || parsed.0 == 101 {
                break parsed;
            }
            buf.drain(..parsed.3);
            continue;
        }
        if buf.len() >= MAX_HEAD {
            return Err(failed(Failure(format!("response head longer than {MAX_HEAD} bytes"))));
        }
        if read_some(&mut conn, &mut buf, MAX_HEAD).await.map_err(io)? == 0 {
            return Err(failed(Failure("the collector closed the connection before answering".into())));
        }
    };
    let mut body_bytes = buf.split_off(head_len);
    let reusable = match length {
        BodyLength::Known(n) => {
            if n > MAX_BODY {
                return Err(failed(Failure(format!("response body of {n} bytes (at most {MAX_BODY} read)"))));
            }
            while body_bytes.len() < n {
                let got = read_some(&mut conn, &mut body_bytes, n).await.map_err(io)?;
                if got == 0 {
                    return Err(failed(Failure("the collector closed the connection mid-answer".into())));
                }
            }
            body_bytes.truncate(n);
            !close
        }
        BodyLength::Chunked => {
            let mut raw = body_bytes;
            body_bytes = loop {
                match dechunk(&raw).map_err(failed)? {
                    Some(body) => break body,
                    None if raw.len() >= MAX_BODY => {
                        return Err(failed(Failure(format!("chunked response over {MAX_BODY} bytes"))));
                    }
                    None => {
                        let got = read_some(&mut conn, &mut raw, MAX_BODY).await.map_err(io)?;
                        if got == 0 {
                            return Err(failed(Failure("the collector closed the connection mid-answer".into())));
                        }
                    }
                }
            };
            !close
        }
        BodyLength::ToClose => {
            while read_some(&mut conn, &mut body_bytes, MAX_BODY).await.map_err(io)? > 0 {
                if body_bytes.len() >= MAX_BODY {
                    return Err(failed(Failure(format!("response body over {MAX_BODY} bytes"))));
                }
            }
            false
        }
    };
    Ok(Answer { status, body: body_bytes, reusable: reusable.then_some(conn) })
}

/// The head and the body's chunks, written from where they are (the kernel copies each
/// byte once, straight from the pipeline's span blocks).
async fn write_all_vectored(conn: &mut TcpStream, head: &[u8], body: &[Vec<u8>]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> =
        std::iter::once(head).chain(body.iter().map(Vec::as_slice)).map(IoSlice::new).collect();
    let mut rest = &mut slices[..];
    // Empty chunks are skipped, so an empty `rest` is all written.
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        let n = conn.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Read what is there into `buf`, up to `limit` bytes in all.
async fn read_some(conn: &mut TcpStream, buf: &mut Vec<u8>, limit: usize) -> std::io::Result<usize> {
    let room = limit.saturating_sub(buf.len()).clamp(1, 64 * 1024);
    let at = buf.len();
    buf.resize(at + room, 0);
    let n = conn.read(&mut buf[at..]).await;
    buf.truncate(at + *n.as_ref().unwrap_or(&0));
    n
}

#[derive(Debug, PartialEq)]
enum BodyLength {
    Known(usize),
    Chunked,
    ToClose,
}

/// (status, body length, `Connection: close`, head length) once the head is complete.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, BodyLength, bool, usize)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure(format!("unreadable response from the collector: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut length = BodyLength::ToClose;
    let (mut chunked, mut close) = (false, resp.version == Some(0));
    let tokens = |v: &str, token: &str| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token));
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value.parse().map_err(|_| Failure(format!("bad Content-Length {value:?}")))?;
            length = BodyLength::Known(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= tokens(value, "chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= tokens(value, "close");
        }
    }
    // Chunked framing wins over a length (RFC 9112 6.3).
    if chunked {
        length = BodyLength::Chunked;
    }
    // No body, whatever the headers say; after 101 the connection speaks something else.
    if status == 204 || status == 304 || (100..200).contains(&status) {
        length = BodyLength::Known(0);
    }
    close |= status == 101;
    Ok(Some((status, length, close, head_len)))
}

/// A chunked body's content, once its last chunk is in `raw` (trailers ignored).
fn dechunk(raw: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = memchr::memmem::find(&raw[at..], b"\r\n") else { return Ok(None) };
        let line = std::str::from_utf8(&raw[at..at + eol]).unwrap_or("");
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .ok()
            .filter(|&n| n <= MAX_BODY)
            .ok_or_else(|| Failure(format!("bad chunk size {size:?}")))?;
        at += eol + 2;
        if size == 0 {
            // Then trailer lines, if any, and an empty line.
            let rest = &raw[at..];
            let done = rest.starts_with(b"\r\n") || memchr::memmem::find(rest, b"\r\n\r\n").is_some();
            return Ok(done.then_some(body));
        }
        if raw.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_a_base_url_or_a_signal_url() {
        let c = HttpCollector::new("http://collector:4318", Duration::from_secs(1)).expect("base");
        assert_eq!((c.authority.as_str(), c.prefix.as_str()), ("collector:4318", ""));
        let c = HttpCollector::new("collector:4318/otlp/v1/traces", Duration::from_secs(1)).expect("signal");
        assert_eq!((c.authority.as_str(), c.prefix.as_str()), ("collector:4318", "/otlp"));
        let e = HttpCollector::new("https://c:4318", Duration::from_secs(1)).err().expect("https refused");
        assert!(e.to_string().contains("TLS is not supported"), "{e}");
        assert!(HttpCollector::new("http://collector", Duration::from_secs(1)).is_err(), "a port is needed");
    }

    #[test]
    fn heads_give_the_status_and_how_the_body_ends() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").ok().flatten(), None);
        let (s, len, close, n) =
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc").ok().flatten().expect("complete");
        assert_eq!((s, len, close, n), (200, BodyLength::Known(3), false, 38));
        let (s, len, close, _) =
            parse_head(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                .ok()
                .flatten()
                .expect("complete");
        assert_eq!((s, len, close), (503, BodyLength::Chunked, true));
        let (_, len, close, _) = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").ok().flatten().expect("complete");
        assert_eq!((len, close), (BodyLength::ToClose, true), "HTTP/1.0 ends its body with the connection");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        let (_, len, close, _) =
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: keep-alive, close\r\n\r\n")
                .ok()
                .flatten()
                .expect("complete");
        assert_eq!((len, close), (BodyLength::Chunked, true), "chunked wins over a length; close among tokens");
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    /// A collector that answers each connection's first request, keeping it open, then
    /// closes it: the second post finds its kept connection closed and goes on a new one (one
    /// request per connection, or the server would not see it). The first answer comes after
    /// an interim `100 Continue`.
    #[test]
    fn a_connection_closed_while_idle_is_not_used_interim_answers_are_skipped_and_a_refusal_fails() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("address").port();
            let server = tokio::spawn(async move {
                let mut seen = Vec::new();
                for answer in ["100 Continue\r\n\r\nHTTP/1.1 200 OK", "200 OK", "400 Bad Request"] {
                    let (mut conn, _) = listener.accept().await.expect("accept");
                    let mut buf = vec![0; 64 * 1024];
                    let mut got = Vec::new();
                    while !got.ends_with(b"body") {
                        let n = conn.read(&mut buf).await.expect("read");
                        assert!(n > 0, "the client closed early");
                        got.extend_from_slice(&buf[..n]);
                    }
                    seen.push(String::from_utf8_lossy(&got).into_owned());
                    let reply = format!("HTTP/1.1 {answer}\r\nContent-Length: 2\r\n\r\nno");
                    conn.write_all(reply.as_bytes()).await.expect("answer");
                    // Close only after the client has taken the answer and kept the connection.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                seen
            });
            let c = HttpCollector::new(&format!("http://127.0.0.1:{port}/otlp/"), Duration::from_secs(1)).expect("url");
            assert_eq!(c.post("/v1/traces", &[b"bo".to_vec(), b"dy".to_vec()]).await.expect("first"), b"no");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                c.post("/v1/traces", &[b"bo".to_vec(), b"dy".to_vec()]).await.expect("second, on a new connection"),
                b"no"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let e = c.post("/v1/logs", &[b"body".to_vec()]).await.expect_err("a 400 is a failure");
            assert!(e.0.starts_with("HTTP 400"), "{}", e.0);
            let seen = server.await.expect("server");
            assert!(seen[0].starts_with("POST /otlp/v1/traces HTTP/1.1\r\n"), "{}", seen[0]);
            assert!(seen[0].contains("Content-Type: application/x-protobuf\r\nContent-Length: 4\r\n"), "{}", seen[0]);
            assert!(seen[2].starts_with("POST /otlp/v1/logs "), "{}", seen[2]);
        });
    }

    /// A body of many chunks, larger than the socket takes at once (so writes end part-way
    /// through a chunk), with an empty chunk among them: the collector gets it whole, in order.
    #[test]
    fn a_body_of_many_chunks_arrives_whole_and_in_order() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let chunks: Vec<Vec<u8>> =
                (0..40u8)
                    .map(|i| {
                        if i == 7 {
                            Vec::new()
                        } else {
                            (0..64 * 1024 + usize::from(i)).map(|k| (k as u8) ^ i).collect()
                        }
                    })
                    .collect();
            let expected = chunks.concat();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("address").port();
            let server = tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut got = Vec::new();
                let mut buf = vec![0; 64 * 1024];
                let body_at = loop {
                    if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    let n = conn.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the client closed early");
                    got.extend_from_slice(&buf[..n]);
                };
                let head = String::from_utf8_lossy(&got[..body_at]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("a length");
                while got.len() < body_at + length {
                    // Slowly at first: the client's writes fill the socket and resume.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let n = conn.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the client closed mid-body");
                    got.extend_from_slice(&buf[..n]);
                }
                conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.expect("answer");
                got.split_off(body_at)
            });
            let c = HttpCollector::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(1)).expect("url");
            assert_eq!(c.post("/v1/traces", &chunks).await.expect("posted"), b"");
            let body = server.await.expect("server");
            assert_eq!(body.len(), expected.len());
            assert!(body == expected, "the chunks arrived out of order or altered");
        });
    }

    #[test]
    fn chunked_bodies_are_joined_once_complete() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde").ok().flatten(), None, "a chunk cut short");
        assert_eq!(dechunk(b"3\r\nabc\r\n0\r\n").ok().flatten(), None, "no empty line after the last chunk");
        assert_eq!(dechunk(b"3;x=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").ok().flatten(), Some(b"abcde".to_vec()));
        assert_eq!(dechunk(b"1\r\na\r\n0\r\nA: 1\r\nB: 2\r\n").ok().flatten(), None, "a trailer line is no end");
        assert_eq!(dechunk(b"1\r\na\r\n0\r\nA: 1\r\n\r\n").ok().flatten(), Some(b"a".to_vec()));
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"ffffffffffffffff\r\nx").is_err(), "a size past any body we read");
    }
}
