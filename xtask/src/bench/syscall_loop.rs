//! The per-syscall cost probe: a tight send/recv loop over a loopback TCP pair, run as its own
//! process (`cargo xtask bench-loop`) so the agent can select it, or not, by pid.

use std::{
    io::{BufRead, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Instant,
};

/// Prints `ready`, waits for a line on stdin, then runs `iterations` send+recv pairs of `size`
/// bytes and prints the mean CPU nanoseconds per syscall.
pub fn run(size: usize, iterations: u64) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    a.set_nodelay(true)?;
    let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
    let out = vec![7u8; size];
    let mut buf = vec![0u8; size.max(1) * 2];
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    // Warm up caches and the agent's first-sight path before timing.
    for _ in 0..1000 {
        exchange(fa, fb, &out, &mut buf)?;
    }
    // The thread's own CPU time, not the wall clock: on a small machine the agent (or
    // anything else) sharing the loop's CPU would otherwise count as the probes' cost.
    let start = thread_cpu_ns();
    for _ in 0..iterations {
        exchange(fa, fb, &out, &mut buf)?;
    }
    let ns = (thread_cpu_ns() - start) as f64 / (2 * iterations) as f64;
    println!("{ns:.1}");
    Ok(())
}

/// CPU time of the calling thread (user + system, softirqs it ran inline included).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One send on `a` and the matching receives on `b` (libc directly: exactly one syscall each).
fn exchange(a: i32, b: i32, out: &[u8], buf: &mut [u8]) -> anyhow::Result<()> {
    // SAFETY: valid fds and buffers for the lengths given.
    let sent = unsafe { libc::send(a, out.as_ptr().cast(), out.len(), 0) };
    anyhow::ensure!(sent == out.len() as isize, "send returned {sent}");
    let mut got = 0;
    while got < out.len() {
        // SAFETY: as above.
        let n = unsafe { libc::recv(b, buf.as_mut_ptr().cast(), buf.len(), 0) };
        anyhow::ensure!(n > 0, "recv returned {n}");
        got += n as usize;
    }
    Ok(())
}

/// The write-cost probe: prints `ready`, waits for a line, then makes `iterations` `write`s of
/// one `size`-byte log line each (`INFO:bench:record N ...\n`) to `path` (appended; `-` is
/// fd 2) and prints the mean nanoseconds per write.
pub fn write_run(path: &str, size: usize, iterations: u64) -> anyhow::Result<()> {
    let file = if path == "-" { None } else { Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?) };
    let fd = file.as_ref().map_or(2, |f| f.as_raw_fd());
    println!("ready");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let record = |i: u64| {
        let mut l = format!("INFO:bench:record {i} ").into_bytes();
        l.resize(size.max(l.len() + 1) - 1, b'x');
        l.push(b'\n');
        l
    };
    let lines: Vec<Vec<u8>> = (0..1000).map(record).collect();
    let write = |l: &[u8]| -> anyhow::Result<()> {
        // SAFETY: a valid fd and buffer for its length.
        let n = unsafe { libc::write(fd, l.as_ptr().cast(), l.len()) };
        anyhow::ensure!(n == l.len() as isize, "write returned {n}");
        Ok(())
    };
    // Untimed warm-up: as many as `bench`'s WARM_UP_WRITES.
    for l in lines.iter().take(100) {
        write(l)?;
    }
    let start = Instant::now();
    for i in 0..iterations {
        write(&lines[(i % 1000) as usize])?;
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{ns:.1}");
    Ok(())
}
