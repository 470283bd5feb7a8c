//! One tracked connection: protocol detection, its parser, and request/response pairing,
//! turning parser outputs into exchanges and counters.

use crate::events::{Data, Direction};

use super::detect::{Detector, Verdict};
use super::exchange::{ConnInfo, Exchange, RequestSeen, Role, Tracked};
use super::h1::{Http1Parser, Limits};
use super::pairing::Pairing;
use super::parser::{HttpMessage, Kind, Output, ParseErrorKind, ProtocolParser, Rest, Segment};
use super::route::RouteNormalizer;
use super::stats::TrackerStats;

/// What a connection needs from the tracker while it works.
pub struct Ctx<'a> {
    pub stats: &'a mut TrackerStats,
    pub routes: &'a RouteNormalizer,
    pub out: &'a mut dyn FnMut(Tracked),
    /// How database operations are described.
    pub db: &'a crate::db::DbOptions,
    /// The parser's outputs, reused across connections: one per connection would keep its
    /// capacity (a few hundred bytes) for every idle keep-alive connection.
    pub scratch: &'a mut Vec<Output>,
    /// The limits a resting connection's parser is rebuilt with.
    pub limits: &'a Limits,
}

enum Proto {
    /// Boxed: only new connections detect, and every connection's slot is as big as the
    /// biggest state.
    Detecting(Box<(Detector, Box<dyn ProtocolParser>)>),
    Active(Box<dyn ProtocolParser>),
    /// HTTP/1 between messages with nothing held, idle: the parser is let go and rebuilt from
    /// this on the next bytes, in the same state (10,000 idle connections kept 720 B each).
    Resting(Rest),
    /// A database protocol (PostgreSQL, Redis): operations instead of exchanges.
    Db(Box<crate::db::DbConn>),
    /// Not HTTP (counted once), or finished: later bytes are ignored.
    Ignored,
}

pub struct Conn {
    pub info: ConnInfo,
    /// The process that opened (or first used) the connection; its exit ends it.
    pub pid: u32,
    /// Latest event time, for idle expiry.
    pub last_ns: u64,
    /// Known from an open event (not just from its data).
    pub opened: bool,
    proto: Proto,
    pairing: Pairing,
    /// Requests announced and exchanges emitted: pairing is first in, first out, so the n-th
    /// exchange answers the n-th announced request.
    requests_seen: u64,
    exchanges_out: u64,
    /// Restarted after a loss: the next exchange emitted is the first parsed afresh.
    resynced_after_loss: bool,
}

impl Conn {
    pub fn new(info: ConnInfo, pid: u32, now_ns: u64, parser: Box<dyn ProtocolParser>) -> Self {
        Conn::with(info, pid, now_ns, Proto::Detecting(Box::new((Detector::default(), parser))))
    }

    /// A connection known not to carry anything we parse (datagram sockets).
    pub fn ignored(info: ConnInfo, pid: u32, now_ns: u64) -> Self {
        Conn::with(info, pid, now_ns, Proto::Ignored)
    }

    fn with(info: ConnInfo, pid: u32, now_ns: u64, proto: Proto) -> Self {
        Conn {
            info,
            pid,
            last_ns: now_ns,
            opened: false,
            proto,
            pairing: Pairing::default(),
            resynced_after_loss: false,
            requests_seen: 0,
            exchanges_out: 0,
        }
    }

    /// The kernel lost some of its bytes: flush what is pending (flagged), then start over
    /// at the next start line with `parser` (a midstream one).
    pub fn resync_after_loss(&mut self, parser: Box<dyn ProtocolParser>, ctx: &mut Ctx<'_>) {
        self.info.lossy = true;
        self.finish(ctx);
        self.restart(parser);
        self.resynced_after_loss = true;
    }

    /// Start over with `parser`: the bytes seen so far were not this connection's HTTP.
    pub fn restart(&mut self, parser: Box<dyn ProtocolParser>) {
        self.proto = Proto::Detecting(Box::new((Detector::default(), parser)));
        self.pairing = Pairing::default();
    }

    pub fn on_data(&mut self, d: &mut Data, ctx: &mut Ctx<'_>) {
        let peer_eof = d.direction == Direction::Ingress && d.total_len == 0 && d.payload.is_empty();
        let direction = d.direction;
        Segment::from_data(d, |seg| self.on_segment(direction, seg, ctx));
        let responses_ended = self.request_direction() == Some(Direction::Egress);
        // A client whose peer closed can get no more responses: flush now. A server may
        // still answer what it read, so it waits for close.
        if peer_eof && responses_ended {
            self.finish(ctx);
        }
    }

    fn on_segment(&mut self, dir: Direction, seg: Segment, ctx: &mut Ctx<'_>) {
        self.wake(ctx.limits);
        match std::mem::replace(&mut self.proto, Proto::Ignored) {
            Proto::Detecting(mut detecting) => match detecting.0.push(dir, seg, detecting.1.as_ref()) {
                Verdict::Undecided => self.proto = Proto::Detecting(detecting),
                Verdict::NoMatch(held) => match crate::db::detect(&held, ctx.db) {
                    Some(db) => self.start_db(db, held, ctx),
                    None => ctx.stats.non_http_connections += 1,
                },
                // A connection joined midway (open before the agent came: a database pool
                // opened at startup) passes HTTP's lenient midstream check whatever it carries:
                // a database session is recognised first.
                Verdict::Match(held) => match self.info.midstream.then(|| crate::db::detect(&held, ctx.db)).flatten() {
                    Some(db) => self.start_db(db, held, ctx),
                    None => {
                        self.proto = Proto::Active(detecting.1);
                        for (d, s) in held {
                            self.feed(d, s, ctx);
                        }
                    }
                },
            },
            Proto::Active(parser) => {
                self.proto = Proto::Active(parser);
                self.feed(dir, seg, ctx);
            }
            Proto::Db(mut db) => {
                db.feed(dir, seg, &self.info, ctx.routes, ctx.out);
                self.proto = Proto::Db(db);
            }
            Proto::Resting(_) | Proto::Ignored => {}
        }
    }

    /// A resting connection's parser back, as it was let go.
    fn wake(&mut self, limits: &Limits) {
        if let Proto::Resting(rest) = self.proto {
            self.proto = Proto::Active(Box::new(Http1Parser::woken(limits.clone(), rest)));
        }
    }

    fn start_db(&mut self, db: crate::db::DbConn, held: Vec<(Direction, Segment)>, ctx: &mut Ctx<'_>) {
        ctx.stats.db_connections += 1;
        let mut db = Box::new(db);
        for (d, s) in held {
            db.feed(d, s, &self.info, ctx.routes, ctx.out);
        }
        self.proto = Proto::Db(db);
    }

    fn feed(&mut self, dir: Direction, seg: Segment, ctx: &mut Ctx<'_>) {
        let mut outputs = std::mem::take(ctx.scratch);
        if let Proto::Active(p) = &mut self.proto {
            p.parse(dir, seg, &mut outputs);
        }
        self.handle(&mut outputs, ctx);
        outputs.clear();
        *ctx.scratch = outputs;
    }

    /// Nothing happened on it for a while: give back room kept from earlier messages, and
    /// the parser itself when it rests between messages.
    pub fn release_idle(&mut self) {
        if let Proto::Active(parser) = &mut self.proto {
            match parser.rest() {
                Some(rest) => self.proto = Proto::Resting(rest),
                None => parser.release_idle(),
            }
        }
        self.pairing.release_if_empty();
    }

    /// The connection ended (close, exit, expiry, eviction): flush everything.
    pub fn finish(&mut self, ctx: &mut Ctx<'_>) {
        self.wake(ctx.limits);
        // Taken before the parser's finish, which forgets which side sent the requests.
        let role = self.role();
        if let Proto::Db(db) = &mut self.proto {
            db.finish(&self.info, ctx.routes, ctx.out);
        }
        if let Proto::Active(p) = &mut self.proto {
            let mut outputs = std::mem::take(ctx.scratch);
            p.finish(&mut outputs);
            if self.info.lossy {
                // A head cut by the kernel's loss is that loss (counted), not an unfinished head.
                outputs.retain(|o| !matches!(o, Output::Error(ParseErrorKind::IncompleteHead)));
            }
            self.handle_as(role, &mut outputs, ctx);
            *ctx.scratch = outputs;
        }
        let (unanswered, unpaired) = self.pairing.flush();
        ctx.stats.unpaired_responses += unpaired as u64;
        for req in unanswered {
            self.emit(role, req, None, ctx);
        }
        self.proto = Proto::Ignored;
    }

    /// Requests this server connection has read in full and not answered yet.
    pub fn in_flight_server_requests(&self) -> usize {
        if self.role() == Role::Server { self.pairing.pending_requests() } else { 0 }
    }

    fn role(&self) -> Role {
        match self.request_direction() {
            Some(Direction::Egress) => Role::Client,
            _ => Role::Server,
        }
    }

    /// Which direction carries requests, once an HTTP parser knows.
    fn request_direction(&self) -> Option<Direction> {
        match &self.proto {
            Proto::Active(p) => p.request_direction(),
            Proto::Resting(rest) => Some(rest.requests),
            Proto::Detecting(_) | Proto::Db(_) | Proto::Ignored => None,
        }
    }

    fn handle(&mut self, outputs: &mut Vec<Output>, ctx: &mut Ctx<'_>) {
        self.handle_as(self.role(), outputs, ctx);
    }

    fn handle_as(&mut self, role: Role, outputs: &mut Vec<Output>, ctx: &mut Ctx<'_>) {
        for o in outputs.drain(..) {
            match o {
                Output::Message(m) => {
                    if m.kind == Kind::Request {
                        self.announce(role, &m, ctx);
                    }
                    if let Some((req, resp)) = self.pairing.push(m) {
                        self.emit(role, req, resp, ctx);
                    }
                }
                Output::Error(kind) => ctx.stats.record_parse_error(kind, self.info.conn_id),
                Output::Resynced => ctx.stats.midstream_resyncs += 1,
                Output::UnpairedResponse => ctx.stats.unpaired_responses += 1,
                Output::NotThisProtocol => {
                    ctx.stats.non_http_connections += 1;
                    self.proto = Proto::Ignored;
                }
            }
        }
    }

    fn announce(&mut self, role: Role, req: &HttpMessage, ctx: &mut Ctx<'_>) {
        let seen = RequestSeen {
            conn_id: self.info.conn_id,
            seq: self.requests_seen,
            role,
            pid: req.pid,
            tid: req.tid,
            local: self.info.local,
            peer: self.info.peer,
            start_ns: req.start_ns,
            carried: crate::correlate::Carried::from_headers(&req.headers),
            task_ctx: self.info.request_ctx(req.task_ctx, self.requests_seen),
            shape: match role {
                Role::Server => crate::sentry::request_shape(
                    req.method.as_deref().unwrap_or_default(),
                    req.target.as_deref().unwrap_or_default(),
                ),
                Role::Client => 0,
            },
        };
        self.requests_seen += 1;
        (ctx.out)(Tracked::Request(seen));
    }

    fn emit(&mut self, role: Role, req: Box<HttpMessage>, resp: Option<Box<HttpMessage>>, ctx: &mut Ctx<'_>) {
        if resp.is_none() {
            ctx.stats.unpaired_requests += 1;
        }
        ctx.stats.exchanges += 1;
        let seq = self.exchanges_out;
        self.exchanges_out += 1;
        (ctx.out)(Tracked::Exchange(Box::new(Exchange::build(&self.info, role, seq, req, resp, ctx.routes))));
        // After a loss: the flushed exchanges and the first one parsed afresh are flagged.
        if self.info.lossy && self.resynced_after_loss {
            self.info.lossy = false;
            self.resynced_after_loss = false;
        }
    }
}
