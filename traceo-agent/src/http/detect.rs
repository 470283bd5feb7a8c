//! Deciding from a connection's first bytes whether a parser wants it; segments are held
//! (bounded) until it answers, then replayed in order.

use crate::events::Direction;

use super::parser::{CHECK_BYTES, Check, ProtocolParser, SegKind, Segment};
/// Segments held while undecided (tiny writes); past it the connection is not ours.
const MAX_HELD: usize = 64;

pub enum Verdict {
    Undecided,
    /// Feed these to the parser, in order.
    Match(Vec<(Direction, Segment)>),
    /// Not this parser's: the segments held so far, for another protocol's detection.
    NoMatch(Vec<(Direction, Segment)>),
}

#[derive(Default)]
pub struct Detector {
    held: Vec<(Direction, Segment)>,
    head: [Vec<u8>; 2],
}

impl Detector {
    pub fn push(&mut self, dir: Direction, seg: Segment, parser: &dyn ProtocolParser) -> Verdict {
        let i = match dir {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        };
        let verdict = match (&seg.kind, self.head.get_mut(i)) {
            (SegKind::Bytes(b), Some(head)) => {
                let room = CHECK_BYTES.saturating_sub(head.len());
                head.extend_from_slice(b.get(..room.min(b.len())).unwrap_or_default());
                parser.check(dir, head)
            }
            // The first bytes of this direction went uncaptured: let the parser resync.
            (SegKind::Gap(n), Some(head)) if *n > 0 && head.is_empty() => Check::Match,
            _ => Check::NeedMore,
        };
        self.held.push((dir, seg));
        match verdict {
            Check::Match => Verdict::Match(std::mem::take(&mut self.held)),
            Check::NoMatch => Verdict::NoMatch(std::mem::take(&mut self.held)),
            Check::NeedMore if self.held.len() > MAX_HELD => Verdict::NoMatch(std::mem::take(&mut self.held)),
            Check::NeedMore => Verdict::Undecided,
        }
    }
}
