//! SQL text as it may leave the agent: every literal (strings, numbers, dollar-quoted bodies)
//! replaced by `?`, comments dropped, whitespace collapsed; and the operation and collection
//! (first table) the statement names, per the OTel database conventions.

/// Characters of sanitised text kept at most.
pub const MAX_QUERY_CHARS: usize = 2048;

/// The statement with every literal replaced by `?`. Placeholders (`$1`) stay: they carry no
/// value. Never returns any byte of a literal, whatever the input.
pub fn sanitize(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(MAX_QUERY_CHARS));
    let mut i = 0;
    let mut space = false;
    let push = |out: &mut String, s: &str, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push_str(s);
    };
    while i < b.len() && out.len() < MAX_QUERY_CHARS {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                space = true;
                i += 1;
            }
            b'-' if next == Some(b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                space = true;
            }
            b'/' if next == Some(b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(b.len());
                space = true;
            }
            b'\'' => {
                i = skip_quoted(b, i, b'\'', false);
                push(&mut out, "?", &mut space);
            }
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N' | b'u' | b'U'
                if next == Some(b'\'') && !prev_is_word(b, i) =>
            {
                let escapes = matches!(c, b'e' | b'E');
                i = skip_quoted(b, i + 1, b'\'', escapes);
                push(&mut out, "?", &mut space);
            }
            b'"' => {
                // A quoted identifier: a name, kept.
                let end = skip_quoted(b, i, b'"', false);
                push(&mut out, &sql[i..end], &mut space);
                i = end;
            }
            b'$' if next.is_some_and(|n| n.is_ascii_digit()) => {
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                push(&mut out, &sql[start..i], &mut space);
            }
            b'$' => match dollar_tag(b, i) {
                Some(tag_len) => {
                    let tag = &b[i..i + tag_len];
                    let mut j = i + tag_len;
                    while j < b.len() && !b[j..].starts_with(tag) {
                        j += 1;
                    }
                    i = (j + tag_len).min(b.len());
                    push(&mut out, "?", &mut space);
                }
                None => {
                    push(&mut out, "$", &mut space);
                    i += 1;
                }
            },
            b'0'..=b'9' if !prev_is_word(b, i) => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    i += 1;
                }
                push(&mut out, "?", &mut space);
            }
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) && !prev_is_word(b, i) => {
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                push(&mut out, "?", &mut space);
            }
            _ if is_word(c) => {
                let start = i;
                while i < b.len() && is_word(b[i]) {
                    i += 1;
                }
                push(&mut out, &sql[start..i], &mut space);
            }
            _ => {
                // One character (multi-byte ones whole).
                let len = utf8_len(c);
                let end = (i + len).min(b.len());
                if let Some(s) = sql.get(i..end) {
                    let glue = matches!(s, "," | ")" | ";" | "." | "::") || out.ends_with(['(', '.']);
                    if glue {
                        space = false;
                    }
                    push(&mut out, s, &mut space);
                }
                i = end;
            }
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

fn prev_is_word(b: &[u8], i: usize) -> bool {
    i > 0 && b.get(i - 1).is_some_and(|&p| is_word(p) || p == b'$')
}

/// Index past a quoted run starting at `start` (the opening quote); a doubled quote escapes.
fn skip_quoted(b: &[u8], start: usize, q: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// `$tag$` or `$$` at `i`: its length.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1 - i)
}

/// The operation (`SELECT`, `INSERT`, ...) and the first collection a statement names.
pub fn operation_and_collection(sql: &str) -> (Option<String>, Option<String>) {
    let words = tokens(sql);
    let Some(first) = words.first() else { return (None, None) };
    let op = first.to_ascii_uppercase();
    if !op.bytes().all(|c| c.is_ascii_alphabetic()) {
        return (None, None);
    }
    let after = |kw: &str| -> Option<String> {
        let pos = words.iter().position(|w| w.eq_ignore_ascii_case(kw))?;
        words.get(pos + 1).filter(|w| is_name(w)).map(|w| w.trim_matches('"').to_owned())
    };
    let collection = match op.as_str() {
        "SELECT" => after("FROM"),
        "INSERT" => after("INTO"),
        "UPDATE" => words
            .get(1)
            .filter(|w| !w.eq_ignore_ascii_case("ONLY"))
            .or(words.get(2))
            .filter(|w| is_name(w))
            .map(|w| w.trim_matches('"').to_owned()),
        "DELETE" => after("FROM"),
        "COPY" | "TRUNCATE" => words.get(1).filter(|w| is_name(w)).map(|w| w.trim_matches('"').to_owned()),
        _ => None,
    };
    (Some(op), collection)
}

fn is_name(w: &str) -> bool {
    !w.is_empty()
        && !w.starts_with('(')
        && w.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'"')
        && !matches!(w.to_ascii_uppercase().as_str(), "SELECT" | "ONLY" | "LATERAL")
}

/// Words of a statement (identifiers with their dots and quotes), comments and literals aside.
fn tokens(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < 64 {
        let c = b[i];
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                i += 1;
            }
            i = (i + 2).min(b.len());
        } else if c == b'\'' {
            i = skip_quoted(b, i, b'\'', false);
        } else if is_word(c) || c == b'"' {
            let start = i;
            while i < b.len() && (is_word(b[i]) || b[i] == b'.' || b[i] == b'"') {
                if b[i] == b'"' {
                    i = skip_quoted(b, i, b'"', false);
                } else {
                    i += 1;
                }
            }
            if let Some(w) = sql.get(start..i) {
                out.push(w);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            sanitize("SELECT * FROM users WHERE name = 'bob''s' AND age > 42 AND x = E'a\\'b'"),
            "SELECT * FROM users WHERE name = ? AND age > ? AND x = ?"
        );
        assert_eq!(sanitize("INSERT INTO t (a, b) VALUES ($1, $2)"), "INSERT INTO t (a, b) VALUES ($1, $2)");
        assert_eq!(sanitize("select $$secret$$, $q$x$q$, 1.5e3, -- c 99\n t1.c2"), "select ?, ?, ?, t1.c2");
        assert_eq!(sanitize("/* id=7 */ UPDATE  \"Audit\"\n SET n=n+1"), "UPDATE \"Audit\" SET n=n+?");
    }

    #[test]
    fn operation_and_table() {
        let oc = |s| operation_and_collection(s);
        assert_eq!(oc("select * from audit_logs where id=$1"), (Some("SELECT".into()), Some("audit_logs".into())));
        assert_eq!(oc("INSERT INTO public.items(a) VALUES (1)"), (Some("INSERT".into()), Some("public.items".into())));
        assert_eq!(oc("update items set a=1"), (Some("UPDATE".into()), Some("items".into())));
        assert_eq!(oc("DELETE FROM \"Items\""), (Some("DELETE".into()), Some("Items".into())));
        assert_eq!(oc("BEGIN"), (Some("BEGIN".into()), None));
        assert_eq!(oc("select 1"), (Some("SELECT".into()), None));
        assert_eq!(oc(""), (None, None));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_leaks_string_literals(s in ".{0,200}", secret in "[a-z]{12}") {
            let _ = sanitize(&s);
            let _ = operation_and_collection(&s);
            let q = format!("SELECT a FROM t WHERE x = '{secret}' AND y = {}", 12345);
            let out = sanitize(&q);
            proptest::prop_assert!(!out.contains(&secret) && !out.contains("12345"));
        }
    }
}
