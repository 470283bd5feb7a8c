//! From an fd of the current task to its socket: identity (inode number) and addresses.
//!
//! Walk: task_struct.files -> files_struct.fdt -> fdtable.fd[fd] (struct file *)
//!   -> file.f_inode (identity, S_IFSOCK test) and file.private_data (struct socket *)
//!   -> socket.sk (struct sock *) -> sock.__sk_common (family, addresses, ports).
//! Offsets come from the agent (BTF). The first hops are direct loads through typed pointers
//! (`kmem::load`), the rest probe reads: neither faults, but nothing is pinned, so a racing
//! close can give stale values, which the agent tolerates.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use traceo_ebpf_common::{ConnEvent, family};

use crate::{
    globals::offset,
    kmem::{current_task, load},
};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const S_IFREG: u16 = 0o100000;

pub enum WalkError {
    /// The fd is not open or is not a socket: nothing to trace.
    NotSocket,
    /// A probe read failed (counted). A direct load that faults reads zeros instead, which
    /// the walk takes for "no socket".
    Failed,
}

/// An open socket of the current task.
pub struct SocketFile {
    /// `struct file *`
    pub file: u64,
    /// The inode number: the connection identity.
    pub ino: u64,
}

#[inline(always)]
fn read<T>(addr: u64) -> Result<T, WalkError> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| WalkError::Failed)
}

/// The socket behind `fd`, or `NotSocket` for anything else. Four direct loads, then three
/// probe reads (the fd's file, its inode, the inode's mode and number in one): each helper
/// call costs tens of nanoseconds, so neighbouring fields are read together.
#[inline(always)]
pub fn socket_of_fd(fd: i64) -> Result<SocketFile, WalkError> {
    let file = file_of_fd(fd)?;
    let inode: u64 = read(file + offset!(file_inode))?;
    let (mode, ino) = mode_and_ino(inode)?;
    if mode & S_IFMT != S_IFSOCK {
        return Err(WalkError::NotSocket);
    }
    Ok(SocketFile { file, ino })
}

/// The `struct file *` at `fd` of the current task (`NotSocket` when none).
#[inline(always)]
fn file_of_fd(fd: i64) -> Result<u64, WalkError> {
    if fd < 0 {
        return Err(WalkError::NotSocket);
    }
    // Task, files and fdtable are typed pointers (see `load`); the fd array holds untyped ones.
    // SAFETY: each pointer is typed by the verifier, each offset a member of its type.
    let files: u64 = unsafe { load(current_task(), offset!(task_files)) };
    if files == 0 {
        return Err(WalkError::NotSocket);
    }
    // SAFETY: as above.
    let fdt: u64 = unsafe { load(files, offset!(files_fdt)) };
    // `fdt` is `__rcu`: where the kernel's BTF carries that tag the verifier holds it may be
    // null and refuses a load through it before this test.
    if fdt == 0 {
        return Err(WalkError::NotSocket);
    }
    // SAFETY: as above.
    let (max_fds, fd_array): (u32, u64) = unsafe { (load(fdt, offset!(fdt_max_fds)), load(fdt, offset!(fdt_fd))) };
    if fd as u64 >= max_fds as u64 {
        return Err(WalkError::NotSocket);
    }
    let file: u64 = read(fd_array + (fd as u64) * 8)?;
    if file == 0 {
        return Err(WalkError::NotSocket);
    }
    Ok(file)
}

/// `inode.i_mode` and `inode.i_ino`: one read of the inode's first 72 bytes when `i_mode`
/// opens it and `i_ino` falls inside (as on x86-64 kernels), two reads otherwise.
#[inline(always)]
fn mode_and_ino(inode: u64) -> Result<(u16, u64), WalkError> {
    if offset!(inode_mode) == 0 {
        let ino_at = offset!(inode_ino);
        if ino_at % 8 == 0 && ino_at <= 64 {
            let block: [u64; 9] = read(inode)?;
            // Constant indices only: the verifier tracks each.
            let ino = match ino_at / 8 {
                4 => block[4],
                5 => block[5],
                6 => block[6],
                7 => block[7],
                8 => block[8],
                _ => read(inode + ino_at)?,
            };
            return Ok((block[0] as u16, ino));
        }
    }
    Ok((read(inode + offset!(inode_mode))?, read(inode + offset!(inode_ino))?))
}

/// The inode number of `fd` when it is a regular file (for `--log-file`), else `None`.
#[inline(always)]
pub fn regular_file_ino(fd: i64) -> Option<u64> {
    let file = file_of_fd(fd).ok()?;
    let inode: u64 = read(file + offset!(file_inode)).ok()?;
    let (mode, ino) = mode_and_ino(inode).ok()?;
    (mode & S_IFMT == S_IFREG).then_some(ino)
}

/// `SOCK_STREAM`, and `IPPROTO_TCP`.
const SOCK_STREAM: u16 = 1;
const IPPROTO_TCP: u16 = 6;

/// The TCP sequence number of the next byte the process sends (`egress`) or reads on
/// `sock_file`; `None` unless it is a TCP socket. Read at syscall entry, that is the number of
/// the first byte the call moves (one call at a time per direction, as HTTP peers do).
#[inline(always)]
pub fn tcp_seq(sock_file: &SocketFile, egress: bool) -> Option<u32> {
    let socket: u64 = read(sock_file.file + offset!(file_private_data)).ok()?;
    let sk: u64 = read(socket + offset!(socket_sk)).ok()?;
    if sk == 0 {
        return None;
    }
    let fam: u16 = read(sk + offset!(sk_family)).ok()?;
    let ty: u16 = read(sk + offset!(sk_type)).ok()?;
    if (fam != family::INET && fam != family::INET6) || ty != SOCK_STREAM {
        return None;
    }
    // MPTCP sockets are SOCK_STREAM too, but not a `tcp_sock`; kernels where the protocol is a
    // bitfield have no MPTCP and give offset 0 here.
    let proto_at = offset!(sk_protocol);
    if proto_at != 0 && read::<u16>(sk + proto_at).ok()? != IPPROTO_TCP {
        return None;
    }
    read(sk + if egress { offset!(tcp_write_seq) } else { offset!(tcp_copied_seq) }).ok()
}

/// Fill family, socket type, and local and peer addresses of `sock_file` into `ev`.
#[inline(always)]
pub fn fill_addresses(sock_file: &SocketFile, ev: &mut ConnEvent) -> Result<(), WalkError> {
    let socket: u64 = read(sock_file.file + offset!(file_private_data))?;
    let sk: u64 = read(socket + offset!(socket_sk))?;
    if sk == 0 {
        return Err(WalkError::NotSocket);
    }
    ev.family = read(sk + offset!(sk_family))?;
    ev.sock_type = read(sk + offset!(sk_type))?;
    ev.local_port = read(sk + offset!(sk_num))?;
    ev.peer_port = u16::from_be(read(sk + offset!(sk_dport))?);
    if ev.family == family::INET {
        let local: [u8; 4] = read(sk + offset!(sk_rcv_saddr))?;
        let peer: [u8; 4] = read(sk + offset!(sk_daddr))?;
        ev.local_addr[..4].copy_from_slice(&local);
        ev.peer_addr[..4].copy_from_slice(&peer);
    } else if ev.family == family::INET6 {
        ev.local_addr = read(sk + offset!(sk_v6_rcv_saddr))?;
        ev.peer_addr = read(sk + offset!(sk_v6_daddr))?;
    }
    Ok(())
}
