//! Writes -> records: lines, with multi-line records kept whole.
//!
//! Per (process, stream, thread): a record's continuation lines come from the thread that
//! wrote its first line (Python's logging writes a whole record, traceback included, in one
//! call under the handler's lock; `traceback.print_exc` writes line by line from one thread),
//! so threads writing to one stream at once never merge their records.
//!
//! What continues the record being assembled (Python's shapes; other runtimes' indented
//! stack frames come along through the first rule):
//! - an indented line (traceback frames, source lines, `^^^` markers, exception groups);
//! - `Traceback (most recent call last):` right after a one-line record (`logger.exception`)
//!   or after a chain marker;
//! - the exception line (`ValueError: boom`) right after an indented frame line;
//! - after an exception line: blank lines, then `During handling of the above exception,
//!   another exception occurred:` or `The above exception was the direct cause of the
//!   following exception:` (a chained exception), then its `Traceback` line.
//!
//! A record is complete when the next record starts, when its stream was quiet for
//! `quiet_ns`, or at the end. Bounded: a record keeps at most `max_record` bytes (the rest is
//! counted, the record marked truncated), a partial line at most as much, at most
//! `max_streams` streams are assembled at once (the oldest is flushed).

use std::collections::HashMap;

/// One write to a log stream.
#[derive(Clone, Debug)]
pub struct Write<'a> {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub service: Option<u32>,
    pub ts_ns: u64,
    pub task_ctx: u64,
    pub bytes: &'a [u8],
}

/// An assembled record, before parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub service: Option<u32>,
    /// When its first line was written.
    pub ts_ns: u64,
    /// The writer's runtime context at its first line.
    pub task_ctx: u64,
    /// Its lines, joined with `\n`, without the final newline.
    pub text: String,
    pub truncated: bool,
    /// Several records started in one write, or a write ended mid-line: the bytes were
    /// buffered by the process (block-buffered stdout) and written by whoever flushed them,
    /// so the writer's thread and task say nothing about these records.
    pub batched: bool,
    /// Which write (a sequence number of the assembler's) started it.
    first_write: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A one-line record so far.
    Line,
    /// Inside a traceback: frames so far.
    Frames,
    /// An exception line ended a traceback: a chain may follow.
    AfterException,
    /// A chain marker was read: its traceback follows.
    Chained,
}

struct Pending {
    record: RawRecord,
    shape: Shape,
    /// The last line was indented.
    last_indented: bool,
    /// Blank lines read after an exception line, kept only if a chain marker follows.
    blanks: usize,
    last_ns: u64,
}

#[derive(Default)]
struct Stream {
    /// A line not ended yet.
    partial: Vec<u8>,
    pending: Option<Pending>,
    last_ns: u64,
}

pub struct AssemblerConfig {
    pub max_record: usize,
    pub max_streams: usize,
    pub quiet_ns: u64,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        AssemblerConfig { max_record: 64 * 1024, max_streams: 4096, quiet_ns: 200_000_000 }
    }
}

pub struct Assembler {
    cfg: AssemblerConfig,
    streams: HashMap<(u32, i32, u32), Stream>,
    writes: u64,
    /// Bytes dropped by the bounds.
    pub dropped_bytes: u64,
}

const TRACEBACK: &str = "Traceback (most recent call last):";
const CHAIN_MARKERS: [&str; 2] = [
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
];

fn is_indented(line: &str) -> bool {
    line.starts_with([' ', '\t'])
}

impl Assembler {
    pub fn new(cfg: AssemblerConfig) -> Assembler {
        Assembler { cfg, streams: HashMap::new(), writes: 0, dropped_bytes: 0 }
    }

    /// Take one write; complete records come out through `out`.
    pub fn write(&mut self, w: &Write, out: &mut impl FnMut(RawRecord)) {
        self.writes += 1;
        let seq = self.writes;
        let mut done = Vec::new();
        self.lines(w, seq, &mut |r| done.push(r));
        let key = (w.pid, w.fd, w.tid);
        let pending = self.streams.get_mut(&key).and_then(|s| s.pending.as_mut()).map(|p| &mut p.record);
        let started = done.iter().filter(|r| r.first_write == seq).count()
            + usize::from(pending.as_ref().is_some_and(|r| r.first_write == seq));
        if started >= 2 || (started == 1 && !w.bytes.ends_with(b"\n")) {
            done.iter_mut().chain(pending).filter(|r| r.first_write == seq).for_each(|r| r.batched = true);
        }
        done.into_iter().for_each(out);
    }

    fn lines(&mut self, w: &Write, seq: u64, out: &mut impl FnMut(RawRecord)) {
        let key = (w.pid, w.fd, w.tid);
        if !self.streams.contains_key(&key) && self.streams.len() >= self.cfg.max_streams {
            if let Some(oldest) = self.streams.iter().min_by_key(|(_, s)| s.last_ns).map(|(k, _)| *k) {
                if let Some(s) = self.streams.remove(&oldest) {
                    self.dropped_bytes += s.partial.len() as u64;
                    if let Some(p) = s.pending {
                        out(p.record);
                    }
                }
            }
        }
        let max = self.cfg.max_record;
        let stream = self.streams.entry(key).or_default();
        stream.last_ns = w.ts_ns;
        let mut rest = w.bytes;
        // A line begun by an earlier write: the process's output is buffered in blocks.
        let mut split = !stream.partial.is_empty();
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            let room = max.saturating_sub(stream.partial.len());
            self.dropped_bytes += line.len().saturating_sub(room) as u64;
            stream.partial.extend_from_slice(&line[..line.len().min(room)]);
            let mut bytes = std::mem::take(&mut stream.partial);
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            let text = String::from_utf8_lossy(&bytes);
            line_in(stream, &text, (w, seq, std::mem::take(&mut split)), max, &mut self.dropped_bytes, out);
        }
        let room = max.saturating_sub(stream.partial.len());
        self.dropped_bytes += rest.len().saturating_sub(room) as u64;
        stream.partial.extend_from_slice(&rest[..rest.len().min(room)]);
    }

    /// Complete the records of streams quiet since `now_ns - quiet_ns`; forget idle streams.
    pub fn tick(&mut self, now_ns: u64, out: &mut impl FnMut(RawRecord)) {
        let cutoff = now_ns.saturating_sub(self.cfg.quiet_ns);
        for s in self.streams.values_mut() {
            if s.pending.as_ref().is_some_and(|p| p.last_ns < cutoff) {
                if let Some(p) = s.pending.take() {
                    out(p.record);
                }
            }
        }
        self.streams.retain(|_, s| s.pending.is_some() || !s.partial.is_empty() || s.last_ns >= cutoff);
    }

    /// The end: every pending record and partial line goes out.
    pub fn finish(&mut self, out: &mut impl FnMut(RawRecord)) {
        let mut keys: Vec<_> = self.streams.keys().copied().collect();
        keys.sort_unstable();
        for k in keys {
            let Some(mut s) = self.streams.remove(&k) else { continue };
            if let Some(p) = s.pending.take() {
                out(p.record);
            }
            if !s.partial.is_empty() {
                let text = String::from_utf8_lossy(&s.partial).into_owned();
                out(RawRecord {
                    pid: k.0,
                    tid: k.2,
                    fd: k.1,
                    service: None,
                    ts_ns: s.last_ns,
                    task_ctx: 0,
                    text,
                    truncated: false,
                    batched: true,
                    first_write: 0,
                });
            }
        }
    }

    /// Records being assembled now (a gauge).
    pub fn pending(&self) -> usize {
        self.streams.values().filter(|s| s.pending.is_some()).count()
    }
}

/// One complete line of a stream.
fn line_in(
    stream: &mut Stream,
    line: &str,
    (w, seq, split): (&Write, u64, bool),
    max: usize,
    dropped: &mut u64,
    out: &mut impl FnMut(RawRecord),
) {
    let blank = line.trim().is_empty();
    if let Some(p) = &mut stream.pending {
        let same_writer = p.record.task_ctx == w.task_ctx;
        let cont = same_writer
            && match p.shape {
                _ if blank => p.shape == Shape::AfterException || p.shape == Shape::Chained,
                Shape::AfterException if CHAIN_MARKERS.contains(&line.trim_end()) => true,
                _ if is_indented(line) => p.shape != Shape::AfterException || p.blanks == 0,
                Shape::Line => line.trim_end() == TRACEBACK && !p.record.text.contains('\n'),
                Shape::Chained => line.trim_end() == TRACEBACK,
                Shape::Frames => p.last_indented,
                Shape::AfterException => false,
            };
        if cont {
            if blank {
                p.blanks += 1;
                return;
            }
            let text = line.trim_end();
            p.shape = match p.shape {
                _ if CHAIN_MARKERS.contains(&text) => Shape::Chained,
                _ if text == TRACEBACK => Shape::Frames,
                Shape::Frames if !is_indented(line) => Shape::AfterException,
                s => s,
            };
            // Blank lines between an exception and its chain marker (or the marker and
            // its traceback) are part of the record.
            for _ in 0..std::mem::take(&mut p.blanks) {
                push_line(&mut p.record, "", max, dropped);
            }
            push_line(&mut p.record, line, max, dropped);
            p.record.batched |= split;
            p.last_indented = is_indented(line);
            p.last_ns = w.ts_ns;
            return;
        }
        if let Some(p) = stream.pending.take() {
            out(p.record);
        }
    }
    if blank {
        return;
    }
    let shape = if line.trim_end() == TRACEBACK { Shape::Frames } else { Shape::Line };
    let mut record = RawRecord {
        pid: w.pid,
        tid: w.tid,
        fd: w.fd,
        service: w.service,
        ts_ns: w.ts_ns,
        task_ctx: w.task_ctx,
        text: String::new(),
        truncated: false,
        batched: split,
        first_write: seq,
    };
    push_line(&mut record, line, max, dropped);
    stream.pending = Some(Pending { record, shape, last_indented: false, blanks: 0, last_ns: w.ts_ns });
}

fn push_line(r: &mut RawRecord, line: &str, max: usize, dropped: &mut u64) {
    let sep = usize::from(!r.text.is_empty());
    if r.text.len() + sep + line.len() > max {
        r.truncated = true;
        *dropped += line.len() as u64;
        return;
    }
    if sep == 1 {
        r.text.push('\n');
    }
    r.text.push_str(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const CHAINED: &str = "ERROR:app:failed to load\n\
Traceback (most recent call last):\n  File \"/app/main.py\", line 10, in load\n    int(x)\n    ~~~^^^\n\
ValueError: invalid literal for int() with base 10: 'x'\n\
\n\
During handling of the above exception, another exception occurred:\n\
\n\
Traceback (most recent call last):\n  File \"/app/main.py\", line 12, in load\n    raise LoadError(\"bad\") from None\n\
app.errors.LoadError: bad\n";

    fn assemble(chunks: &[&[u8]]) -> Vec<String> {
        let mut a = Assembler::new(AssemblerConfig::default());
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let w = Write { pid: 1, tid: 2, fd: 2, service: None, ts_ns: i as u64, task_ctx: 0, bytes: c };
            a.write(&w, &mut |r| out.push(r.text));
        }
        a.finish(&mut |r| out.push(r.text));
        out
    }

    #[test]
    fn tracebacks_and_chains_stay_whole() {
        let input = format!("INFO:app:starting\n{CHAINED}WARNING:app:next\n");
        let out = assemble(&[input.as_bytes()]);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[0], "INFO:app:starting");
        assert_eq!(out[1], CHAINED.trim_end());
        assert_eq!(out[2], "WARNING:app:next");
    }

    #[test]
    fn direct_cause_chains_and_bare_tracebacks() {
        let text = "Traceback (most recent call last):\n  File \"a.py\", line 1, in <module>\nKeyError: 'k'\n\n\
The above exception was the direct cause of the following exception:\n\n\
Traceback (most recent call last):\n  File \"a.py\", line 3, in <module>\nRuntimeError: wrapped\n\
plain line after\n";
        let out = assemble(&[text.as_bytes()]);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert!(out[0].starts_with("Traceback") && out[0].ends_with("RuntimeError: wrapped"));
        assert_eq!(out[1], "plain line after");
    }

    #[test]
    fn blank_lines_after_a_traceback_without_a_chain_are_not_kept() {
        let out = assemble(&[b"Traceback (most recent call last):\n  File \"a\", line 1\nE: x\n\n\nnext\n"]);
        assert_eq!(
            out,
            vec!["Traceback (most recent call last):\n  File \"a\", line 1\nE: x".to_owned(), "next".into()]
        );
    }

    #[test]
    fn two_one_line_records_do_not_merge() {
        let out = assemble(&[b"INFO:a:one\nERROR:a:two\n", b"Traceback (most recent call last):\n  x\nE\n"]);
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!(out[0], "INFO:a:one");
        assert!(out[1].starts_with("ERROR:a:two\nTraceback"));
    }

    #[test]
    fn several_records_in_one_write_are_marked_batched() {
        let mut a = Assembler::new(AssemblerConfig::default());
        let mut out = Vec::new();
        let w = |bytes: &'static [u8]| Write { pid: 1, tid: 1, fd: 1, service: None, ts_ns: 0, task_ctx: 0, bytes };
        // logging's one write per record: not batched, a traceback included.
        a.write(&w(b"INFO:a:one\n"), &mut |r| out.push(r));
        a.write(&w(b"ERROR:a:two\nTraceback (most recent call last):\n  x\nE: y\n"), &mut |r| out.push(r));
        // A block-buffered stdout flushed at 8 KiB: several records, the last cut mid-line.
        a.write(&w(b"line 1\nline 2\nline"), &mut |r| out.push(r));
        a.write(&w(b" 3\n"), &mut |r| out.push(r));
        a.finish(&mut |r| out.push(r));
        let got: Vec<(&str, bool)> = out.iter().map(|r| (r.text.as_str(), r.batched)).collect();
        assert_eq!(
            got,
            vec![
                ("INFO:a:one", false),
                ("ERROR:a:two\nTraceback (most recent call last):\n  x\nE: y", false),
                ("line 1", true),
                ("line 2", true),
                ("line 3", true)
            ]
        );
    }

    #[test]
    fn bounded() {
        let mut a = Assembler::new(AssemblerConfig { max_record: 32, max_streams: 2, quiet_ns: 10 });
        let mut out = Vec::new();
        let big = format!("{}\n  {}\n", "x".repeat(20), "y".repeat(40));
        let w = Write { pid: 1, tid: 1, fd: 1, service: None, ts_ns: 0, task_ctx: 0, bytes: big.as_bytes() };
        a.write(&w, &mut |r| out.push(r));
        for tid in 2..5 {
            a.write(&Write { tid, ..w.clone() }, &mut |r| out.push(r));
        }
        assert!(a.streams.len() <= 2);
        a.finish(&mut |r| out.push(r));
        assert!(out.iter().all(|r| r.text.len() <= 32));
        assert!(out[0].truncated && a.dropped_bytes > 0);
    }

    proptest! {
        /// Whatever the split into writes, the same records come out.
        #[test]
        fn any_split_gives_the_same_records(cuts in proptest::collection::vec(0usize..400, 0..8)) {
            let input = format!("INFO:app:a\n{CHAINED}{{\"level\": \"info\", \"msg\": \"j\"}}\nlevel=info msg=x\n");
            let bytes = input.as_bytes();
            let whole = assemble(&[bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts {
                chunks.push(&bytes[last..c]);
                last = c;
            }
            chunks.push(&bytes[last..]);
            prop_assert_eq!(assemble(&chunks), whole.clone());
            prop_assert_eq!(whole.len(), 4);
        }
    }
}
