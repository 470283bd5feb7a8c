//! Protobuf bytes written straight from the agent's data: building prost `Span`s and
//! `KeyValue`s per exchange, encoding them (prost sizes nested messages again at each level)
//! and freeing them was about 40% of the agent's CPU with export on. The output is byte for
//! byte prost's (fields in tag order, proto3 defaults left out, oneof members always
//! written): `tests` compares the two.

use super::attributes::{Attrs, ConnKey, OwnedConnKey};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

#[inline]
pub fn varint(buf: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        // Most are (keys, lengths of attributes): one byte, no loop.
        buf.push(v as u8);
        return;
    }
    let (bytes, n) = varint_array(v);
    buf.extend_from_slice(&bytes[..n]);
}

/// `v`'s varint bytes (the first `n` of the array), on the stack.
fn varint_array(mut v: u64) -> ([u8; 10], usize) {
    let (mut bytes, mut n) = ([0u8; 10], 0);
    while v >= 0x80 {
        bytes[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    bytes[n] = v as u8;
    (bytes, n + 1)
}

pub fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least 1.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// A length-delimited field (bytes, string, or an encoded message), written even if empty.
pub fn bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    bytes_header(buf, field, v.len());
    buf.extend_from_slice(v);
}

/// The one-byte key of length-delimited field `field` (below 16).
const fn tag(field: u32) -> u8 {
    (field << 3 | LEN) as u8
}

/// The key and length of a length-delimited field whose `len` bytes follow.
#[inline(always)]
pub fn bytes_header(buf: &mut Vec<u8>, field: u32, len: usize) {
    if field < 16 && len < 0x80 {
        // Both one byte (most attributes and their parts): one two-byte write, in line (a
        // call per header cost more than the write).
        buf.extend_from_slice(&[tag(field), len as u8]);
    } else {
        long_header(buf, field, len);
    }
}

#[inline(never)]
fn long_header(buf: &mut Vec<u8>, field: u32, len: usize) {
    key(buf, field, LEN);
    varint(buf, len as u64);
}

/// A proto3 string or bytes field: left out when empty.
pub fn opt_bytes(buf: &mut Vec<u8>, field: u32, v: &[u8]) {
    if !v.is_empty() {
        bytes(buf, field, v);
    }
}

/// A proto3 integer or enum field: left out when 0.
pub fn opt_varint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

pub fn opt_fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn opt_fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A message field whose body `body` writes; its length is patched in afterwards (one byte
/// reserved: most are short, a longer one moves its body once). For bodies whose length is
/// not known up front (an exception event, a link); attributes know theirs (`WireAttrs`).
pub fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    message_reserving(buf, field, 1, |b| {
        body(b);
        true
    });
}

/// [`message`] with `reserve` bytes kept for the length (2 for bodies of 128 bytes to 16 KiB,
/// as spans are: written in place, no move), and nothing left when `body` says there is no
/// message (`false`).
pub fn message_reserving(
    buf: &mut Vec<u8>,
    field: u32,
    reserve: usize,
    body: impl FnOnce(&mut Vec<u8>) -> bool,
) -> bool {
    let at = buf.len();
    key(buf, field, LEN);
    buf.resize(buf.len() + reserve, 0);
    let start = buf.len();
    if !body(buf) {
        buf.truncate(at);
        return false;
    }
    let len = buf.len() - start;
    // On the stack: a buffer allocated for it cost a malloc per span.
    let (prefix, n) = varint_array(len as u64);
    let prefix = &prefix[..n];
    if prefix.len() == reserve {
        buf[start - reserve..start].copy_from_slice(prefix);
    } else {
        buf.splice(start - reserve..start, prefix.iter().copied());
    }
    true
}

/// The encoded size of a length-delimited field of `len` bytes (fields 1 to 15: a one-byte key).
pub fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// A string field whose value is `parts` one after the other (no String joined first); left
/// out when empty, as `opt_bytes`.
pub fn opt_str_parts(buf: &mut Vec<u8>, field: u32, parts: &[&str]) {
    let len = parts.iter().map(|p| p.len()).sum();
    if len > 0 {
        str_parts(buf, field, len, parts);
    }
}

fn str_parts(buf: &mut Vec<u8>, field: u32, len: usize, parts: &[&str]) {
    bytes_header(buf, field, len);
    for p in parts {
        buf.extend_from_slice(p.as_bytes());
    }
}

/// Attributes as repeated `KeyValue` messages of field `field` (9 in a span, 3 in an event,
/// 4 in a link).
pub struct WireAttrs<'a> {
    pub buf: &'a mut Vec<u8>,
    pub field: u32,
    /// Where a span's connection attributes are kept for the connection's next span.
    pub runs: Option<&'a mut ConnRuns>,
}

impl<'a> WireAttrs<'a> {
    pub fn new(buf: &'a mut Vec<u8>, field: u32) -> WireAttrs<'a> {
        WireAttrs { buf, field, runs: None }
    }
}

/// Connections whose last span's connection attributes are kept encoded (by connection id,
/// one per slot; another connection on the slot replaces them).
const RUN_SLOTS: usize = 256;

/// The encoded connection attributes (`Attrs::connection`) of recent connections: a
/// connection's requests nearly always repeat them, and encoding them (two socket addresses
/// as text, the Host header split, eleven key-values) was a fifth of a span's encoding.
#[derive(Default)]
pub struct ConnRuns {
    slots: Vec<Run>,
    /// Spans that reused their connection's, and that encoded theirs (tests).
    pub hits: u64,
    pub misses: u64,
}

#[derive(Default)]
struct Run {
    key: OwnedConnKey,
    /// The `KeyValue`s' field number in `bytes` (9: a span's attributes).
    field: u32,
    bytes: Vec<u8>,
}

impl WireAttrs<'_> {
    /// `KeyValue { key = 1, value = 2 }` whose `AnyValue` is `any_len` bytes that `any`
    /// writes: every length is known before its bytes, so headers are written once, in place.
    #[inline(always)]
    fn kv(&mut self, k: &str, any_len: usize, any: impl FnOnce(&mut Vec<u8>)) {
        let key_len = if k.is_empty() { 0 } else { field_len(k.len()) };
        let body = key_len + field_len(any_len);
        if self.field < 16 && body < 0x80 && !k.is_empty() {
            // Every length one byte (most attributes): the KeyValue's and its key's headers in
            // one write, then the value's.
            self.buf.extend_from_slice(&[tag(self.field), body as u8, tag(1), k.len() as u8]);
            self.buf.extend_from_slice(k.as_bytes());
            self.buf.extend_from_slice(&[tag(2), any_len as u8]);
        } else {
            bytes_header(self.buf, self.field, body);
            opt_bytes(self.buf, 1, k.as_bytes());
            bytes_header(self.buf, 2, any_len);
        }
        any(self.buf);
    }
}

// AnyValue's oneof: string_value = 1, bool_value = 2, int_value = 3, array_value = 5.
impl Attrs for WireAttrs<'_> {
    fn connection(&mut self, key: &ConnKey<'_>, write: impl FnOnce(&mut Self)) {
        let Some(runs) = self.runs.take() else { return write(self) };
        if runs.slots.is_empty() {
            runs.slots.resize_with(RUN_SLOTS, Run::default);
        }
        let run = &mut runs.slots[(key.conn_id % RUN_SLOTS as u64) as usize];
        if run.field == self.field && run.key.matches(key) {
            runs.hits += 1;
            self.buf.extend_from_slice(&run.bytes);
        } else {
            runs.misses += 1;
            let start = self.buf.len();
            write(self);
            run.key.set(key);
            run.field = self.field;
            run.bytes.clear();
            run.bytes.extend_from_slice(&self.buf[start..]);
        }
        self.runs = Some(runs);
    }

    #[inline(always)]
    fn str(&mut self, k: &str, v: &str) {
        self.kv(k, field_len(v.len()), |b| bytes(b, 1, v.as_bytes()));
    }

    fn str_parts(&mut self, k: &str, parts: &[&str]) {
        let len = parts.iter().map(|p| p.len()).sum();
        self.kv(k, field_len(len), |b| str_parts(b, 1, len, parts));
    }

    #[inline(always)]
    fn int(&mut self, k: &str, v: impl Into<i64>) {
        let v = v.into() as u64;
        self.kv(k, 1 + varint_len(v), |b| {
            key(b, 3, VARINT);
            varint(b, v);
        });
    }

    #[inline(always)]
    fn bool(&mut self, k: &str, v: bool) {
        self.kv(k, 2, |b| {
            key(b, 2, VARINT);
            varint(b, u64::from(v));
        });
    }

    fn str_array(&mut self, k: &str, v: &str) {
        // ArrayValue { values: [AnyValue { string_value }] }
        let one = field_len(v.len());
        let array = field_len(one);
        self.kv(k, field_len(array), |b| {
            bytes_header(b, 5, array);
            bytes_header(b, 1, one);
            bytes(b, 1, v.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_long_messages_match_prost() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut ours = Vec::new();
            varint(&mut ours, v);
            assert_eq!(ours.len(), varint_len(v));
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(v, &mut theirs);
            assert_eq!(ours, theirs);
        }
        // Lengths below, in and above the bytes reserved for them.
        for (n, reserve) in [(300, 1), (5, 2), (300, 2), (20_000, 2)] {
            let long = "x".repeat(n);
            let mut ours = vec![9];
            assert!(message_reserving(&mut ours, 7, reserve, |b| {
                bytes(b, 1, long.as_bytes());
                true
            }));
            let mut theirs = vec![9];
            prost::encoding::message::encode(7, &long_msg(&long), &mut theirs);
            assert_eq!(ours, theirs, "{n} bytes, {reserve} reserved");
        }
        let mut ours = vec![9];
        assert!(!message_reserving(&mut ours, 7, 2, |b| {
            b.push(1);
            false
        }));
        assert_eq!(ours, [9], "no message, nothing left");
    }

    fn long_msg(s: &str) -> opentelemetry_proto::tonic::common::v1::AnyValue {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
        AnyValue { value: Some(Value::StringValue(s.to_owned())) }
    }
}
