//! Secrets in log text: the same policy as headers and query strings (`crate::scrub`:
//! `Authorization: ...` lines, `password=`/`api_key=`-style pairs, JSON fields named like
//! secrets), plus what log lines carry besides: bearer tokens anywhere in a line and
//! passwords in URLs (`scheme://user:PASSWORD@host`). Values are masked with `*` in place,
//! so lengths never change (record files keep their framing).

use std::borrow::Cow;

const MASK: u8 = b'*';

/// `text` with every secret value masked (borrowed when there was none).
pub fn scrub_log(text: &[u8]) -> Cow<'_, [u8]> {
    let base = crate::scrub::scrub(text);
    // Found on the original text: a masked `Authorization=Bearer` no longer says `Bearer`.
    let extra: Vec<(usize, usize)> = bearer_tokens(text).chain(url_passwords(text)).collect();
    if extra.is_empty() {
        return base;
    }
    let mut out = base.into_owned();
    for (from, to) in extra {
        out[from..to].fill(MASK);
    }
    Cow::Owned(out)
}

/// [`scrub_log`] of a string, as a string.
pub fn scrub_str(text: &str) -> String {
    String::from_utf8_lossy(&scrub_log(text.as_bytes())).into_owned()
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)
}

/// `Bearer <token>` / `Basic <credentials>` (any case): the token's range.
fn bearer_tokens(p: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..p.len()).filter_map(move |i| {
        let word = ["bearer ", "basic "].into_iter().find(|w| {
            p.len() >= i + w.len()
                && p[i..i + w.len()].eq_ignore_ascii_case(w.as_bytes())
                && (i == 0 || !p[i - 1].is_ascii_alphanumeric())
        })?;
        let start = i + word.len() + p[i + word.len()..].iter().take_while(|b| **b == b' ').count();
        let end = start + p[start..].iter().take_while(|b| is_token_byte(**b)).count();
        (end > start).then_some((start, end))
    })
}

/// `scheme://user:password@host`: the password's range.
fn url_passwords(p: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    p.windows(3).enumerate().filter(|(_, w)| *w == b"://").filter_map(move |(i, _)| {
        let start = i + 3;
        let auth_end = start + p[start..].iter().position(|b| b"/?# \t\r\n\"'".contains(b)).unwrap_or(p.len() - start);
        let at = p[start..auth_end].iter().rposition(|b| *b == b'@')? + start;
        let colon = p[start..at].iter().position(|b| *b == b':')? + start;
        (at > colon + 1).then_some((colon + 1, at))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_log_lines_are_masked_keeping_length() {
        let line = "INFO:app:calling with Authorization=Bearer abc.def-123 password=hunter2 api_key=K9 \
                    db=postgres://bob:pw0rd@db:5432/x {\"token\": \"t0k\", \"user\": \"ann\"} header Bearer zzz999";
        let out = scrub_str(line);
        assert_eq!(out.len(), line.len());
        for secret in ["abc.def-123", "hunter2", "K9 ", "pw0rd", "t0k", "zzz999"] {
            assert!(!out.contains(secret), "{secret} kept: {out}");
        }
        for kept in ["INFO:app:calling", "postgres://bob:", "@db:5432/x", "\"user\": \"ann\""] {
            assert!(out.contains(kept), "{kept} lost: {out}");
        }
        assert!(matches!(scrub_log(b"INFO:app:nothing here http://host/x"), Cow::Borrowed(_)));
    }
}
