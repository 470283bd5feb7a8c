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
}

/// Records drained per wake-up before yielding to the rest of the pipeline.
const BATCH: usize = 4096;

impl RingSource {
    pub fn new(ring: RingBuf<MapData>) -> anyhow::Result<Self> {
        // SAFETY: the ring buffer's fd stays open for as long as the AsyncFd owns the map,
        // and nothing else registers it with the reactor.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE)? };
        Ok(RingSource {
            ring,
            decoder: Decoder::default(),
            pending: VecDeque::with_capacity(BATCH),
            read: 0,
            decode_errors: 0,
        })
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

    /// Move up to a batch of records from the ring buffer into `pending`.
    fn fill(&mut self) {
        let ring = self.ring.get_mut();
        while self.pending.len() < BATCH {
            let Some(item) = ring.next() else { break };
            self.read += 1;
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

/// How often the ring buffer is read without a wake-up: the kernel submits events silently
/// until a backlog builds up, so this bounds the delay of a quiet stream.
const POLL: std::time::Duration = std::time::Duration::from_millis(5);

impl EventSource for RingSource {
    async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            self.fill();
            if !self.pending.is_empty() {
                continue;
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
        let event = self.reader.next_event().with_context(|| format!("replaying {}", self.path.display()))?;
        if event.is_none() && self.reader.truncated_tail {
            log::warn!("the record file ends inside a record (was the recorder killed?); the rest was replayed");
        }
        Ok(event)
    }
}
