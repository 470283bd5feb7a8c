//! Where output lines go: `--log PATH|-|off`.
//!
//! Lines are gathered in a buffer and handed, in chunks (at 64 KiB and on the pipeline's tick,
//! about once a second), to a writer thread: a reader that stops reading our stdout, or a slow
//! disk, blocks that thread, never the one that drains the kernel's ring buffer (which must
//! keep up, answer `/ready` and Ctrl-C). Live (`run`), a chunk that finds the writer's queue
//! full is dropped and its lines counted; `replay` waits instead (it has nothing to keep up
//! with). A write error ends the agent with the path named.

use std::{
    fs::OpenOptions,
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// A chunk is handed over once the buffer holds this much.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks waiting for the writer at most (4 MiB of lines).
const QUEUE_CHUNKS: usize = 64;
/// How long the end of the run waits for a stalled writer before giving up on it.
const FINISH_WAIT: Duration = Duration::from_secs(3);
/// At the end, a writer with no progress for this long is given up.
const STALLED_AFTER: Duration = Duration::from_millis(500);

/// Whether a full queue drops (live) or waits (replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    Drop,
    Wait,
}

pub struct LineSink {
    inner: Option<Writer>,
}

struct Writer {
    buf: Vec<u8>,
    lines_in_buf: u64,
    tx: Option<SyncSender<(Vec<u8>, u64)>>,
    thread: Option<JoinHandle<()>>,
    when_full: WhenFull,
    /// Lines dropped because the writer was stalled.
    dropped: Arc<AtomicU64>,
    /// The writer's first error, with the path named.
    error: Arc<Mutex<Option<String>>>,
    /// Chunks written, for `finish` to wait on.
    written: Arc<AtomicU64>,
    sent: u64,
}

impl LineSink {
    pub fn open(spec: Option<&str>, when_full: WhenFull) -> anyhow::Result<LineSink> {
        let (out, name): (Box<dyn Write + Send>, String) = match spec.unwrap_or("-") {
            "off" => return Ok(LineSink { inner: None }),
            "-" => (Box::new(std::io::stdout()), "stdout".into()),
            path => (
                Box::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .with_context(|| format!("cannot open --log {path}"))?,
                ),
                format!("--log {path}"),
            ),
        };
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, u64)>(QUEUE_CHUNKS);
        let error = Arc::new(Mutex::new(None));
        let written = Arc::new(AtomicU64::new(0));
        let (err, done) = (error.clone(), written.clone());
        let thread = std::thread::Builder::new().name("traceo-output".into()).spawn(move || {
            let mut out = out;
            for (chunk, _) in rx {
                if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
                    *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("writing {name} failed: {e}"));
                    return;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        Ok(LineSink {
            inner: Some(Writer {
                buf: Vec::with_capacity(CHUNK_BYTES),
                lines_in_buf: 0,
                tx: Some(tx),
                thread: Some(thread),
                when_full,
                dropped: Arc::new(AtomicU64::new(0)),
                error,
                written,
                sent: 0,
            }),
        })
    }

    /// Whether lines are discarded (so callers can skip formatting them).
    /// A sink that writes nothing (`off`).
    pub fn off() -> LineSink {
        LineSink { inner: None }
    }

    pub fn is_off(&self) -> bool {
        self.inner.is_none()
    }

    /// Lines dropped so far because the reader or the disk did not keep up.
    pub fn dropped(&self) -> u64 {
        self.inner.as_ref().map_or(0, |w| w.dropped.load(Ordering::Relaxed))
    }

    pub fn line(&mut self, line: &str) -> anyhow::Result<()> {
        let Some(w) = &mut self.inner else { return Ok(()) };
        w.check()?;
        w.buf.extend_from_slice(line.as_bytes());
        w.buf.push(b'\n');
        w.lines_in_buf += 1;
        if w.buf.len() >= CHUNK_BYTES {
            w.hand_over();
        }
        Ok(())
    }

    /// Hand what is buffered to the writer (it writes and flushes it).
    pub fn flush(&mut self) -> anyhow::Result<()> {
        let Some(w) = &mut self.inner else { return Ok(()) };
        w.hand_over();
        w.check()
    }

    /// The end: hand over the rest and wait (a few seconds at most) for it to be written.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        let Some(w) = &mut self.inner else { return Ok(()) };
        w.hand_over();
        let deadline = Instant::now() + FINISH_WAIT;
        // A writer that makes no progress for this long has a reader that stopped reading:
        // waiting longer only delays the end (SIGTERM must end the agent promptly).
        let (mut last, mut progress_at) = (w.written.load(Ordering::Relaxed), Instant::now());
        while w.written.load(Ordering::Relaxed) < w.sent && Instant::now() < deadline {
            if w.error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                break;
            }
            let now = w.written.load(Ordering::Relaxed);
            if now != last {
                (last, progress_at) = (now, Instant::now());
            } else if progress_at.elapsed() > STALLED_AFTER {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let stalled = w.written.load(Ordering::Relaxed) < w.sent;
        w.tx = None;
        match w.thread.take() {
            Some(t) if !stalled => {
                let _ = t.join();
            }
            // A writer blocked on a reader that stopped reading: leave it behind.
            _ => log::warn!("the output's reader stopped reading: the last lines are lost"),
        }
        w.check()
    }
}

impl Writer {
    fn check(&self) -> anyhow::Result<()> {
        match &*self.error.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(()),
        }
    }

    fn hand_over(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let chunk = (std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)), self.lines_in_buf);
        self.lines_in_buf = 0;
        let Some(tx) = &self.tx else { return };
        let sent = match self.when_full {
            WhenFull::Wait => tx.send(chunk).is_ok(),
            WhenFull::Drop => match tx.try_send(chunk) {
                Ok(()) => true,
                Err(TrySendError::Full((_, lines))) => {
                    if self.dropped.fetch_add(lines, Ordering::Relaxed) == 0 {
                        log::warn!("the output's reader does not keep up: dropping lines (counted)");
                    }
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
        };
        self.sent += u64::from(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_and_a_write_error_names_the_path() {
        let dir = std::env::temp_dir().join(format!("traceo-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lines.jsonl");
        let mut sink = LineSink::open(Some(path.to_str().unwrap()), WhenFull::Wait).unwrap();
        for i in 0..10_000 {
            sink.line(&format!("{{\"n\":{i}}}")).unwrap();
        }
        sink.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 10_000);
        assert_eq!(text.lines().last(), Some("{\"n\":9999}"));
        // /dev/full fails every write: the error says where.
        let mut full = LineSink::open(Some("/dev/full"), WhenFull::Wait).unwrap();
        full.line("x").unwrap();
        let err = format!("{:#}", full.finish().unwrap_err());
        assert!(err.contains("--log /dev/full"), "{err}");
    }
}
