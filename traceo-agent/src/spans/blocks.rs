//! Encoded spans gathered per resource into blocks until they go to the exporter: one
//! hand-over (a lock) per block instead of per span.

use std::sync::Arc;

use super::{Exporter, ResourceEntry, SpanBlock};

/// A block goes once it holds this many spans or bytes.
const BLOCK_SPANS: usize = 32;
const BLOCK_BYTES: usize = 32 * 1024;
/// A new block buffer's capacity: a quarter of a full block, so it grows at most twice (from
/// nothing it was copied a dozen times), while a block handed over nearly empty (the pipeline
/// caught up with a quiet stream) holds little room idle.
const BLOCK_CAPACITY: usize = 8 * 1024;
/// Resources with a block open at most (a resource is a traced process's service: a server's
/// worker processes each have one, and their spans come interleaved). Past it, the fullest
/// block goes: the others keep filling.
const MAX_OPEN: usize = 32;

/// Where finished blocks go, and emptied ones come back from.
pub trait BlockSink {
    fn spare(&mut self) -> Option<SpanBlock>;
    fn send(&mut self, resource: Arc<ResourceEntry>, block: SpanBlock);
}

impl BlockSink for Exporter {
    fn spare(&mut self) -> Option<SpanBlock> {
        Exporter::spare(self)
    }
    fn send(&mut self, resource: Arc<ResourceEntry>, block: SpanBlock) {
        Exporter::send(self, resource, block);
    }
}

/// The blocks not yet handed over, one per resource.
#[derive(Default)]
pub struct OpenBlocks {
    open: Vec<(Arc<ResourceEntry>, SpanBlock)>,
    /// The block the last span went to (most spans follow one of the same process).
    last: usize,
}

impl OpenBlocks {
    /// Add one encoded span to its resource's block, and send what is full.
    #[cfg(test)]
    pub fn push(&mut self, resource: Arc<ResourceEntry>, span: &[u8], sink: &mut impl BlockSink) {
        self.push_with(resource, sink, |b| {
            b.extend_from_slice(span);
            true
        });
    }

    /// Add the span `encode` writes (if any) to its resource's block, and send what is full.
    pub fn push_with(
        &mut self,
        resource: Arc<ResourceEntry>,
        sink: &mut impl BlockSink,
        encode: impl FnOnce(&mut Vec<u8>) -> bool,
    ) {
        let same = |(r, _): &(Arc<ResourceEntry>, SpanBlock)| Arc::ptr_eq(r, &resource);
        let i = match self.open.get(self.last).filter(|o| same(o)) {
            Some(_) => self.last,
            None => match self.open.iter().position(same) {
                Some(i) => i,
                None => {
                    if self.open.len() >= MAX_OPEN {
                        self.send_fullest(sink);
                    }
                    let mut block = sink.spare().unwrap_or_else(|| SpanBlock::with_capacity(BLOCK_CAPACITY));
                    block.clear();
                    self.open.push((resource, block));
                    self.open.len() - 1
                }
            },
        };
        self.last = i;
        let Some((_, block)) = self.open.get_mut(i) else { return };
        block.push_with(encode);
        if block.spans >= BLOCK_SPANS || block.bytes.len() >= BLOCK_BYTES {
            let (resource, block) = self.open.swap_remove(i);
            sink.send(resource, block);
        }
    }

    fn send_fullest(&mut self, sink: &mut impl BlockSink) {
        let fullest = self.open.iter().enumerate().max_by_key(|(_, (_, b))| b.spans).map(|(i, _)| i);
        if let Some(i) = fullest {
            let (resource, block) = self.open.swap_remove(i);
            sink.send(resource, block);
        }
    }

    /// Send every open block (one opened for a span that was not written holds none).
    pub fn flush(&mut self, sink: &mut impl BlockSink) {
        for (resource, block) in self.open.drain(..).filter(|(_, b)| b.spans > 0) {
            sink.send(resource, block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What was sent: (service, spans) per block.
    #[derive(Default)]
    struct Sent(Vec<(String, usize)>);

    impl BlockSink for Sent {
        fn spare(&mut self) -> Option<SpanBlock> {
            None
        }
        fn send(&mut self, resource: Arc<ResourceEntry>, block: SpanBlock) {
            self.0.push((resource.service.clone(), block.spans));
        }
    }

    fn resource(n: usize) -> Arc<ResourceEntry> {
        Arc::new(ResourceEntry { service: format!("s{n}"), pid: n as u32, resource: Default::default() })
    }

    #[test]
    fn a_block_goes_when_full_and_the_rest_on_flush() {
        let (a, b) = (resource(0), resource(1));
        let mut blocks = OpenBlocks::default();
        let mut sent = Sent::default();
        for k in 0..BLOCK_SPANS + 3 {
            blocks.push(a.clone(), b"span", &mut sent);
            if k % 2 == 0 {
                blocks.push(b.clone(), b"span", &mut sent);
            }
        }
        assert_eq!(sent.0, vec![("s0".to_owned(), BLOCK_SPANS)], "only the full block goes");
        blocks.flush(&mut sent);
        sent.0.sort();
        assert_eq!(sent.0, vec![("s0".to_owned(), 3), ("s0".to_owned(), BLOCK_SPANS), ("s1".to_owned(), 18)]);
    }

    #[test]
    fn past_the_open_limit_only_the_fullest_block_goes() {
        let resources: Vec<_> = (0..=MAX_OPEN).map(resource).collect();
        let mut blocks = OpenBlocks::default();
        let mut sent = Sent::default();
        // Each resource holds a few spans (fewer than a full block); s7 the most.
        for (n, r) in resources.iter().take(MAX_OPEN).enumerate() {
            let spans = if n == 7 { BLOCK_SPANS - 1 } else { 1 + n % 4 };
            for _ in 0..spans {
                blocks.push(r.clone(), b"span", &mut sent);
            }
        }
        assert!(sent.0.is_empty(), "{:?}", sent.0);
        // One resource more: the fullest open block makes room, the others stay open.
        blocks.push(resources[MAX_OPEN].clone(), b"span", &mut sent);
        assert_eq!(sent.0, vec![("s7".to_owned(), BLOCK_SPANS - 1)]);
        blocks.flush(&mut sent);
        assert_eq!(sent.0.len(), 1 + MAX_OPEN, "every other block was still open");
        let total: usize = sent.0.iter().map(|(_, n)| n).sum();
        let expected = (BLOCK_SPANS - 1) + (0..MAX_OPEN).filter(|&n| n != 7).map(|n| 1 + n % 4).sum::<usize>() + 1;
        assert_eq!(total, expected, "no span lost");
    }
}
