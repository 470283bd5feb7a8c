//! The exit program's memo (`filter::exit_traced` in the kernel object), run for real through
//! `BPF_PROG_TEST_RUN` as a forked child of the test (the agent, whose own syscalls the
//! programs skip, is the test process): an answer is reused only for the same saved-registers
//! address at the same flags generation, and the agent's flag writes move the generation.
//!
//! A run is traced when the program goes past the filter: the `regs` given point nowhere, so
//! its read of the registers fails and counts `socket_walk_failed`, the signal read here.

use std::os::fd::{AsFd as _, AsRawFd as _};

use traceo_ebpf_common::stat;

use super::*;

/// Saved-registers addresses of two tasks, as far as the memo can tell; the kernel's read
/// of either fails.
const REGS_A: u64 = 0x1000;
const REGS_B: u64 = 0x2000;

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (the kernel's layout).
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The child: pinned to CPU 0 (one memo), it runs `sys_exit` once per command byte read
/// from `commands` (`a` or `b`: which registers address) and acknowledges each on `acks`
/// with 1 (ran) or 0 (the run failed). Only syscalls: the test process has other threads.
fn child(prog_fd: i32, commands: i32, acks: i32) -> ! {
    // SAFETY: plain syscalls on this process's own fds and memory.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        let mut command = 0u8;
        while libc::read(commands, (&mut command as *mut u8).cast(), 1) == 1 {
            let args = [if command == b'a' { REGS_A } else { REGS_B }, 1u64];
            let mut attr = TestRun {
                prog_fd: prog_fd as u32,
                ctx_size_in: 16,
                ctx_in: args.as_ptr() as u64,
                ..Default::default()
            };
            let ok = libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr, std::mem::size_of::<TestRun>()) == 0;
            libc::write(acks, (&(ok as u8) as *const u8).cast(), 1);
        }
        libc::_exit(0)
    }
}

#[test]
fn the_exit_programs_memo_is_keyed_by_registers_and_generation() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        let why = "the exit memo test loads eBPF programs and needs root: run `sudo cargo xtask test`";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        return eprintln!("SKIPPED: {why}");
    }
    let opts = LoadOptions {
        capture_bytes: 64,
        ring_buffer_mib: 1,
        trace_all: false,
        capture_logs: false,
        log_files: false,
        read_tcp_seq: false,
    };
    let mut probes = load(&opts).unwrap_or_else(|e| panic!("{e:#}"));
    let mut pids = probes.take_traced_pids().expect("PID_FLAGS");
    let stats = probes.take_stats().expect("STATS");
    let prog_fd = probes.ebpf.program("sys_exit").expect("sys_exit").fd().expect("loaded").as_fd().as_raw_fd();
    let (mut to_child, mut from_child) = ([0i32; 2], [0i32; 2]);
    // SAFETY: arrays of two fds, as pipe() wants.
    assert!(unsafe { libc::pipe(to_child.as_mut_ptr()) == 0 && libc::pipe(from_child.as_mut_ptr()) == 0 });
    // SAFETY: the child only makes syscalls (see `child`) and exits.
    let pid = match unsafe { libc::fork() } {
        0 => {
            // SAFETY: the parent's ends, inherited: closed so that the parent's close ends
            // the child's read.
            unsafe { libc::close(to_child[1]) };
            unsafe { libc::close(from_child[0]) };
            child(prog_fd, to_child[0], from_child[1])
        }
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        pid => pid as u32,
    };
    // Run `sys_exit` in the child with registers `which`: whether it got past the filter.
    let traced = |which: u8| -> bool {
        let before = stats.read()[stat::SOCKET_WALK_FAILED as usize];
        let mut ack = 0u8;
        // SAFETY: one byte each way over the pipes made above.
        unsafe {
            assert_eq!(libc::write(to_child[1], (&which as *const u8).cast(), 1), 1);
            assert_eq!(libc::read(from_child[0], (&mut ack as *mut u8).cast(), 1), 1);
        }
        assert_eq!(ack, 1, "BPF_PROG_TEST_RUN failed in the child");
        stats.read()[stat::SOCKET_WALK_FAILED as usize] > before
    };
    // A flag store the way a writer that forgot the generation would make it.
    let store_without_bump = |pids: &KernelPids, flag: u8| {
        pids.flags.get(pid as usize).expect("below pid_max").store(flag, std::sync::atomic::Ordering::SeqCst)
    };

    assert!(!traced(b'a'), "an untraced process got past the filter");
    pids.insert(pid, 0).expect("flag the child");
    assert!(traced(b'a'), "the agent's flag write did not reach a task whose untraced answer was remembered");
    assert!(traced(b'a'), "a remembered traced answer was not used");
    store_without_bump(&pids, 0);
    assert!(traced(b'a'), "the answer was not remembered: the flag was read again for the same registers");
    assert!(!traced(b'b'), "another registers address reused the answer remembered for the first");
    store_without_bump(&pids, 1);
    assert!(!traced(b'b'), "an untraced answer was not remembered");
    assert!(traced(b'a'), "another registers address reused the answer remembered for the first");
    pids.remove(pid);
    assert!(!traced(b'a'), "the agent's untrace did not reach a task whose traced answer was remembered");

    // SAFETY: closing the command pipe ends the child's loop; then reap it.
    unsafe {
        for fd in [to_child[0], to_child[1], from_child[0], from_child[1]] {
            libc::close(fd);
        }
        libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
    }
}
