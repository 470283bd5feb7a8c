use super::*;
use crate::events::{Conn, Family, Meta, OpenHow, Syscall};

const PID: u32 = 100;
const CLIENT_HELLO: &[u8] = &[0x16, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3];

/// Events of one thread with a clock; `out` is what the binder passed on.
struct Run {
    binder: TlsBinder,
    now: u64,
    out: Vec<Event>,
}

impl Run {
    fn new() -> Run {
        Run { binder: TlsBinder::default(), now: 1_000, out: Vec::new() }
    }

    fn feed(&mut self, mut ev: Event) {
        let out = &mut self.out;
        self.binder.process(&mut ev, &mut |e| out.push(e.clone()));
    }

    fn data(&mut self, tid: u32, conn_id: u64, syscall: Syscall, dir: Direction, payload: &[u8]) -> Data {
        self.now += 10;
        let meta = Meta { pid: PID, tid, service: None, ts_ns: self.now + 5 };
        Data::sample(meta, (conn_id, 5), syscall, dir, (self.now, self.now + 5), payload)
    }

    fn socket(&mut self, tid: u32, conn: u64, dir: Direction, payload: &[u8]) {
        let syscall = if dir == Direction::Ingress { Syscall::Read } else { Syscall::Write };
        let d = self.data(tid, conn, syscall, dir, payload);
        self.feed(Event::Data(d));
    }

    fn ssl(&mut self, tid: u32, ssl: u64, dir: Direction, payload: &[u8]) {
        let syscall = if dir == Direction::Ingress { Syscall::SslRead } else { Syscall::SslWrite };
        let d = self.data(tid, ssl, syscall, dir, payload);
        self.feed(Event::Data(d));
    }

    /// An SSL call that makes its socket syscall inside (a socket BIO): the uretprobe's
    /// event follows the syscall's, and its `enter_ns` precedes it.
    fn ssl_over_socket(&mut self, tid: u32, ssl: u64, conn: u64, dir: Direction, plain: &[u8]) {
        let syscall = if dir == Direction::Ingress { Syscall::SslRead } else { Syscall::SslWrite };
        let call = self.data(tid, ssl, syscall, dir, plain);
        self.socket(tid, conn, dir, b"\x17\x03\x03ciphertext");
        self.feed(Event::Data(Data { meta: Meta { ts_ns: self.now + 20, ..call.meta.clone() }, ..call }));
    }

    fn close(&mut self, conn_id: u64) {
        self.feed(Event::ConnClose(Conn {
            meta: Meta { pid: PID, tid: 1, service: None, ts_ns: self.now },
            conn_id,
            fd: 5,
            how: None::<OpenHow>,
            family: Family::Inet,
            sock_type: 1,
            local: None,
            peer: None,
            comm: String::new(),
            ret: 0,
            task_ctx: 0,
            after_loss: false,
        }));
    }

    /// (conn id, syscall, payload) of each data event passed on.
    fn passed(&self) -> Vec<(u64, Syscall, Vec<u8>)> {
        self.out
            .iter()
            .filter_map(|e| match e {
                Event::Data(d) => Some((d.conn_id, d.syscall, d.payload.to_vec())),
                _ => None,
            })
            .collect()
    }
}

use Direction::{Egress, Ingress};

#[test]
fn handshake_records_are_recognised() {
    assert!(is_tls_handshake(CLIENT_HELLO));
    assert!(is_tls_handshake(&[0x16, 3, 3, 0, 90, 2]));
    assert!(!is_tls_handshake(b"GET / HTTP/1.1\r\n"));
    assert!(is_tls_handshake(&[0x16, 3, 1, 2, 0]), "a record header read on its own");
    assert!(!is_tls_handshake(&[0x16, 3, 1]));
    assert!(!is_tls_handshake(&[0x16, 3, 1, 2, 0, 9]), "not a hello");
    assert!(!is_tls_handshake(&[0x17, 3, 3, 0, 20, 1]), "application data does not open a connection");
}

#[test]
fn socket_bio_binds_through_the_syscall_inside_the_call() {
    let mut r = Run::new();
    r.socket(1, 7, Egress, CLIENT_HELLO);
    r.ssl_over_socket(1, 0xa0, 7, Egress, b"GET / HTTP/1.1\r\n\r\n");
    r.ssl_over_socket(1, 0xa0, 7, Ingress, b"HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(
        r.passed(),
        vec![
            (7, Syscall::SslWrite, b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            (7, Syscall::SslRead, b"HTTP/1.1 200 OK\r\n\r\n".to_vec())
        ]
    );
    assert_eq!(r.binder.stats.tls_connections, 1);
    assert_eq!(r.binder.stats.plaintext_events, 2);
    assert!(r.binder.stats.ciphertext_bytes > 0);
}

#[test]
fn memory_bio_server_binds_reads_to_the_last_socket_read_and_writes_to_the_binding() {
    let mut r = Run::new();
    // One event-loop thread, two connections, interleaved.
    r.socket(1, 7, Ingress, CLIENT_HELLO);
    r.socket(1, 8, Ingress, CLIENT_HELLO);
    r.socket(1, 7, Ingress, b"\x17\x03\x03..");
    r.ssl(1, 0xa0, Ingress, b"GET /a HTTP/1.1\r\n\r\n");
    r.socket(1, 8, Ingress, b"\x17\x03\x03..");
    r.ssl(1, 0xb0, Ingress, b"GET /b HTTP/1.1\r\n\r\n");
    r.ssl(1, 0xa0, Egress, b"HTTP/1.1 200 OK\r\n\r\n");
    r.socket(1, 7, Egress, b"\x17\x03\x03..");
    let conns: Vec<u64> = r.passed().iter().map(|p| p.0).collect();
    assert_eq!(conns, vec![7, 8, 7]);
}

#[test]
fn memory_bio_client_write_waits_for_its_socket_write() {
    let mut r = Run::new();
    r.socket(1, 9, Egress, CLIENT_HELLO);
    r.socket(1, 9, Ingress, &[0x16, 3, 3, 0, 90, 2]);
    r.ssl(1, 0xc0, Egress, b"POST /x HTTP/1.1\r\n");
    r.ssl(1, 0xc0, Egress, b"Content-Length: 0\r\n\r\n");
    assert!(r.passed().is_empty(), "held until the socket write shows the connection");
    r.socket(1, 9, Egress, b"\x17\x03\x03..");
    assert_eq!(
        r.passed(),
        vec![
            (9, Syscall::SslWrite, b"POST /x HTTP/1.1\r\n".to_vec()),
            (9, Syscall::SslWrite, b"Content-Length: 0\r\n\r\n".to_vec())
        ]
    );
    r.ssl(1, 0xc0, Ingress, b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(r.passed().last().map(|p| p.0), Some(9));
}

#[test]
fn a_reused_ssl_address_follows_its_new_connection() {
    let mut r = Run::new();
    r.socket(1, 7, Ingress, CLIENT_HELLO);
    r.ssl(1, 0xa0, Ingress, b"GET /1 HTTP/1.1\r\n\r\n");
    r.close(7);
    r.socket(1, 11, Ingress, CLIENT_HELLO);
    r.ssl(1, 0xa0, Ingress, b"GET /2 HTTP/1.1\r\n\r\n");
    r.ssl(1, 0xa0, Egress, b"HTTP/1.1 200 OK\r\n\r\n");
    let conns: Vec<u64> = r.passed().iter().map(|p| p.0).collect();
    assert_eq!(conns, vec![7, 11, 11]);
}

#[test]
fn held_writes_expire_bounded_and_counted() {
    let mut r = Run::new();
    for i in 0..(MAX_PENDING_PER_THREAD + 6) {
        r.ssl(1, 0xd0, Egress, format!("chunk {i}").as_bytes());
    }
    assert_eq!(r.binder.stats.unbound_events, 6, "the oldest beyond the bound are dropped");
    r.binder.expire(r.now + PENDING_TIMEOUT_NS + 1_000);
    assert_eq!(r.binder.stats.unbound_events, MAX_PENDING_PER_THREAD as u64 + 6);
    assert!(r.passed().is_empty());
}

#[test]
fn plain_http_passes_and_tls_without_plaintext_is_opaque() {
    let mut r = Run::new();
    r.socket(1, 5, Ingress, b"GET / HTTP/1.1\r\n\r\n");
    r.socket(2, 6, Egress, CLIENT_HELLO);
    r.socket(2, 6, Ingress, &[0x16, 3, 3, 0, 90, 2]);
    r.close(6);
    r.close(5);
    assert_eq!(r.passed(), vec![(5, Syscall::Read, b"GET / HTTP/1.1\r\n\r\n".to_vec())]);
    assert_eq!(r.binder.stats.opaque_connections, 1);
    assert_eq!(r.binder.stats.tls_connections, 1);
    assert_eq!(r.out.len(), 3, "both closes are passed on");
}

#[test]
fn a_handshake_without_a_tls_answer_is_tls_on_a_plaintext_port_not_opaque() {
    let mut r = Run::new();
    // A server that got a ClientHello and answered in plaintext.
    r.socket(1, 7, Ingress, CLIENT_HELLO);
    r.socket(1, 7, Egress, b"HTTP/1.1 400 Bad Request\r\n\r\n");
    r.close(7);
    // One that got a ClientHello and closed.
    r.socket(1, 8, Ingress, CLIENT_HELLO);
    r.close(8);
    // A real TLS exchange the probes cannot see into is still opaque.
    r.socket(1, 9, Ingress, CLIENT_HELLO);
    r.socket(1, 9, Egress, &[0x16, 3, 3, 0, 90, 2]);
    r.close(9);
    assert_eq!(r.binder.stats.on_plaintext_connections, 2);
    assert_eq!(r.binder.stats.opaque_connections, 1);
    assert!(r.passed().is_empty(), "no byte of them reaches the HTTP parser");
    assert!(is_tls_record(&[21, 3, 3, 0, 2]) && is_tls_record(&[23]) && !is_tls_record(b"HTTP/1.1 400"));
}

#[test]
fn timestamps_near_the_end_of_the_clock_do_not_overflow_expiry() {
    // Found by fuzzing (decode target): a replayed or corrupt timestamp close to u64::MAX
    // made `expire` overflow (a panic with overflow checks, a wrap that forgot the thread
    // in release builds).
    let mut r = Run { now: u64::MAX - 1_000_000, ..Run::new() };
    r.socket(1, 5, Ingress, b"\x17\x03\x03x");
    r.ssl(2, 0xd0, Egress, b"held, never written");
    r.binder.expire(r.now + 100);
    assert_eq!(r.binder.stats.unbound_events, 0, "nothing is due yet");
    r.binder.finish();
    assert_eq!(r.binder.stats.unbound_events, 1, "finish drops what is held, counted");
}

#[test]
fn an_absurd_ciphertext_length_does_not_overflow_the_byte_count() {
    // Found by fuzzing (decode target): a data event's length comes from the kernel or a
    // record file; two near u64::MAX overflowed the ciphertext byte counter.
    let mut r = Run::new();
    r.socket(2, 6, Egress, CLIENT_HELLO);
    for _ in 0..2 {
        let mut d = r.data(2, 6, Syscall::Write, Egress, b"\x17\x03\x03");
        d.total_len = u64::MAX - 1;
        r.feed(Event::Data(d));
    }
    assert_eq!(r.binder.stats.ciphertext_bytes, u64::MAX, "saturates");
    assert!(r.passed().is_empty(), "ciphertext is kept from the parser");
}
