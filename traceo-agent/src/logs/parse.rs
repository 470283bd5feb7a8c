//! Record text -> severity, logger, message and fields, for the usual formats:
//! JSON lines (fields kept), Python logging's default `LEVEL:logger:message`, uvicorn's
//! `LEVEL:     message` (access lines get their request fields), gunicorn's error log
//! `[time] [pid] [LEVEL] message` and access log (common log format), logfmt. Anything
//! else keeps its text; its severity comes from the stream (stdout: info, stderr: unknown),
//! or is `error` for a bare traceback. Also: the exception a traceback reports.

use serde_json::{Map, Value};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    /// `debug`, `info`, `warning`, `error`, `critical` or `unknown`.
    pub severity: &'static str,
    pub logger: Option<String>,
    pub message: String,
    pub fields: Map<String, Value>,
    /// Which parser took it: `json`, `python`, `uvicorn`, `gunicorn`, `logfmt`, `text`.
    pub format: &'static str,
}

/// The exception a Python traceback in a record reports (the last of a chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExceptionInfo {
    pub kind: String,
    pub message: String,
    /// From the first `Traceback` line to the end of the record.
    pub stacktrace: String,
}

/// A level name in any case -> its normalised severity.
pub fn severity(level: &str) -> Option<&'static str> {
    Some(match level.trim().to_ascii_lowercase().as_str() {
        "trace" | "debug" | "dbug" => "debug",
        "info" | "information" | "notice" => "info",
        "warn" | "warning" => "warning",
        "error" | "err" | "exception" => "error",
        "critical" | "fatal" | "crit" | "panic" | "emerg" | "alert" => "critical",
        _ => return None,
    })
}

const LEVELS: [&str; 6] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "TRACE"];

pub fn parse(text: &str, stderr: bool) -> Parsed {
    let first = text.lines().next().unwrap_or("");
    json(text)
        .or_else(|| python_or_uvicorn(text, first))
        .or_else(|| gunicorn_error(text, first))
        .or_else(|| common_log(first).filter(|_| !text.contains('\n')))
        .or_else(|| logfmt(text))
        .unwrap_or_else(|| Parsed {
            severity: if text.starts_with("Traceback (most recent call last):") {
                "error"
            } else if stderr {
                "unknown"
            } else {
                "info"
            },
            logger: None,
            message: text.to_owned(),
            fields: Map::new(),
            format: "text",
        })
}

fn take_str(fields: &mut Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match fields.remove(*k)? {
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

fn json(text: &str) -> Option<Parsed> {
    if !text.starts_with('{') {
        return None;
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(text) else { return None };
    let level = take_str(&mut fields, &["level", "levelname", "severity", "lvl", "log.level"]);
    let logger = take_str(&mut fields, &["logger", "name", "logger_name", "log.logger"]);
    let message = take_str(&mut fields, &["message", "msg", "event"]).unwrap_or_default();
    Some(Parsed {
        severity: level.as_deref().and_then(severity).unwrap_or("unknown"),
        logger,
        message,
        fields,
        format: "json",
    })
}

/// `LEVEL:logger:message` (Python's default) or `LEVEL:<spaces>message` (uvicorn).
fn python_or_uvicorn(text: &str, first: &str) -> Option<Parsed> {
    let (level, rest) = first.split_once(':')?;
    if !LEVELS.contains(&level) {
        return None;
    }
    let after = &text[level.len() + 1..];
    if rest.starts_with(' ') {
        let message = after.trim_start_matches(' ').to_owned();
        let mut fields = Map::new();
        let access = access_fields(&message, &mut fields);
        return Some(Parsed {
            severity: severity(level)?,
            logger: Some(if access { "uvicorn.access" } else { "uvicorn.error" }.to_owned()),
            message,
            fields,
            format: "uvicorn",
        });
    }
    let (logger, message) = after.split_once(':')?;
    if logger.contains(char::is_whitespace) || logger.contains('\n') {
        return None;
    }
    Some(Parsed {
        severity: severity(level)?,
        logger: Some(logger.to_owned()),
        message: message.to_owned(),
        fields: Map::new(),
        format: "python",
    })
}

/// uvicorn's access message: `127.0.0.1:50000 - "GET /x HTTP/1.1" 200 OK`.
fn access_fields(message: &str, fields: &mut Map<String, Value>) -> bool {
    let Some((client, rest)) = message.split_once(" - \"") else { return false };
    let Some((request, status)) = rest.split_once("\" ") else { return false };
    let mut parts = request.split(' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let Some(code) = status.split(' ').next().and_then(|s| s.parse::<u16>().ok()) else { return false };
    fields.insert("client".into(), Value::from(client));
    fields.insert("method".into(), Value::from(method));
    fields.insert("path".into(), Value::from(crate::http::redact_target(path)));
    fields.insert("version".into(), Value::from(version.trim_start_matches("HTTP/")));
    fields.insert("status".into(), Value::from(code));
    true
}

/// gunicorn: `[2026-12-03 02:00:00 +0000] [123] [INFO] Booting worker with pid: 124`.
fn gunicorn_error(text: &str, first: &str) -> Option<Parsed> {
    let rest = first.strip_prefix('[')?;
    let (time, rest) = rest.split_once("] [")?;
    let (pid, rest) = rest.split_once("] [")?;
    let (level, _) = rest.split_once("] ")?;
    let pid: u32 = pid.parse().ok()?;
    let head = 1 + time.len() + 3 + pid.to_string().len() + 3 + level.len() + 2;
    let mut fields = Map::new();
    fields.insert("time".into(), Value::from(time));
    fields.insert("pid".into(), Value::from(pid));
    Some(Parsed {
        severity: severity(level)?,
        logger: Some("gunicorn.error".into()),
        message: text.get(head..)?.to_owned(),
        fields,
        format: "gunicorn",
    })
}

/// Common log format (gunicorn's access log, nginx's):
/// `host ident user [time] "request" status bytes ["referer" "agent"]`.
fn common_log(line: &str) -> Option<Parsed> {
    let (head, rest) = line.split_once(" [")?;
    let mut who = head.split(' ');
    let (host, _ident, _user) = (who.next()?, who.next()?, who.next()?);
    if who.next().is_some() {
        return None;
    }
    let (time, rest) = rest.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut tail = rest.split(' ');
    let status: u16 = tail.next()?.parse().ok()?;
    let bytes = tail.next()?;
    let mut fields = Map::new();
    let mut parts = request.split(' ');
    fields.insert("client".into(), Value::from(host));
    fields.insert("time".into(), Value::from(time));
    if let (Some(m), Some(p)) = (parts.next(), parts.next()) {
        fields.insert("method".into(), Value::from(m));
        fields.insert("path".into(), Value::from(crate::http::redact_target(p)));
    }
    fields.insert("status".into(), Value::from(status));
    if let Ok(b) = bytes.parse::<u64>() {
        fields.insert("bytes".into(), Value::from(b));
    }
    let quoted: Vec<&str> = rest.split('"').skip(1).step_by(2).collect();
    if let [referer, agent, ..] = quoted.as_slice() {
        fields.insert("referer".into(), Value::from(*referer));
        fields.insert("user_agent".into(), Value::from(*agent));
    }
    Some(Parsed { severity: "info", logger: Some("access".into()), message: line.to_owned(), fields, format: "access" })
}

/// `key=value key2="quoted value"`: every token a pair, at least two of them.
fn logfmt(text: &str) -> Option<Parsed> {
    if text.contains('\n') {
        return None;
    }
    let mut fields = Map::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = &rest[..eq];
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
            return None;
        }
        let after = &rest[eq + 1..];
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut end = None;
            let mut escaped = false;
            for (i, c) in q.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end?;
            (q[..end].replace("\\\"", "\""), &q[end + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        fields.insert(key.to_owned(), Value::from(value));
        rest = tail.trim_start();
    }
    if fields.len() < 2 {
        return None;
    }
    let level = take_str(&mut fields, &["level", "lvl", "severity"]);
    let logger = take_str(&mut fields, &["logger", "name", "module"]);
    let message = take_str(&mut fields, &["msg", "message"]).unwrap_or_default();
    Some(Parsed {
        severity: level.as_deref().and_then(severity).unwrap_or("unknown"),
        logger,
        message,
        fields,
        format: "logfmt",
    })
}

/// The exception the last traceback of `text` reports, if any.
pub fn exception(text: &str) -> Option<ExceptionInfo> {
    let first = text.find("Traceback (most recent call last):")?;
    let last = text.rfind("Traceback (most recent call last):")?;
    let line = text[last..].lines().skip(1).filter(|l| !l.trim().is_empty() && !l.starts_with([' ', '\t'])).last()?;
    let (kind, message) = match line.split_once(": ") {
        Some((k, m)) if !k.contains(' ') => (k, m),
        _ if !line.trim_end_matches(':').contains(' ') => (line.trim_end_matches(':'), ""),
        _ => return None,
    };
    Some(ExceptionInfo { kind: kind.to_owned(), message: message.to_owned(), stacktrace: text[first..].to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_default_and_uvicorn_lines() {
        let p = parse("WARNING:app.db:slow query took 3s", true);
        assert_eq!(
            (p.severity, p.logger.as_deref(), p.message.as_str(), p.format),
            ("warning", Some("app.db"), "slow query took 3s", "python")
        );
        let p = parse("INFO:     127.0.0.1:51000 - \"GET /items/7?token=abc HTTP/1.1\" 200 OK", true);
        assert_eq!((p.severity, p.logger.as_deref(), p.format), ("info", Some("uvicorn.access"), "uvicorn"));
        assert_eq!(p.fields["status"], 200);
        assert_eq!(p.fields["method"], "GET");
        assert!(!p.fields["path"].as_str().unwrap().contains("abc"));
        let p = parse(
            "ERROR:    Exception in ASGI application\nTraceback (most recent call last):\n  x\nValueError: boom",
            true,
        );
        assert_eq!((p.severity, p.logger.as_deref()), ("error", Some("uvicorn.error")));
        assert!(p.message.starts_with("Exception in ASGI application\nTraceback"));
        // Not a level: plain text, severity from the stream.
        let p = parse("hello: world", true);
        assert_eq!((p.severity, p.format), ("unknown", "text"));
        assert_eq!(parse("hello", false).severity, "info");
    }

    #[test]
    fn gunicorn_error_and_access_lines() {
        let p = parse("[2026-12-03 02:00:00 +0000] [4242] [INFO] Booting worker with pid: 4243", true);
        assert_eq!(
            (p.severity, p.logger.as_deref(), p.message.as_str()),
            ("info", Some("gunicorn.error"), "Booting worker with pid: 4243")
        );
        assert_eq!(p.fields["pid"], 4242);
        let p = parse(
            "127.0.0.1 - - [03/Dec/2026:02:00:00 +0000] \"POST /upload HTTP/1.1\" 201 17 \"-\" \"curl/8.0\"",
            false,
        );
        assert_eq!((p.severity, p.format), ("info", "access"));
        assert_eq!((p.fields["status"].as_u64(), p.fields["bytes"].as_u64()), (Some(201), Some(17)));
        assert_eq!(p.fields["user_agent"], "curl/8.0");
    }

    #[test]
    fn json_and_logfmt_keep_their_fields() {
        let p = parse(
            r#"{"level": "ERROR", "logger": "ingest", "message": "row 7 bad", "job_id": "j-1", "row": 7}"#,
            false,
        );
        assert_eq!(
            (p.severity, p.logger.as_deref(), p.message.as_str(), p.format),
            ("error", Some("ingest"), "row 7 bad", "json")
        );
        assert_eq!((p.fields["job_id"].as_str(), p.fields["row"].as_u64()), (Some("j-1"), Some(7)));
        let p = parse(r#"level=warn msg="disk \"almost\" full" pct=91 host=a"#, false);
        assert_eq!((p.severity, p.message.as_str(), p.format), ("warning", "disk \"almost\" full", "logfmt"));
        assert_eq!((p.fields["pct"].as_str(), p.fields["host"].as_str()), (Some("91"), Some("a")));
        assert_eq!(parse("a=1", false).format, "text");
        assert_eq!(parse("{not json", false).format, "text");
    }

    #[test]
    fn the_last_exception_of_a_chain_is_reported() {
        let text = "ERROR:app:failed\nTraceback (most recent call last):\n  File \"a\", line 1\nKeyError: 'k'\n\n\
During handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"a\", line 2\n    raise X\napp.errors.LoadError: bad row: 7";
        let e = exception(text).expect("an exception");
        assert_eq!((e.kind.as_str(), e.message.as_str()), ("app.errors.LoadError", "bad row: 7"));
        assert!(e.stacktrace.starts_with("Traceback") && e.stacktrace.contains("KeyError"));
        let e = exception("Traceback (most recent call last):\n  File \"a\"\nStopIteration").expect("bare");
        assert_eq!((e.kind.as_str(), e.message.as_str()), ("StopIteration", ""));
        assert_eq!(exception("INFO:a:no traceback"), None);
    }

    #[test]
    fn no_panic_on_odd_text() {
        for t in ["", ":", "INFO:", "INFO: ", "[", "[x] [y] [z] ", "a - - [", "k=\"unterminated", "{}", "ERROR:a"] {
            let _ = parse(t, true);
            let _ = exception(t);
        }
    }
}
