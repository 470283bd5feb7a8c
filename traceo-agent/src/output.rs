//! Where output lines go: `--log PATH|-|off`. Buffered, and flushed by the pipeline's tick
//! (about once a second) and at the end: one write per line would cost a syscall per
//! exchange.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
};

use anyhow::Context as _;

pub enum LineSink {
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<std::fs::File>),
    Off,
}

impl LineSink {
    pub fn open(spec: Option<&str>) -> anyhow::Result<LineSink> {
        Ok(match spec.unwrap_or("-") {
            "-" => LineSink::Stdout(BufWriter::with_capacity(64 * 1024, std::io::stdout())),
            "off" => LineSink::Off,
            path => LineSink::File(BufWriter::with_capacity(
                64 * 1024,
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open --log {path}"))?,
            )),
        })
    }

    /// Whether lines are discarded (so callers can skip formatting them).
    pub fn is_off(&self) -> bool {
        matches!(self, LineSink::Off)
    }

    pub fn line(&mut self, line: &str) -> anyhow::Result<()> {
        let out: &mut dyn Write = match self {
            LineSink::Stdout(w) => w,
            LineSink::File(w) => w,
            LineSink::Off => return Ok(()),
        };
        out.write_all(line.as_bytes()).context("writing an output line")?;
        out.write_all(b"\n").context("writing an output line")?;
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            LineSink::Stdout(w) => w.flush()?,
            LineSink::File(w) => w.flush()?,
            LineSink::Off => {}
        }
        Ok(())
    }
}
