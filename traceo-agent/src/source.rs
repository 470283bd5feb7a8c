//! Where events come from: the kernel's ring buffer, or a record file. The pipeline only
//! sees `EventSource`, so everything after it runs the same live and in replay.

use std::{fs::File, io::BufReader, path::Path};

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
    /// Records read from the ring buffer.
    pub read: u64,
    /// Records that did not decode (a kernel object newer than the agent).
    pub decode_errors: u64,
    /// Records read since the live loop's last turn began ([`Self::next_event`]).
    turn_read: usize,
}

/// Records handed over per turn of the live loop before it looks at its other inputs.
const BATCH: usize = 4096;

impl RingSource {
    pub fn new(ring: RingBuf<MapData>) -> anyhow::Result<Self> {
        // SAFETY: the ring buffer's fd stays open for as long as the AsyncFd owns the map,
        // and nothing else registers it with the reactor.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE)? };
        Ok(RingSource { ring, decoder: Decoder::default(), read: 0, decode_errors: 0, turn_read: 0 })
    }

    /// The next event in the ring buffer, if any (without waiting), into `slot`, until
    /// [`BATCH`] were handed over in this turn of the live loop. Into the caller's slot: an
    /// event returned by value was copied twice more on its way (a few percent of the
    /// pipeline thread).
    pub fn ready_into(&mut self, slot: &mut Event) -> bool {
        self.turn_read < BATCH && self.decode_into(slot)
    }

    /// Hand over everything already in the ring buffer, without waiting.
    pub fn drain(&mut self, mut sink: impl FnMut(Event) -> anyhow::Result<()>) -> anyhow::Result<()> {
        while let Some(event) = self.decode_next() {
            sink(event)?;
        }
        Ok(())
    }

    /// The next record in the ring buffer, decoded. One at a time, straight from the ring:
    /// decoded in batches into a queue first (64, earlier 4,096), each 160-byte event was
    /// copied in and out of the queue, a tenth of the pipeline thread's time in copies.
    fn decode_next(&mut self) -> Option<Event> {
        self.decode_with(|event| event)
    }

    /// [`Self::decode_next`] into `slot`; false (and `slot` as it was) when the ring is empty.
    fn decode_into(&mut self, slot: &mut Event) -> bool {
        self.decode_with(|event| *slot = event).is_some()
    }

    /// The next event decoded, handed to `put`.
    #[inline(always)]
    fn decode_with<T>(&mut self, put: impl FnOnce(Event) -> T) -> Option<T> {
        let ring = self.ring.get_mut();
        loop {
            let item = ring.next()?;
            self.read += 1;
            self.turn_read += 1;
            match self.decoder.decode(&item) {
                Ok(event) => return Some(put(event)),
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

/// How often the ring buffer is read without a wake-up. The kernel submits events silently
/// until a quarter of the ring waits (then it wakes the agent), and wakes it at once for what
/// must be seen at once (an exec, a listen), so this bounds the delay of a quiet stream's
/// events. Each read starts with cold caches (the traced services ran meanwhile): the fewer,
/// the more events each handles warm. Under a uvicorn at 10,000 requests/s the agent's CPU
/// per exchange was 3.3 us reading every 20 ms, 2.9 us every 50 ms, 2.6 us every 100 ms
/// (waking at 512 KiB) on a faster machine; on session 21's, 3.24 us every 100 ms against
/// 2.99 every 250 ms waking at 1 MiB (paired 10 s runs), and 500 ms / 2 MiB gained no more.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl EventSource for RingSource {
    async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        self.turn_read = 0;
        loop {
            if let Some(event) = self.decode_next() {
                return Ok(Some(event));
            }
            tokio::select! {
                guard = self.ring.readable_mut() => guard?.clear_ready(),
                _ = tokio::time::sleep(POLL) => {}
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
