//! `--events` output: one JSON object per kernel event, with the connection's addresses.

use std::{collections::HashMap, net::SocketAddr};

use serde_json::{Value, json};

use crate::events::{Event, Family};

/// Connections remembered for their addresses; past this, the oldest half is forgotten.
const MAX_CONNS: usize = 65_536;

#[derive(Default)]
pub struct EventPrinter {
    services: Vec<String>,
    conns: HashMap<u64, (Option<SocketAddr>, Option<SocketAddr>, u64)>,
    seq: u64,
}

/// Payload as text: valid UTF-8 kept, every other byte written as `\xNN`.
pub fn escape_payload(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn addr(a: Option<SocketAddr>) -> Value {
    a.map_or(Value::Null, |a| Value::String(a.to_string()))
}

impl EventPrinter {
    pub fn new(services: Vec<String>) -> Self {
        EventPrinter { services, ..Default::default() }
    }

    fn remember(&mut self, conn_id: u64, local: Option<SocketAddr>, peer: Option<SocketAddr>) {
        if self.conns.len() >= MAX_CONNS {
            let cutoff = self.seq.saturating_sub(MAX_CONNS as u64 / 2);
            self.conns.retain(|_, (_, _, seen)| *seen > cutoff);
        }
        self.seq += 1;
        self.conns.insert(conn_id, (local, peer, self.seq));
    }

    pub fn to_json(&mut self, event: &Event) -> Value {
        let meta = event.meta();
        let service = meta.service.and_then(|i| self.services.get(i as usize).cloned());
        let mut v = json!({
            "kind": event.kind_name(),
            "ts_ns": meta.ts_ns,
            "pid": meta.pid,
            "tid": meta.tid,
            "service": service,
        });
        let obj = v.as_object_mut().expect("object");
        match event {
            Event::LogWrite(d) => {
                obj.extend(no_connection());
                obj.extend([
                    ("fd".into(), json!(d.fd)),
                    ("stream".into(), json!(crate::logs::stream_name(d.fd))),
                    ("syscall".into(), json!(d.syscall.as_str())),
                    ("len".into(), json!(d.total_len)),
                    ("captured".into(), json!(d.payload.len())),
                    ("truncated".into(), json!(d.truncated)),
                    ("data".into(), json!(escape_payload(&crate::logs::redact::scrub_log(&d.payload)))),
                ]);
                if d.task_ctx != 0 {
                    obj.insert("task_ctx".into(), json!(format!("{:#x}", d.task_ctx)));
                }
            }
            Event::Data(d) => {
                let (local, peer) = self.conns.get(&d.conn_id).map_or((None, None), |c| (c.0, c.1));
                let mut flags = vec![];
                for (set, name) in [
                    (d.truncated, "truncated"),
                    (d.read_failed, "read_failed"),
                    (d.no_payload, "no_payload"),
                    (d.after_loss, "after_loss"),
                ] {
                    if set {
                        flags.push(name);
                    }
                }
                obj.extend([
                    ("conn_id".into(), json!(d.conn_id)),
                    ("fd".into(), json!(d.fd)),
                    ("direction".into(), json!(d.direction.as_str())),
                    ("syscall".into(), json!(d.syscall.as_str())),
                    ("local".into(), addr(local)),
                    ("peer".into(), addr(peer)),
                    ("enter_ns".into(), json!(d.enter_ns)),
                    ("exit_ns".into(), json!(d.exit_ns)),
                    ("ret".into(), json!(d.ret)),
                    ("len".into(), json!(d.total_len)),
                    ("captured".into(), json!(d.payload.len())),
                    ("flags".into(), json!(flags)),
                    ("data".into(), json!(escape_payload(&crate::scrub::scrub(&d.payload)))),
                ]);
                if d.task_ctx != 0 {
                    obj.insert("task_ctx".into(), json!(format!("{:#x}", d.task_ctx)));
                }
            }
            Event::ConnOpen(c) | Event::ConnClose(c) | Event::Listen(c) => {
                let (local, peer) = if matches!(event, Event::ConnOpen(_)) {
                    self.remember(c.conn_id, c.local, c.peer);
                    (c.local, c.peer)
                } else {
                    self.conns.remove(&c.conn_id).map_or((None, None), |c| (c.0, c.1))
                };
                obj.extend([
                    ("conn_id".into(), json!(c.conn_id)),
                    ("fd".into(), json!(c.fd)),
                    ("direction".into(), Value::Null),
                    ("how".into(), json!(c.how.map(|h| h.as_str()))),
                    ("family".into(), json!(c.family.as_str())),
                    ("unix".into(), json!(c.family == Family::Unix)),
                    ("local".into(), addr(local)),
                    ("peer".into(), addr(peer)),
                    ("comm".into(), json!(c.comm)),
                    ("len".into(), json!(0)),
                    ("data".into(), Value::Null),
                ]);
            }
            Event::Exec(p) | Event::Fork(p) | Event::Exit(p) => {
                obj.extend(no_connection());
                obj.extend([("parent_pid".into(), json!(p.parent_pid)), ("comm".into(), json!(p.comm))]);
            }
            Event::Task(t) => {
                obj.extend(no_connection());
                obj.extend([
                    ("parent_ctx".into(), json!(format!("{:#x}", t.parent_ctx))),
                    ("task_ctx".into(), json!(format!("{:#x}", t.child_ctx))),
                ]);
            }
        }
        v
    }
}

/// The connection fields of an event about no connection (process and task events).
fn no_connection() -> [(String, Value); 6] {
    [
        ("conn_id".into(), Value::Null),
        ("direction".into(), Value::Null),
        ("local".into(), Value::Null),
        ("peer".into(), Value::Null),
        ("len".into(), json!(0)),
        ("data".into(), Value::Null),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_invalid_bytes() {
        assert_eq!(escape_payload(b"GET / \xff\x00ok \xc3\xa9"), "GET / \\xff\u{0}ok \u{e9}");
    }

    #[test]
    fn data_events_carry_the_connection_addresses() {
        let mut printer = EventPrinter::new(vec!["engine".into()]);
        let events = crate::record::tests_support::sample_events();
        let lines: Vec<Value> = events.iter().map(|e| printer.to_json(e)).collect();
        assert_eq!(lines[0]["kind"], "conn_open");
        assert_eq!(lines[1]["kind"], "data");
        assert_eq!(lines[1]["service"], "engine");
        assert_eq!(lines[1]["local"], "[::1]:8000");
        assert_eq!(lines[1]["peer"], "[::1]:40000");
        assert_eq!(lines[1]["direction"], "ingress");
        assert_eq!(lines[1]["data"], "GET / HTTP/1.1\r\n\r\n");
        assert_eq!(lines[1]["len"], 18);
        assert_eq!(lines[2]["flags"], json!(["truncated", "read_failed", "no_payload"]));
        assert_eq!(lines[3]["kind"], "conn_close");
        assert_eq!(lines[3]["local"], "[::1]:8000");
        assert_eq!(lines[4]["parent_pid"], 7);
    }
}
