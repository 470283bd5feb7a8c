//! Where events come from: the kernel's ring buffer, or a record file. The pipeline only
//! sees `EventSource`, so everything after it runs the same live and in replay.

use std::{collections::VecDeque, fs::File, io::BufReader, path::Path};

use anyhow::Context as _;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{decode::Decoder, events::Event, record::RecordReader};

pub trait EventSource {
    /// The next event; `None` when the source is exhausted (never, for a live source).
    fn next_event(&mut self) -> impl Future<Output = anyhow::Result<Option<Event>>>;
}

/// Events from the kernel.
pub struct RingSource {
    ring: AsyncFd<RingBuf<MapData>>,
    decoder: Decoder,
    pending: VecDeque<Event>,
    /// Records read from the ring buffer.
    pub read: u64,
    /// Records that did not decode (a kernel object newer than the agent).
    pub decode_errors: u64,
    /// Polls in a row that found nothing (the interval grows with it).
    empty_polls: u32,
    /// The last wait ended by the poll timer (not by a wake-up from the kernel).
    timer_woke: bool,
    /// Records read since the live loop's last turn began ([`Self::next_event`]).
    turn_read: usize,
}

/// Records decoded at a time. Decoded events wait in `pending` until handled: a few dozen
/// stay in cache (4,096 of 160 bytes were 640 KiB written and read back, about 3% of the
/// agent's CPU under uvicorn).
const FILL: usize = 64;
/// Records handed over per turn of the live loop before it looks at its other inputs.
const BATCH: usize = 4096;

impl RingSource {
    pub fn new(ring: RingBuf<MapData>) -> anyhow::Result<Self> {
        // SAFETY: the ring buffer's fd stays open for as long as the AsyncFd owns the map,
        // and nothing else registers it with the reactor.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE)? };
        Ok(RingSource {
            ring,
            decoder: Decoder::default(),
            pending: VecDeque::with_capacity(FILL),
            read: 0,
            decode_errors: 0,
            empty_polls: 0,
            timer_woke: false,
            turn_read: 0,
        })
    }

    /// The next event in the ring buffer, if any (without waiting), until [`BATCH`] were
    /// handed over in this turn of the live loop.
    pub fn ready(&mut self) -> Option<Event> {
        if self.pending.is_empty() && self.turn_read < BATCH {
            self.fill();
        }
        self.pending.pop_front()
    }

    /// Hand over everything already in the ring buffer, without waiting.
    pub fn drain(&mut self, mut sink: impl FnMut(Event) -> anyhow::Result<()>) -> anyhow::Result<()> {
        loop {
            if self.pending.is_empty() {
                self.fill();
            }
            let Some(event) = self.pending.pop_front() else { return Ok(()) };
            sink(event)?;
        }
    }

    /// Move up to [`FILL`] records from the ring buffer into `pending`.
    fn fill(&mut self) {
        let ring = self.ring.get_mut();
        while self.pending.len() < FILL {
            let Some(item) = ring.next() else { break };
            self.read += 1;
            self.turn_read += 1;
            match self.decoder.decode(&item) {
                Ok(event) => self.pending.push_back(event),
                Err(e) => {
                    if self.decode_errors == 0 {
                        log::warn!(
                            "undecodable kernel event ({}): is the kernel object newer than the agent?",
                            e.as_str()
                        );
                    }
                    self.decode_errors += 1;
                }
            }
        }
    }
}

/// How often the ring buffer is read without a wake-up while events flow: the kernel
/// submits events silently until a backlog builds up (then it wakes the agent), so this
/// bounds the delay of a quiet stream. Each wake-up costs a context switch and cold caches:
/// every 5 ms, that was a tenth of the agent's CPU under a 10,000 requests/s uvicorn.
const POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// Once nothing came for `IDLE_AFTER` polls (200 ms), the interval doubles up to this, the
/// idle agent's. What must be seen at once (an exec, a listen) wakes the
/// agent from the kernel anyway, and the first event after a quiet spell waits 100 ms at most.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(100);
const IDLE_AFTER: u32 = 10;

/// The poll interval after `empty` polls that found nothing in a row.
fn poll_interval(empty: u32) -> std::time::Duration {
    match empty.checked_sub(IDLE_AFTER) {
        None => POLL,
        Some(k) => POLL.saturating_mul(1u32 << k.min(5)).min(IDLE_POLL),
    }
}

impl EventSource for RingSource {
    async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        self.turn_read = 0;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            self.fill();
            if !self.pending.is_empty() {
                // Events found by polling (submitted silently): traffic flows, poll fast. A
                // forced wake-up (an exec, a listen: the whole host's) says nothing of that.
                if self.timer_woke {
                    self.empty_polls = 0;
                }
                continue;
            }
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    guard?.clear_ready();
                    self.timer_woke = false;
                }
                _ = tokio::time::sleep(poll_interval(self.empty_polls)) => {
                    self.timer_woke = true;
                    self.empty_polls = self.empty_polls.saturating_add(1);
                }
            }
        }
    }
}

/// Events from a record file.
pub struct FileSource {
    pub reader: RecordReader<BufReader<File>>,
    path: std::path::PathBuf,
}

impl FileSource {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(FileSource { reader: RecordReader::open(path)?, path: path.to_owned() })
    }
}

impl EventSource for FileSource {
    async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        // The result is returned as read: re-wrapping it (`?`, then `Ok`) copied every event twice.
        let event = self.reader.next_event();
        match &event {
            Ok(None) if self.reader.truncated_tail => {
                log::warn!("the record file ends inside a record (was the recorder killed?); the rest was replayed");
            }
            Err(_) => return event.with_context(|| format!("replaying {}", self.path.display())),
            Ok(_) => {}
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_interval_grows_when_idle_and_is_bounded() {
        assert_eq!(poll_interval(0), POLL);
        assert_eq!(poll_interval(IDLE_AFTER - 1), POLL);
        assert!(poll_interval(IDLE_AFTER + 1) > POLL);
        assert_eq!(poll_interval(IDLE_AFTER + 100), IDLE_POLL);
        assert_eq!(poll_interval(u32::MAX), IDLE_POLL);
    }
}
