//! Which protocols each traced process speaks (`check --observe`): nothing announces a
//! protocol, so the agent watches the traffic for a while and names what it could read.
//! The same stages as `run` decide: the TLS binder ties OpenSSL plaintext to its socket, the
//! tracker turns connections into HTTP exchanges or database operations. A connection that
//! carried bytes but gave neither is `other`; one that began with a TLS handshake, or whose
//! plaintext came through the OpenSSL probes, is also `tls`.

use std::collections::{BTreeMap, HashMap};

use crate::{
    events::Event,
    http::{ConnTracker, Tracked, TrackerConfig},
    sink::EventSink,
    tls::{TlsBinder, binder::is_tls_handshake},
};

/// In report order.
pub const PROTOCOLS: [&str; 5] = ["http", "postgresql", "redis", "tls", "other"];
const HTTP: u8 = 1;
const TLS: u8 = 1 << 3;
const OTHER: u8 = 1 << 4;

/// Connections remembered at most (a short window; the rest are not classified).
const MAX_CONNS: usize = 100_000;

fn bit(name: &str) -> u8 {
    PROTOCOLS.iter().position(|p| *p == name).map_or(OTHER, |i| 1 << i)
}

#[derive(Clone, Copy)]
struct ConnSeen {
    pid: u32,
    service: Option<u32>,
    /// Protocol bits found on it.
    found: u8,
}

pub struct Census {
    tls: TlsBinder,
    tracker: ConnTracker,
    service_names: Vec<String>,
    conns: HashMap<u64, ConnSeen>,
    /// pid -> (service, protocol bits) of connections already folded in.
    pids: BTreeMap<u32, (Option<u32>, u8)>,
}

impl Census {
    pub fn new(service_names: Vec<String>) -> Census {
        let tracker = ConnTracker::new(TrackerConfig { service_names: service_names.clone(), ..Default::default() });
        Census { tls: TlsBinder::default(), tracker, service_names, conns: HashMap::new(), pids: BTreeMap::new() }
    }

    /// Per process: its service name (if selected by one) and the protocols seen, in order.
    pub fn report(&self) -> Vec<(u32, Option<String>, Vec<&'static str>)> {
        let mut pids = self.pids.clone();
        for c in self.conns.values() {
            fold(&mut pids, c);
        }
        pids.into_iter()
            .map(|(pid, (service, bits))| {
                let name = service.and_then(|s| self.service_names.get(s as usize).cloned());
                let found = PROTOCOLS.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, p)| *p);
                (pid, name, found.collect())
            })
            .collect()
    }
}

/// A connection's protocols into its process's: `other` only when nothing was read.
fn fold(pids: &mut BTreeMap<u32, (Option<u32>, u8)>, c: &ConnSeen) {
    let read = c.found & !(TLS | OTHER);
    let bits = if read == 0 && c.found & TLS == 0 { OTHER } else { c.found };
    let e = pids.entry(c.pid).or_insert((c.service, 0));
    e.1 |= bits;
}

impl EventSink for Census {
    fn event(&mut self, event: &mut Event) -> anyhow::Result<()> {
        let Census { tls, tracker, conns, pids, .. } = self;
        match event {
            Event::Data(d) => {
                if !conns.contains_key(&d.conn_id) && conns.len() >= MAX_CONNS {
                    return Ok(());
                }
                let c =
                    conns.entry(d.conn_id).or_insert(ConnSeen { pid: d.meta.pid, service: d.meta.service, found: 0 });
                if d.syscall.is_tls() || is_tls_handshake(&d.payload) {
                    c.found |= TLS;
                }
            }
            Event::ConnClose(c) => {
                // Its last exchange comes out of the tracker below, before it is folded.
                let conn_id = c.conn_id;
                let mut found = 0;
                tls.process(event, &mut |ev| tracker.handle(ev, &mut |t| found |= protocol(&t)));
                if let Some(mut seen) = conns.remove(&conn_id) {
                    seen.found |= found;
                    fold(pids, &seen);
                }
                return Ok(());
            }
            _ => {}
        }
        tls.process(event, &mut |ev| tracker.handle(ev, &mut |t| note(conns, &t)));
        Ok(())
    }

    fn tick(&mut self, now_ns: u64) -> anyhow::Result<()> {
        let Census { tls, tracker, conns, .. } = self;
        tls.expire(now_ns);
        tracker.expire(now_ns, &mut |t| note(conns, &t));
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let Census { tls, tracker, conns, .. } = self;
        tls.finish();
        tracker.finish(&mut |t| note(conns, &t));
        Ok(())
    }
}

/// The protocol an exchange or operation was read as (nothing for announcements).
fn protocol(t: &Tracked) -> u8 {
    let Tracked::Exchange(ex) = t else { return 0 };
    let read = ex.db.as_ref().map_or(HTTP, |op| bit(op.system.as_str()));
    read | if ex.tls { TLS } else { 0 }
}

fn note(conns: &mut HashMap<u64, ConnSeen>, t: &Tracked) {
    if let Tracked::Exchange(ex) = t {
        if let Some(c) = conns.get_mut(&ex.conn_id) {
            c.found |= protocol(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::script::{Script, get, ok};

    #[test]
    fn names_what_each_process_spoke() {
        let mut census = Census::new(vec!["web".into()]);
        let mut s = Script::accepted(1);
        s.recv(&get("/x")).send(&ok("hi")).close();
        // A Redis client connection, answered.
        let mut r = Script::connected(2);
        r.send(b"*1\r\n$4\r\nPING\r\n").recv(b"+PONG\r\n");
        // Bytes of no known protocol.
        let mut o = Script::connected(3);
        o.send(b"hello there, unknown protocol\n").recv(b"ok\n").close();
        for ev in s.take().iter().chain(r.take().iter()).chain(o.take().iter()) {
            census.event(&mut ev.clone()).unwrap();
        }
        census.finish().unwrap();
        let report = census.report();
        assert_eq!(report.len(), 1, "{report:?}");
        assert_eq!(report[0].2, vec!["http", "redis", "other"], "{report:?}");
    }
}
