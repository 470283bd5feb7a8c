//! Listening TCP sockets of the agent's own network namespace, asked of the kernel through
//! NETLINK_SOCK_DIAG. A dump filtered on the LISTEN state walks only the listening hash:
//! reading /proc/net/tcp{,6} makes the kernel walk every established socket too (and the
//! agent parse a text row for each), which on a busy host was most of a port rescan.
//!
//! A netlink socket answers for the namespace of the thread that created it: the agent's
//! own. Other namespaces are still read from /proc/PID/net.

use std::{collections::HashMap, io, os::fd::AsRawFd as _, os::fd::FromRawFd as _, os::fd::OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const TCP_LISTEN: u32 = 10;

/// `struct nlmsghdr`.
#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

/// Listening TCP sockets (IPv4 and IPv6) of this thread's network namespace into `out`,
/// inode -> port: what /proc/self/net/tcp{,6} lists in state 0A.
pub fn own_listening(out: &mut HashMap<u64, u16>) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned (closed on every path) right after.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The kernel answers a dump at once; the timeout only keeps a broken kernel from hanging
    // the scan.
    let timeout = libc::timeval { tv_sec: 2, tv_usec: 0 };
    // SAFETY: valid pointer and size of a local timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // The listeners are gathered apart and merged only once both dumps succeeded, so a
    // failure leaves `out` as it was for the caller's fallback.
    let mut found = Vec::new();
    for (seq, family) in [(1, libc::AF_INET), (2, libc::AF_INET6)] {
        dump(&fd, seq, family as u8, &mut found)?;
    }
    out.extend(found);
    Ok(())
}

fn dump(fd: &OwnedFd, seq: u32, family: u8, found: &mut Vec<(u64, u16)>) -> io::Result<()> {
    let req = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: 1 << TCP_LISTEN,
            id: InetDiagSockId::default(),
        },
    };
    // SAFETY: the request is a repr(C) value without padding, sent as its bytes; the kernel
    // is the destination (a zeroed sockaddr_nl with the netlink family).
    let sent = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd.as_raw_fd(),
            (&req as *const Request).cast(),
            size_of::<Request>(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent != size_of::<Request>() as isize {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv into a buffer of the length given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "sock_diag: the dump ended without DONE"));
        }
        if parse(&buf[..n as usize], seq, found)? {
            return Ok(());
        }
    }
}

fn read<T: Copy>(raw: &[u8]) -> Option<T> {
    // SAFETY: length checked; T is a repr(C) wire type valid for any bit pattern.
    (raw.len() >= size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<T>()) })
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

/// One datagram of the dump answering request `seq`: its listeners into `found`. Returns
/// whether the dump is complete.
fn parse(mut data: &[u8], seq: u32, found: &mut Vec<(u64, u16)>) -> io::Result<bool> {
    while !data.is_empty() {
        let h: NlMsgHdr = read(data).ok_or_else(|| bad("a short message header"))?;
        let len = h.len as usize;
        if len < size_of::<NlMsgHdr>() || len > data.len() {
            return Err(bad("a message length out of bounds"));
        }
        let body = &data[size_of::<NlMsgHdr>()..len];
        if h.seq == seq {
            match h.kind {
                // A dump that failed in the kernel ends in a DONE carrying the negative errno
                // (not an NLMSG_ERROR): an empty answer then is no answer.
                NLMSG_DONE => match read::<i32>(body) {
                    Some(errno) if errno < 0 => return Err(io::Error::from_raw_os_error(errno.saturating_neg())),
                    _ => return Ok(true),
                },
                NLMSG_ERROR => {
                    let errno: i32 = read(body).ok_or_else(|| bad("a short error"))?;
                    return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
                }
                SOCK_DIAG_BY_FAMILY => {
                    let m: InetDiagMsg = read(body).ok_or_else(|| bad("a short socket record"))?;
                    if u32::from(m.state) == TCP_LISTEN {
                        found.push((u64::from(m.inode), u16::from_be(m.id.sport)));
                    }
                }
                _ => {}
            }
        }
        // Messages are 4-byte aligned; the last one's padding may be cut off.
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_same_listeners_as_proc() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let v6 = std::net::TcpListener::bind("[::1]:0").ok();
        // An established connection, which the LISTEN-only dump leaves out.
        let _client = std::net::TcpStream::connect(v4.local_addr().unwrap()).expect("connects");
        // Other tests of this process may open or close listeners between the two reads.
        let mut tries = 0;
        let diag = loop {
            let mut diag = HashMap::new();
            own_listening(&mut diag).expect("sock_diag dump");
            let mut proc = HashMap::new();
            super::super::read_own_namespace_tables(&mut proc);
            tries += 1;
            if diag == proc || tries == 5 {
                assert_eq!(diag, proc);
                break diag;
            }
        };
        let ports: Vec<u16> = diag.values().copied().collect();
        assert!(ports.contains(&v4.local_addr().unwrap().port()));
        if let Some(v6) = v6 {
            assert!(ports.contains(&v6.local_addr().unwrap().port()));
        }
    }

    #[test]
    fn bad_datagrams_are_errors_not_panics() {
        let mut found = Vec::new();
        assert!(parse(&[1, 2, 3], 1, &mut found).is_err());
        let mut msg = vec![0u8; 16];
        msg[..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse(&msg, 1, &mut found).is_err());
        msg[..4].copy_from_slice(&16u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        assert!(parse(&msg, 1, &mut found).is_err(), "a record too short for inet_diag_msg");
        msg[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(parse(&msg, 1, &mut found).expect("parses"));
        assert!(found.is_empty());
        // A dump the kernel failed ends in a DONE carrying -errno: an error, not "no listeners".
        msg[..4].copy_from_slice(&20u32.to_ne_bytes());
        msg.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let err = parse(&msg, 1, &mut found).expect_err("a failed dump");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        msg[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert!(parse(&msg, 1, &mut found).expect("a DONE with status 0"));
    }
}
