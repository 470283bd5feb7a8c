//! Route normalisation: a bounded, low-cardinality label from a request target.
//!
//! Path only (no query, no `;` path parameters). A path matching a user template's literal
//! segments takes the template verbatim (`/api/v1/jobs/{job_id}`); otherwise id-like
//! segments become `{id}`. A 404 on a route that never answered anything else is a path the
//! server does not have (a scanner's, a typo): those all fold into [`UNMATCHED`], so random
//! paths cannot grow the label set.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
};

/// The route of a 404 on a path the server is not known to serve.
pub const UNMATCHED: &str = "{unmatched}";
/// Routes remembered as served (answered with something other than 404), at most.
const MAX_KNOWN: usize = 4096;

/// Placeholder for an id-like segment.
pub const ID: &str = "{id}";
/// Segments past this many collapse into one placeholder.
const MAX_SEGMENTS: usize = 16;
/// Longer segments are opaque whatever they contain.
const MAX_SEGMENT_BYTES: usize = 128;

/// One `--route` template, split into segments; `None` is a `{name}` wildcard.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template {
    text: String,
    segments: Vec<Option<String>>,
}

/// Turns targets into routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteNormalizer {
    templates: Vec<Template>,
    /// Heuristic routes that answered something other than 404, by the server that answered
    /// (`scope`: one server's served paths say nothing of another's).
    known: RefCell<Known>,
}

/// Served routes by scope, looked up per exchange with borrowed strings (a (scope, route)
/// key cost an allocation per exchange). Scopes (services, the addresses they call) are few
/// and not a peer's choice: a fast hash. Routes come from request targets: SipHash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Known {
    by_scope: HashMap<String, HashSet<String>, foldhash::fast::RandomState>,
    /// (scope, route) pairs held, bounded by [`MAX_KNOWN`].
    len: usize,
}

impl Known {
    fn contains(&self, scope: &str, route: &str) -> bool {
        self.by_scope.get(scope).is_some_and(|routes| routes.contains(route))
    }

    fn insert(&mut self, scope: &str, route: &str) {
        if self.by_scope.entry(scope.to_owned()).or_default().insert(route.to_owned()) {
            self.len += 1;
        }
    }
}

impl RouteNormalizer {
    /// `templates` are tried in order; the first match wins.
    pub fn new(templates: &[String]) -> Self {
        let templates = templates
            .iter()
            .map(|t| Template {
                text: t.clone(),
                segments: t
                    .split('/')
                    .map(|s| {
                        let wild = s.len() >= 2 && s.starts_with('{') && s.ends_with('}');
                        (!wild).then(|| s.to_string())
                    })
                    .collect(),
            })
            .collect();
        RouteNormalizer { templates, known: RefCell::default() }
    }

    /// The route of an answered request: [`UNMATCHED`] for a 404 on a route no template names
    /// and that never answered anything else on this server (`scope` names the server).
    pub fn route(&self, scope: &str, target: &str, status: Option<u16>) -> String {
        let route = self.normalize(target);
        if self.templates.iter().any(|t| t.text == route) {
            return route;
        }
        let mut known = self.known.borrow_mut();
        match status {
            Some(404) if !known.contains(scope, &route) => UNMATCHED.to_owned(),
            Some(_) => {
                if known.len < MAX_KNOWN && !known.contains(scope, &route) {
                    known.insert(scope, &route);
                }
                route
            }
            None => route,
        }
    }

    /// The route of a request target.
    pub fn normalize(&self, target: &str) -> String {
        let path = path_of(target);
        let stripped;
        let path = if path.contains(';') {
            stripped = path.split('/').map(|s| s.split(';').next().unwrap_or("")).collect::<Vec<_>>().join("/");
            stripped.as_str()
        } else {
            path
        };
        if !path.starts_with('/') {
            // `*` (OPTIONS) or an authority (CONNECT host:port): not a path.
            return if path == "*" { "*".into() } else { ID.into() };
        }
        if let Some(t) = self.templates.iter().find(|t| matches(t, path)) {
            return t.text.clone();
        }
        let mut out = String::with_capacity(path.len());
        for (i, seg) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            if i > MAX_SEGMENTS {
                out.push_str("{rest}");
                break;
            }
            out.push_str(if is_id(seg) { ID } else { seg });
        }
        out
    }
}

/// The path of an origin-form or absolute-form target, without query or fragment.
fn path_of(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let no_query = target.get(..end).unwrap_or(target);
    match scheme_separator(no_query) {
        Some(i) => {
            let rest = no_query.get(i + 3..).unwrap_or_default();
            rest.find('/').and_then(|p| rest.get(p..)).unwrap_or("/")
        }
        None => no_query,
    }
}

/// Where the first `://` starts: `str::find` with a string pattern sets up a general
/// substring search on each call (per exchange here, and per kept header); a `:` is rare
/// in a path.
pub fn scheme_separator(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s.get(from..)?.find(':') {
        let at = from + i;
        if s.get(at..)?.starts_with("://") {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn matches(t: &Template, path: &str) -> bool {
    let mut segs = path.split('/');
    for want in &t.segments {
        match (want, segs.next()) {
            (_, None) => return false,
            (None, Some("")) => return false,
            (None, Some(_)) => {}
            (Some(lit), Some(got)) if lit != got => return false,
            (Some(_), Some(_)) => {}
        }
    }
    segs.next().is_none()
}

/// Does a path segment look like an identifier rather than a name?
pub fn is_id(seg: &str) -> bool {
    if seg.is_empty() {
        return false;
    }
    if seg.len() > MAX_SEGMENT_BYTES {
        return true;
    }
    let b = seg.as_bytes();
    let has_digit = b.iter().any(u8::is_ascii_digit);
    let has_alpha = b.iter().any(u8::is_ascii_alphabetic);
    let all_digits = b.iter().all(u8::is_ascii_digit);
    let all_hex = b.iter().all(u8::is_ascii_hexdigit);
    let tokenish = b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'=' | b'.' | b'~'));
    all_digits
        || is_uuid(b)
        || (all_hex && b.len() >= 8 && has_digit)
        || (tokenish && b.len() >= 16 && has_digit && has_alpha)
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let n = RouteNormalizer::new(&[]);
        let cases = [
            ("/", "/"),
            ("/health", "/health"),
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/7?x=1", "/users/{id}/orders/{id}"),
            ("/jobs/550e8400-e29b-41d4-a716-446655440000/status", "/jobs/{id}/status"),
            ("/blobs/deadbeef01", "/blobs/{id}"),
            ("/blobs/deadbeef", "/blobs/deadbeef"),
            ("/t/aB3dE5fG7hJ9kL1mN", "/t/{id}"),
            ("/static/app-bundle.js", "/static/app-bundle.js"),
            ("/api/v1/things", "/api/v1/things"),
            ("http://example.com/users/9?q", "/users/{id}"),
            ("http://example.com", "/"),
            ("*", "*"),
            ("example.com:443", "{id}"),
            ("/a//b", "/a//b"),
        ];
        for (target, want) in cases {
            assert_eq!(n.normalize(target), want, "target {target}");
        }
    }

    #[test]
    fn templates_match_literal_segments_verbatim() {
        let n = RouteNormalizer::new(&["/api/v1/jobs/{job_id}".to_string(), "/api/v1/jobs/{job_id}/logs".to_string()]);
        assert_eq!(n.normalize("/api/v1/jobs/abc"), "/api/v1/jobs/{job_id}");
        assert_eq!(n.normalize("/api/v1/jobs/7/logs?tail=5"), "/api/v1/jobs/{job_id}/logs");
        // Wrong literal, wrong length, empty wildcard: fall back to heuristics.
        assert_eq!(n.normalize("/api/v2/jobs/7"), "/api/v2/jobs/{id}");
        assert_eq!(n.normalize("/api/v1/jobs/7/x"), "/api/v1/jobs/{id}/x");
        assert_eq!(n.normalize("/api/v1/jobs/"), "/api/v1/jobs/");
    }

    #[test]
    fn path_parameters_never_reach_routes() {
        let n = RouteNormalizer::new(&[]);
        assert_eq!(n.normalize("/hello;jsessionid=ABC123DEF456GHI789"), "/hello");
        assert_eq!(n.normalize("/a;x=1/b;y=2?q"), "/a/b");
    }

    #[test]
    fn a_scanners_404s_fold_into_one_route() {
        let n = RouteNormalizer::new(&["/api/v1/jobs/{job_id}".to_string()]);
        let routes: HashSet<String> =
            (0..1000).map(|i| n.route("s", &format!("/wp-admin{i}/x.php"), Some(404))).collect();
        assert_eq!(routes, HashSet::from([UNMATCHED.to_owned()]));
        // A route that answers is served: its 404s keep it (a missing item, not a missing route).
        assert_eq!(n.route("s", "/items/7", Some(200)), "/items/{id}");
        assert_eq!(n.route("s", "/items/8", Some(404)), "/items/{id}");
        // Templates always name their route.
        assert_eq!(n.route("s", "/api/v1/jobs/nope", Some(404)), "/api/v1/jobs/{job_id}");
        // What one server serves says nothing of another (a catch-all next to an API).
        assert_eq!(n.route("catchall", "/aef.php", Some(200)), "/aef.php");
        assert_eq!(n.route("api", "/aef.php", Some(404)), UNMATCHED);
    }

    #[test]
    fn the_scheme_separator_is_the_first_colon_slash_slash() {
        for s in ["", "/a", "/a:b", "http://x/", "/a:/b://c", "x:", "x:/", ":://", "é://"] {
            assert_eq!(scheme_separator(s), s.find("://"), "{s:?}");
        }
    }

    #[test]
    fn deep_paths_are_bounded() {
        let n = RouteNormalizer::new(&[]);
        let deep = "/a".repeat(100);
        let route = n.normalize(&deep);
        assert!(route.ends_with("{rest}"), "{route}");
        assert!(route.len() < 64, "{route}");
    }
}
