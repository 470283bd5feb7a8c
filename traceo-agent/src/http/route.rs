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
    hash::BuildHasher,
    sync::Arc,
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

/// Slots of the settled-route cache (a power of two).
const SETTLED_SLOTS: usize = 256;
/// Longer paths are not cached: with scope and route, a slot holds well under 1 KiB.
const MAX_SETTLED_PATH: usize = 256;

/// Turns targets into routes.
#[derive(Clone, Debug)]
pub struct RouteNormalizer {
    templates: Vec<Template>,
    /// Heuristic routes that answered something other than 404, by the server that answered
    /// (`scope`: one server's served paths say nothing of another's).
    known: RefCell<Known>,
    /// Routes that no longer depend on the status, by (scope, path).
    settled: RefCell<Settled>,
    /// [`UNMATCHED`], shared by every exchange that gets it.
    unmatched: Arc<str>,
}

/// A route is settled for a (scope, path) once it is a template's or known as served in the
/// scope: `known` only grows, so its route is then the same whatever the status. Most
/// traffic repeats a few paths: a hit skips normalising and the `known` lookups.
/// Direct-mapped and overwritten on collision: at most [`SETTLED_SLOTS`] entries, each path at
/// most [`MAX_SETTLED_PATH`] bytes; a slot's strings are reused, so a miss does not allocate.
#[derive(Clone, Debug, Default)]
struct Settled {
    slots: Vec<SettledRoute>,
    /// Paths come from peers, but a collision only costs a miss: a fixed fast hash.
    hasher: foldhash::fast::FixedState,
}

#[derive(Clone, Debug)]
struct SettledRoute {
    scope: String,
    path: String,
    route: Arc<str>,
}

impl Default for SettledRoute {
    fn default() -> Self {
        SettledRoute { scope: String::new(), path: String::new(), route: Arc::from("") }
    }
}

impl Settled {
    fn slot(&self, scope: &str, path: &str) -> usize {
        self.hasher.hash_one((scope, path)) as usize & (SETTLED_SLOTS - 1)
    }

    fn get(&self, scope: &str, path: &str) -> Option<&Arc<str>> {
        let e = self.slots.get(self.slot(scope, path))?;
        (e.path == path && e.scope == scope).then_some(&e.route)
    }

    fn insert(&mut self, scope: &str, path: &str, route: &Arc<str>) {
        if path.len() > MAX_SETTLED_PATH {
            return;
        }
        let i = self.slot(scope, path);
        if self.slots.is_empty() {
            self.slots.resize_with(SETTLED_SLOTS, SettledRoute::default);
        }
        if let Some(e) = self.slots.get_mut(i) {
            for (s, v) in [(&mut e.scope, scope), (&mut e.path, path)] {
                s.clear();
                s.push_str(v);
            }
            e.route = Arc::clone(route);
        }
    }
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

impl Default for RouteNormalizer {
    fn default() -> Self {
        RouteNormalizer::new(&[])
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
        RouteNormalizer {
            templates,
            known: RefCell::default(),
            settled: RefCell::default(),
            unmatched: Arc::from(UNMATCHED),
        }
    }

    /// The route of an answered request: [`UNMATCHED`] for a 404 on a route no template names
    /// and that never answered anything else on this server (`scope` names the server).
    pub fn route(&self, scope: &str, target: &str, status: Option<u16>) -> Arc<str> {
        let path = path_of(target);
        if let Some(route) = self.settled.borrow().get(scope, path) {
            return Arc::clone(route);
        }
        let route = self.normalize_path(path);
        let settled = self.templates.iter().any(|t| t.text == route) || self.learn(scope, &route, status);
        if settled {
            let route = Arc::from(route);
            self.settled.borrow_mut().insert(scope, path, &route);
            return route;
        }
        if status == Some(404) { Arc::clone(&self.unmatched) } else { route.into() }
    }

    /// Remembers a heuristic route answered with something other than 404 as served; is it
    /// served (now or before)?
    fn learn(&self, scope: &str, route: &str, status: Option<u16>) -> bool {
        let mut known = self.known.borrow_mut();
        if known.contains(scope, route) {
            return true;
        }
        match status {
            Some(s) if s != 404 && known.len < MAX_KNOWN => {
                known.insert(scope, route);
                true
            }
            _ => false,
        }
    }

    /// The route of a request target.
    pub fn normalize(&self, target: &str) -> String {
        self.normalize_path(path_of(target))
    }

    /// The route of a target's path ([`path_of`]).
    fn normalize_path(&self, path: &str) -> String {
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

/// A target without its query and fragment. A byte scan: `find` with a set of chars runs a
/// general char searcher, several times the cost (this runs per exchange).
pub fn without_query(target: &str) -> &str {
    let end = target.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(target.len());
    target.get(..end).unwrap_or(target)
}

/// The path of an origin-form or absolute-form target, without query or fragment.
fn path_of(target: &str) -> &str {
    let no_query = without_query(target);
    // Most targets are origin-form, with no `:` at all.
    if !no_query.as_bytes().contains(&b':') {
        return no_query;
    }
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
            (0..1000).map(|i| n.route("s", &format!("/wp-admin{i}/x.php"), Some(404)).to_string()).collect();
        assert_eq!(routes, HashSet::from([UNMATCHED.to_owned()]));
        // A route that answers is served: its 404s keep it (a missing item, not a missing route).
        assert_eq!(&*n.route("s", "/items/7", Some(200)), "/items/{id}");
        assert_eq!(&*n.route("s", "/items/8", Some(404)), "/items/{id}");
        // Templates always name their route.
        assert_eq!(&*n.route("s", "/api/v1/jobs/nope", Some(404)), "/api/v1/jobs/{job_id}");
        // What one server serves says nothing of another (a catch-all next to an API).
        assert_eq!(&*n.route("catchall", "/aef.php", Some(200)), "/aef.php");
        assert_eq!(&*n.route("api", "/aef.php", Some(404)), UNMATCHED);
    }

    #[test]
    fn settled_routes_answer_as_the_rules_do() {
        // The rules of `route`, without the cache.
        let n = RouteNormalizer::new(&["/api/{x}".to_string()]);
        let mut known: HashSet<(String, String)> = HashSet::new();
        let mut want = |scope: &str, target: &str, status: Option<u16>| {
            let route = n.normalize(target);
            if n.templates.iter().any(|t| t.text == route) || known.contains(&(scope.into(), route.clone())) {
                return route;
            }
            match status {
                Some(404) => UNMATCHED.to_owned(),
                Some(_) => {
                    known.insert((scope.into(), route.clone()));
                    route
                }
                None => route,
            }
        };
        let cached = RouteNormalizer::new(&["/api/{x}".to_string()]);
        let statuses = [Some(404), None, Some(200), Some(404), Some(500)];
        // More paths than slots, with a long one (not cached) and query strings.
        let long = format!("/{}", "a".repeat(MAX_SETTLED_PATH + 1));
        for i in 0..3000_usize {
            let target = match i % 7 {
                0 => long.clone(),
                1 => format!("/api/{i}?q={i}"),
                2 => format!("/p{}", i % 400),
                _ => format!("/x/{}/y?z", i % 13),
            };
            let scope = ["s", "t", "s>1.2.3.4:80"][i % 3];
            let status = statuses[(i / 3) % statuses.len()];
            assert_eq!(&*cached.route(scope, &target, status), want(scope, &target, status), "{i}: {scope} {target}");
        }
    }

    #[test]
    fn without_query_ends_at_the_first_query_or_fragment() {
        for t in ["", "/", "/a?b#c", "/a#b?c", "?", "#", "/é?q", "/a/b"] {
            assert_eq!(without_query(t), t.split(['?', '#']).next().unwrap_or(""), "{t:?}");
        }
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
