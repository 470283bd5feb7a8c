//! Where output lines go: `--log PATH|-|off`.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
};

use anyhow::Context as _;

pub enum LineSink {
    Stdout(std::io::Stdout),
    File(BufWriter<std::fs::File>),
    Off,
}

impl LineSink {
    pub fn open(spec: Option<&str>) -> anyhow::Result<LineSink> {
        Ok(match spec.unwrap_or("-") {
            "-" => LineSink::Stdout(std::io::stdout()),
            "off" => LineSink::Off,
            path => LineSink::File(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open --log {path}"))?,
            )),
        })
    }

    pub fn line(&mut self, line: &str) -> anyhow::Result<()> {
        match self {
            LineSink::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
            LineSink::File(f) => {
                f.write_all(line.as_bytes())?;
                f.write_all(b"\n")?;
            }
            LineSink::Off => {}
        }
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        if let LineSink::File(f) = self {
            f.flush()?;
        }
        Ok(())
    }
}
