//! Standard output or error connected to a unix socket rather than a tty, pipe or file: a
//! service run by systemd writes to the journal's stdout stream socket, and some supervisors
//! hand out a socketpair. The kernel reports those writes as socket data (a socket is traced
//! as a connection); they are the process's log output all the same, so they become log
//! writes here, before any protocol detection sees them.

use std::collections::HashSet;

use crate::events::{Data, Direction, Event, Family};

/// Sockets remembered at most (one or two per traced process).
const MAX_SOCKETS: usize = 8192;

#[derive(Default)]
pub struct StdioSockets {
    /// Connection ids (socket inodes, unique on the host) of unix sockets seen on fd 1 or 2.
    conns: HashSet<u64>,
    /// Sockets not remembered because the set was full.
    pub overflow: u64,
}

impl StdioSockets {
    /// The log write `event` stands for, when it is a write to stdout or stderr that is such
    /// a socket; `None` for everything else (passed on as it is).
    pub fn log_write(&mut self, event: &Event) -> Option<Event> {
        match event {
            Event::ConnOpen(c) if c.family == Family::Unix && matches!(c.fd, 1 | 2) => {
                if self.conns.len() < MAX_SOCKETS {
                    self.conns.insert(c.conn_id);
                } else {
                    self.overflow += 1;
                }
                None
            }
            Event::ConnClose(c) => {
                self.conns.remove(&c.conn_id);
                None
            }
            Event::Data(d)
                if d.direction == Direction::Egress && matches!(d.fd, 1 | 2) && self.conns.contains(&d.conn_id) =>
            {
                // Log writes carry no connection (the kernel's own ones have id 0).
                Some(Event::LogWrite(Data { conn_id: 0, ..d.clone() }))
            }
            _ => None,
        }
    }
}
