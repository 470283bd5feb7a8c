//! Pairing requests with responses on one HTTP/1.x connection: first in, first out.
//!
//! The parser only lets a response start once a request awaits it, so the n-th response
//! answers the n-th request. They may *complete* in either order (a server can answer before
//! the request body is in), hence two queues.

use std::collections::VecDeque;

use super::parser::{HttpMessage, Kind};

/// More unmatched messages than this on one connection: the oldest gives up.
const MAX_QUEUED: usize = 128;

/// A request and its response, or a request given up without one.
pub type Pair = (Box<HttpMessage>, Option<Box<HttpMessage>>);

#[derive(Debug, Default)]
pub struct Pairing {
    /// `None` while nothing waits and nothing was dropped: an idle connection keeps no queues.
    queues: Option<Box<Queues>>,
}

#[derive(Debug, Default)]
struct Queues {
    requests: VecDeque<Box<HttpMessage>>,
    responses: VecDeque<Box<HttpMessage>>,
    /// Responses dropped for lack of room.
    dropped: usize,
}

impl Pairing {
    /// Free the room kept from earlier messages if none waits (an idle connection).
    pub fn release_if_empty(&mut self) {
        let Some(q) = &mut self.queues else { return };
        if q.requests.is_empty() && q.responses.is_empty() && q.dropped == 0 {
            self.queues = None;
            return;
        }
        for q in [&mut q.requests, &mut q.responses] {
            if q.is_empty() && q.capacity() > 0 {
                *q = VecDeque::new();
            }
        }
    }

    pub fn push(&mut self, msg: Box<HttpMessage>) -> Option<Pair> {
        let q = self.queues.get_or_insert_with(Box::default);
        let (mine, theirs) = match msg.kind {
            Kind::Request => (&mut q.requests, &mut q.responses),
            Kind::Response => (&mut q.responses, &mut q.requests),
        };
        // Its counterpart waits and none of its own kind is ahead of it: the pair that queueing
        // it would make, without room for it (one queue fewer per connection).
        if mine.is_empty() {
            if let Some(other) = theirs.pop_front() {
                return Some(match msg.kind {
                    Kind::Request => (msg, Some(other)),
                    Kind::Response => (other, Some(msg)),
                });
            }
        }
        // Room for one at first (a queue's first growth is to four), more as pipelining needs.
        if mine.capacity() == 0 {
            mine.reserve_exact(1);
        }
        mine.push_back(msg);
        if !q.requests.is_empty() && !q.responses.is_empty() {
            if let (Some(req), Some(resp)) = (q.requests.pop_front(), q.responses.pop_front()) {
                return Some((req, Some(resp)));
            }
        }
        if q.requests.len() > MAX_QUEUED {
            if let Some(req) = q.requests.pop_front() {
                return Some((req, None));
            }
        }
        if q.responses.len() > MAX_QUEUED {
            q.responses.pop_front();
            q.dropped += 1;
        }
        None
    }

    /// Complete requests still waiting for their response.
    pub fn pending_requests(&self) -> usize {
        self.queues.as_ref().map_or(0, |q| q.requests.len())
    }

    /// The connection ended: requests left unanswered, and how many responses had no request.
    // Boxed as the parser made them: each goes on to its exchange as it is.
    #[allow(clippy::vec_box)]
    pub fn flush(&mut self) -> (Vec<Box<HttpMessage>>, usize) {
        let Some(mut q) = self.queues.take() else { return (Vec::new(), 0) };
        let unpaired = q.responses.len() + q.dropped;
        (q.requests.drain(..).collect(), unpaired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: Kind, n: u64) -> Box<HttpMessage> {
        Box::new(HttpMessage { kind, body_size: n, ..HttpMessage::default() })
    }

    #[test]
    fn pairs_in_order_whichever_completes_first() {
        let mut p = Pairing::default();
        assert_eq!(p.push(msg(Kind::Response, 10)), None);
        assert_eq!(p.push(msg(Kind::Request, 1)), Some((msg(Kind::Request, 1), Some(msg(Kind::Response, 10)))));
        assert_eq!(p.push(msg(Kind::Request, 2)), None);
        assert_eq!(p.push(msg(Kind::Request, 3)), None);
        assert_eq!(p.push(msg(Kind::Response, 20)), Some((msg(Kind::Request, 2), Some(msg(Kind::Response, 20)))));
        assert_eq!(p.flush(), (vec![msg(Kind::Request, 3)], 0));
    }

    #[test]
    fn bounded() {
        let mut p = Pairing::default();
        for i in 0..MAX_QUEUED as u64 {
            assert_eq!(p.push(msg(Kind::Request, i)), None);
        }
        assert_eq!(p.push(msg(Kind::Request, 999)), Some((msg(Kind::Request, 0), None)));
    }
}
