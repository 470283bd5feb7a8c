//! The record-file reader (what `replay` runs) on arbitrary files: every record it accepts
//! goes through the `--events` printer, as `replay --events` would. (Arbitrary events through
//! the HTTP pipeline are the `decode` target's: running it here made each input ten times
//! slower for no code of the reader's.)
//!
//! Each input is read twice: as it is, and with every record's CRC-32 made right, so the
//! mutations also reach the record bodies behind the checksum.

#![no_main]

use std::hint::black_box;
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use traceo_agent::event_json::EventPrinter;
use traceo_agent::record::{MAGIC, RecordReader};

/// At most this many events per input (a record is at least 9 bytes, so inputs bound it too).
const MAX_EVENTS: usize = 4096;

fn replay(file: &[u8]) {
    let Ok(mut reader) = RecordReader::new(Cursor::new(file)) else { return };
    let mut printer = EventPrinter::new(reader.meta.services.clone());
    for _ in 0..MAX_EVENTS {
        match reader.next_event() {
            Ok(Some(event)) => {
                black_box(printer.to_json(&event).to_string());
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// `file` with the checksum after each record recomputed (records framed as the reader
/// frames them: u32 length, body, u32 CRC-32 of the body).
fn with_checksums(file: &[u8]) -> Option<Vec<u8>> {
    if file.len() < 14 || &file[..8] != MAGIC {
        return None;
    }
    let mut out = file.to_vec();
    let meta_len = u32::from_le_bytes(out[10..14].try_into().ok()?) as usize;
    let mut at = 14usize.checked_add(meta_len)?;
    while at + 4 <= out.len() {
        let len = u32::from_le_bytes(out[at..at + 4].try_into().ok()?) as usize;
        let end = at + 4 + len;
        if len == 0 || end + 4 > out.len() {
            break;
        }
        let crc = crc32fast::hash(&out[at + 4..end]);
        out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        at = end + 4;
    }
    (out != file).then_some(out)
}

fuzz_target!(|data: &[u8]| {
    replay(data);
    if let Some(fixed) = with_checksums(data) {
        replay(&fixed);
    }
});
