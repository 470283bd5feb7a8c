//! `cargo xtask fuzz`: coverage-guided fuzzing of the agent's parsers with cargo fuzz
//! (libFuzzer). The targets live in `fuzz/` (its own workspace); this installs cargo-fuzz when
//! missing, builds them, seeds their corpora, runs each for a time or a number of executions
//! and reports executions and result per target. Writes `target/fuzz/fuzz.json`.
//!
//! Only the stable toolchain may exist: cargo fuzz's `-Z` flags are accepted through
//! `RUSTC_BOOTSTRAP=1`. Targets are built without a sanitizer (the code under test is safe
//! Rust but for length-checked unaligned reads) and with debug assertions, so an integer
//! overflow is a crash too.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{cargo, root, run};

/// The targets (`fuzz/fuzz_targets/NAME.rs`), with the dictionary each uses.
pub const TARGETS: [(&str, &str); 5] = [
    ("http_pipeline", "http.dict"),
    ("record_reader", "http.dict"),
    ("mcp_json", "json.dict"),
    ("decode", "http.dict"),
    ("db_wire", "db.dict"),
];

pub struct Settings {
    pub targets: Vec<String>,
    pub seconds: u64,
    pub runs: Option<u64>,
}

struct Outcome {
    target: String,
    executions: u64,
    seconds: f64,
    corpus: usize,
    peak_rss_mb: u64,
    crash: Option<String>,
}

fn out_dir() -> PathBuf {
    root().join("target/fuzz")
}

pub fn run_all(settings: &Settings) -> anyhow::Result<()> {
    for t in &settings.targets {
        if !TARGETS.iter().any(|(name, _)| name == t) {
            bail!("no fuzz target {t} (targets: {})", TARGETS.map(|t| t.0).join(", "));
        }
    }
    ensure_cargo_fuzz()?;
    build()?;
    let chosen: Vec<(&str, &str)> = TARGETS
        .iter()
        .copied()
        .filter(|(name, _)| settings.targets.is_empty() || settings.targets.iter().any(|t| t == name))
        .collect();
    let mut outcomes = Vec::new();
    for (name, dict) in chosen {
        let corpus = out_dir().join("corpus").join(name);
        seed(name, &corpus)?;
        outcomes.push(fuzz_one(name, dict, &corpus, settings)?);
    }
    report(&outcomes)?;
    let crashed: Vec<&str> = outcomes.iter().filter(|o| o.crash.is_some()).map(|o| o.target.as_str()).collect();
    if !crashed.is_empty() {
        bail!("fuzzing found crashes in {} (inputs under target/fuzz/artifacts/)", crashed.join(", "));
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

fn build() -> anyhow::Result<()> {
    run(cargo()
        .current_dir(root())
        .args(["fuzz", "build", "-O", "--debug-assertions", "--sanitizer", "none", "--target-dir"])
        .arg(out_dir())
        .env("RUSTC_BOOTSTRAP", "1"))
}

/// For `cargo xtask lint`: format check and clippy of the targets on the ordinary stable
/// toolchain (no cargo-fuzz, no `-Z` flags), so a change to the agent's API that breaks them is
/// seen with the workspace's own lint. `--locked`: their lock must name the agent's dependencies.
pub fn lint() -> anyhow::Result<()> {
    let manifest = root().join("fuzz/Cargo.toml");
    run(cargo().current_dir(root()).args(["fmt", "--all", "--check", "--manifest-path"]).arg(&manifest))?;
    run(cargo()
        .current_dir(root())
        .args(["clippy", "--locked", "--all-targets", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(out_dir())
        .args(["--", "-D", "warnings"]))
}

fn binary(name: &str) -> PathBuf {
    out_dir().join("x86_64-unknown-linux-gnu/release").join(name)
}

fn fuzz_one(name: &str, dict: &str, corpus: &Path, settings: &Settings) -> anyhow::Result<Outcome> {
    let artifacts = out_dir().join("artifacts").join(name);
    fs::create_dir_all(&artifacts)?;
    let log_path = out_dir().join("logs").join(format!("{name}.log"));
    fs::create_dir_all(log_path.parent().expect("has a parent"))?;
    let log = fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = Command::new(binary(name));
    cmd.arg(corpus)
        .arg(format!("-dict={}", root().join("fuzz/dicts").join(dict).display()))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048", "-max_len=8192"])
        .stdout(Stdio::null())
        .stderr(log);
    match settings.runs {
        Some(runs) => cmd.arg(format!("-runs={runs}")),
        None => cmd.arg(format!("-max_total_time={}", settings.seconds)),
    };
    let what = settings.runs.map_or(format!("{} s", settings.seconds), |r| format!("{r} executions"));
    eprintln!("xtask: fuzzing {name} for {what} (log: {})", log_path.display());
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("cannot start {}", binary(name).display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let stat = |key: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("stat::{key}:")))
            .find_map(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let crash = (!status.success()).then(|| {
        let input = text.lines().find_map(|l| l.split("Test unit written to ").nth(1)).map(str::trim);
        let why = text
            .lines()
            .find(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
            .unwrap_or("exited with failure");
        format!("{why} ({status}; input: {})", input.unwrap_or("none written"))
    });
    let corpus_files = fs::read_dir(corpus).map(|d| d.count()).unwrap_or(0);
    Ok(Outcome {
        target: name.to_string(),
        executions: stat("number_of_executed_units"),
        seconds,
        corpus: corpus_files,
        peak_rss_mb: stat("peak_rss_mb"),
        crash,
    })
}

fn report(outcomes: &[Outcome]) -> anyhow::Result<()> {
    println!(
        "{:<15} {:>13} {:>9} {:>10} {:>8} {:>8}  result",
        "target", "executions", "seconds", "exec/s", "corpus", "rss MB"
    );
    for o in outcomes {
        println!(
            "{:<15} {:>13} {:>9.0} {:>10.0} {:>8} {:>8}  {}",
            o.target,
            o.executions,
            o.seconds,
            o.executions as f64 / o.seconds.max(0.001),
            o.corpus,
            o.peak_rss_mb,
            o.crash.as_deref().unwrap_or("ok: no crash")
        );
    }
    let json: Vec<_> = outcomes
        .iter()
        .map(|o| {
            json!({
                "target": o.target, "executions": o.executions, "seconds": o.seconds,
                "corpus_files": o.corpus, "peak_rss_mb": o.peak_rss_mb, "crash": o.crash,
            })
        })
        .collect();
    let path = out_dir().join("fuzz.json");
    fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// Seed inputs (written once; libFuzzer grows the corpus from them): real conversations from
/// the golden scenarios' shapes for the HTTP target, the committed record fixtures, JSON-RPC
/// bodies for MCP.
fn seed(name: &str, corpus: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(corpus)?;
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    match name {
        "http_pipeline" => {
            for (header, pieces) in HTTP_SEEDS {
                let mut s = vec![*header];
                for (i, p) in pieces.iter().enumerate() {
                    if i > 0 {
                        s.extend_from_slice(b"\xff\xfe");
                    }
                    s.extend_from_slice(p);
                }
                seeds.push(s);
            }
        }
        "record_reader" => {
            for entry in fs::read_dir(root().join("tests/fixtures"))? {
                let path = entry?.path();
                let small = fs::metadata(&path).is_ok_and(|m| m.len() <= 8192);
                if path.extension().is_some_and(|e| e == "trec") && small {
                    seeds.push(fs::read(&path)?);
                }
            }
        }
        "mcp_json" => {
            for (flags, pieces) in MCP_SEEDS {
                let mut s = vec![*flags];
                s.extend_from_slice(&pieces.join(&b"\xff\xfe"[..]));
                seeds.push(s);
            }
        }
        "db_wire" => {
            for (flags, pieces) in DB_SEEDS {
                let mut s = vec![*flags];
                s.extend_from_slice(&pieces.join(&b"\xff\xfe"[..]));
                seeds.push(s);
            }
        }
        _ => {}
    }
    for (i, s) in seeds.iter().enumerate() {
        let path = corpus.join(format!("seed-{i:02}"));
        if !path.exists() {
            fs::write(&path, s)?;
        }
    }
    Ok(())
}

/// (flag byte, pieces): see `fuzz/fuzz_targets/db_wire.rs` for the format. Control byte 0:
/// the client's bytes; 1: the server's.
const DB_SEEDS: &[(u8, &[&[u8]])] = &[
    // PostgreSQL: startup (protocol 3.0, user and database), then a simple query and its
    // answer: RowDescription, DataRow, CommandComplete, ReadyForQuery.
    (
        0,
        &[
            b"\x00\x00\x00\x00\x27\x00\x03\x00\x00user\x00app\x00database\x00traceo\x00\x00",
            b"\x01R\x00\x00\x00\x08\x00\x00\x00\x00Z\x00\x00\x00\x05I",
            b"\x00Q\x00\x00\x00\x2aSELECT id FROM audit_logs WHERE id = 7\x00",
            b"\x01T\x00\x00\x00\x1b\x00\x01id\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x017C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I",
        ],
    ),
    // PostgreSQL midstream: extended protocol (Parse, Bind, Execute, Sync) and an error.
    (
        1,
        &[
            b"\x00P\x00\x00\x00\x24\x00INSERT INTO jobs VALUES ($1)\x00\x00\x00B\x00\x00\x00\x0e\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00E\x00\x00\x00\x09\x00\x00\x00\x00\x00S\x00\x00\x00\x04",
            b"\x01E\x00\x00\x00\x1aSERROR\x00C23505\x00Mdup\x00\x00Z\x00\x00\x00\x05E",
        ],
    ),
    // Redis: a pipeline of commands and their replies, an error among them.
    (
        2,
        &[
            b"\x00*2\r\n$3\r\nGET\r\n$5\r\njob:1\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
            b"\x01$-1\r\n-WRONGTYPE Operation against a key\r\n",
            b"\x00PING\r\n",
            b"\x05+PONG\r\n",
        ],
    ),
    (3, &[b"\x00*3\r\n$4\r\nHSET\r\n$3\r\nh:1\r\n$1\r\nf\r\n", b"\x01:1\r\n*2\r\n:1\r\n%1\r\n+a\r\n_\r\n"]),
];

/// (header byte, pieces): see `fuzz/fuzz_targets/http_pipeline.rs` for the format. Control
/// byte 1: the process sends; 0x21: it sends, then reads an end of stream.
const HTTP_SEEDS: &[(u8, &[&[u8]])] = &[
    (1, &[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\x01HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"]),
    (
        2,
        &[
            b"",
            b"\x01POST /api/v1/jobs HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"a\":1,\"b\":[2]}\n",
            b"\x00HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            b"\x00f\r\n{\"job_id\":\"j1\"}\r\n0\r\n\r\n",
        ],
    ),
    (
        1,
        &[
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n",
            b"\x01HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 204 No Content\r\n\r\n",
            b"\x01HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        ],
    ),
    (
        1,
        &[
            b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            b"\x01HTTP/1.1 100 Continue\r\n\r\n",
            b"\x00hello",
            b"\x01HTTP/1.0 200 OK\r\n\r\nuntil close",
            b"\x08GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"\x01HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x05hello",
        ],
    ),
    (
        5,
        &[
            b"GET /events?token=s3cret HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
            b"\x01HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: {}\n\n",
            b"\x13data: {\"jsonrpc\":\"2.0\"}\n\n",
        ],
    ),
    (
        3,
        &[b"ody\r\n\r\nGET /x HTTP/1.1\r\n\r\n", b"\x03HTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\n", b"\x80GET /y HTTP/1.1\r\n\r\n"],
    ),
];

/// (flags, [request body, response body, target, request job-id, response x-job-id, session]).
const MCP_SEEDS: &[(u8, &[&[u8]])] = &[
    // Sentry envelopes (`sentry::parse` reads every piece), plain and gzip-compressed.
    (
        0,
        &[
            b"{\"event_id\":\"91f876988c0b4f6f804b9a94ff30e458\"}\n{\"type\":\"event\",\"length\":130}\n{\"level\":\"error\",\"exception\":{\"values\":[{\"type\":\"ValueError\",\"value\":\"boom\"}]},\"request\":{\"url\":\"http://h/fail/1\",\"method\":\"GET\"}}\n",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03=\x8eA\x0e\x820\x14D\xf7\x1c\xe3\xafMZB\xc5\xb6{\xe2\x05\x8c\x1bc\x0c\xe0\xaf\x90\x14\x8a\xf5C4\xa4w\xb7%\xc6\xed\xbcy\x93Y\x01\x17\x1c\xe9\xd6\xdfA\x83\xca\x8d<\x94J\xca\x967\xc2\x94Fr\xd1\xa8Z\x09c\x0a\x8eb/!d+\xd0g\xc2\xd8\xdd4\xd8\x81\xc5\xf1A\x1d\xe8\xbc\xe0\x89\xda\x98\xdb\x84\xbdw>b|\xb78Q\xefF\xd0+,\xb5\x9d\xf1\x05\xfa\xf2_9\xa7\xa4\xfau7\x1c\xc3\xc6\xb9\x01\xc25\xec\xc0\xe33\x0a\x94\xdc\xd9\xa7\xd9\x8eh\xd2\x8cu\xcc\xd4\xbdey\x94\x06\xa4\xce\xa5\xf3\xc7\xea\x04!d_-\xc1\xe4\x0c\xd1\x00\x00\x00",
            b"/api/42/envelope/",
        ],
    ),
    (
        0,
        &[
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"upload_csv","arguments":{"csv":"a,b"}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"{\"job_id\":\"j1\"}"}],"isError":false}}"#,
            b"/mcp",
            b"",
            b"",
            b"sess-1",
        ],
    ),
    (
        8,
        &[
            br#"[{"jsonrpc":"2.0","id":"a","method":"initialize"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
            b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"error\":{\"code\":-32602,\"message\":\"x\"}}\n\n",
            b"/mcp?x=1",
        ],
    ),
    (
        0x10,
        &[
            br#"{"job_id":"j9","status":"failed","rows":3}"#,
            br#"{"job_id":"j9"}"#,
            b"/api/v1/jobs/j9?job_id=j9",
            b"j9",
            b"j9",
        ],
    ),
    (1, &[br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"job_st"#, br#"{"jsonrpc":"2.0","id":7,"error":{"code":-3"#]),
];
