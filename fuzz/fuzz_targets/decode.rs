//! The kernel event decoder (`decode::Decoder`) on arbitrary ring-buffer records: what
//! decodes goes on as the live agent sends it (the `--events` printer, a record file and
//! back, the HTTP pipeline).
//!
//! Input: records, each a u16 (little-endian) length and that many bytes; a length past
//! the end takes the rest.

#![no_main]

mod common;

use std::hint::black_box;
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use traceo_agent::decode::Decoder;
use traceo_agent::event_json::EventPrinter;
use traceo_agent::events::Event;
use traceo_agent::record::{RecordMeta, RecordReader, RecordWriter};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::default();
    let mut printer = EventPrinter::new(vec!["svc".into()]);
    let mut pipeline = common::Pipeline::new(16);
    let mut writer = RecordWriter::new(Vec::new(), &RecordMeta::default()).expect("in memory");
    let mut decoded: Vec<Event> = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let (record, tail) = rest[2..].split_at(len.min(rest.len() - 2));
        rest = tail;
        let Ok(event) = decoder.decode(record) else { continue };
        if let Event::Data(d) = &event {
            // Masking secrets keeps lengths (record files replay with their framing).
            assert_eq!(traceo_agent::scrub::scrub(&d.payload).len(), d.payload.len());
        }
        black_box(printer.to_json(&event).to_string());
        writer.write(&event).expect("in memory");
        pipeline.event(&event);
        decoded.push(event);
    }
    pipeline.finish();
    // Every decoded event survives a record file: same kind and metadata.
    let file = writer.finish().expect("in memory");
    let mut reader = RecordReader::new(Cursor::new(file)).expect("our own header");
    for want in &decoded {
        let got = reader.next_event().expect("our own record").expect("as many as written");
        assert_eq!(got.kind_name(), want.kind_name());
        assert_eq!(got.meta(), want.meta());
    }
    assert!(reader.next_event().expect("clean end").is_none());
});
