//! HTTP request metrics from exchanges: counts, durations and body sizes with OTel HTTP
//! semantic-convention labels, duration exemplars carrying the trace id, and a cap on label
//! sets (new ones past it fold into `http_route="__overflow__"`) with idle-series expiry.

use std::{collections::HashMap, fmt::Write as _, sync::Mutex, time::Instant};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::correlate::TraceId;

use super::MetricsConfig;

pub const OVERFLOW_ROUTE: &str = "__overflow__";

/// OTel's default buckets for http.*.request.duration (seconds).
pub(super) const DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// One completed exchange, as the metrics see it.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub service: &'a str,
    /// Server side (the traced process answered) or client side (it asked).
    pub server: bool,
    pub method: &'a str,
    pub route: &'a str,
    /// `None` when no response was seen.
    pub status: Option<u16>,
    /// Client side: the `host[:port]` it called.
    pub server_address: Option<&'a str>,
    /// Seen as TLS plaintext: `url_scheme="https"`.
    pub tls: bool,
    /// `None` without a response: counted, but not in the duration histogram.
    pub duration_s: Option<f64>,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    pub trace_id: Option<TraceId>,
    /// An outbound call made while serving an inbound request: did it carry the inbound
    /// trace context or correlation id?
    pub propagated: Option<bool>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    service: String,
    direction: String,
    http_request_method: String,
    http_route: String,
    http_response_status_code: String,
    server_address: String,
    url_scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HistogramLabels {
    service: String,
    http_request_method: String,
    http_route: String,
    http_response_status_code: String,
    server_address: String,
    url_scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    trace_id: ExemplarTraceId,
}

/// The exemplar's trace id, written as lower-case hex only when the metrics are scraped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ExemplarTraceId(TraceId);

impl EncodeLabelValue for ExemplarTraceId {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PropagationLabels {
    service: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

type DurationHistogram = HistogramWithExemplars<TraceExemplar>;
type DurationFamily = Family<HistogramLabels, DurationHistogram, fn() -> DurationHistogram>;
type SizeFamily = Family<HistogramLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> DurationHistogram {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

fn size_histogram() -> Histogram {
    // 64 B .. 16 MiB, x4 per bucket.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(64.0, 4.0, 10))
}

/// One side's histograms (server or client).
struct SideFamilies {
    duration: DurationFamily,
    request_size: SizeFamily,
    response_size: SizeFamily,
}

impl SideFamilies {
    fn register(r: &mut Registry, side: &str) -> SideFamilies {
        let f = SideFamilies {
            duration: Family::new_with_constructor(duration_histogram),
            request_size: Family::new_with_constructor(size_histogram),
            response_size: Family::new_with_constructor(size_histogram),
        };
        r.register_with_unit(
            format!("traceo_http_{side}_request_duration"),
            format!("Duration of HTTP {side} requests, first request byte to last response byte"),
            Unit::Seconds,
            f.duration.clone(),
        );
        r.register_with_unit(
            format!("traceo_http_{side}_request_body_size"),
            format!("Body size of HTTP {side} requests"),
            Unit::Bytes,
            f.request_size.clone(),
        );
        r.register_with_unit(
            format!("traceo_http_{side}_response_body_size"),
            format!("Body size of HTTP {side} responses"),
            Unit::Bytes,
            f.response_size.clone(),
        );
        f
    }

    fn remove(&self, labels: &HistogramLabels) {
        self.duration.remove(labels);
        self.request_size.remove(labels);
        self.response_size.remove(labels);
    }
}

/// One label set's metrics, resolved once: later observations touch no family map and
/// allocate nothing.
struct Series {
    labels: RequestLabels,
    key: SeriesKey,
    requests: Counter,
    duration: DurationHistogram,
    request_size: Histogram,
    response_size: Histogram,
    last_seen: Instant,
    /// Recorded again since the latest expiry pass, which then counts it as seen (a clock read
    /// per exchange cost more than the rest of recording); a new series has its own time.
    touched: bool,
}

/// A series' label values as each exchange compares them: the strings in one allocation
/// (compared as five separate label strings, they were that many cache misses per exchange),
/// the rest inline.
struct SeriesKey {
    /// Service, method, route and server address, back to back.
    text: Box<[u8]>,
    lens: [usize; 4],
    server: bool,
    status: Option<u16>,
    tls: bool,
}

impl SeriesKey {
    fn parts<'a>(o: &Observation<'a>, route: &'a str) -> [&'a str; 4] {
        [o.service, o.method, route, server_address(o)]
    }

    fn new(o: &Observation<'_>, route: &str) -> SeriesKey {
        let parts = Self::parts(o, route);
        SeriesKey {
            text: parts.concat().into_bytes().into_boxed_slice(),
            lens: parts.map(str::len),
            server: o.server,
            status: o.status,
            tls: o.tls,
        }
    }

    fn matches(&self, o: &Observation<'_>, route: &str) -> bool {
        let parts = Self::parts(o, route);
        if (self.server, self.status, self.tls) != (o.server, o.status, o.tls)
            || parts.iter().zip(self.lens).any(|(p, len)| p.len() != len)
        {
            return false;
        }
        let mut rest = &self.text[..];
        parts.iter().all(|p| {
            let (head, tail) = rest.split_at(p.len());
            rest = tail;
            head == p.as_bytes()
        })
    }
}

fn status_text(status: Option<u16>) -> String {
    status.map(|s| s.to_string()).unwrap_or_default()
}

fn scheme(o: &Observation<'_>) -> &'static str {
    if o.tls { "https" } else { "http" }
}

fn server_address<'a>(o: &Observation<'a>) -> &'a str {
    if o.server { "" } else { o.server_address.unwrap_or_default() }
}

/// Hash of an observation's label values (with `route` standing for its route): foldhash,
/// seeded per process (SipHash was most of the lookup's cost).
fn series_hash(state: &foldhash::fast::RandomState, o: &Observation<'_>, route: &str) -> u64 {
    use std::hash::BuildHasher as _;
    state.hash_one((o.service, o.server, o.method, route, o.status, server_address(o), o.tls))
}

/// The series map's keys are those hashes already: hashing them again need only be cheap.
type SeriesMap = HashMap<u64, Vec<Series>, foldhash::fast::RandomState>;

pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    server: SideFamilies,
    client: SideFamilies,
    in_flight: Family<ServiceLabel, Gauge>,
    propagation: Family<PropagationLabels, Counter>,
    overflow: Counter,
    config: MetricsConfig,
    /// Label sets in use by hash (a collision shares the bucket), and how many in all.
    series: Mutex<(SeriesMap, usize)>,
    hasher: foldhash::fast::RandomState,
}

impl HttpMetrics {
    pub fn register(r: &mut Registry, config: MetricsConfig, overflow: Counter) -> HttpMetrics {
        let requests = Family::default();
        r.register("traceo_http_requests", "HTTP requests seen, server and client side", requests.clone());
        let server = SideFamilies::register(r, "server");
        let client = SideFamilies::register(r, "client");
        let in_flight = Family::default();
        r.register("traceo_http_server_active_requests", "HTTP server requests in flight", in_flight.clone());
        let propagation = Family::default();
        r.register(
            "traceo_propagation",
            "Outbound requests made while serving an inbound one, by whether they carried its trace context or correlation id",
            propagation.clone(),
        );
        HttpMetrics {
            requests,
            server,
            client,
            in_flight,
            propagation,
            overflow,
            config,
            series: Mutex::new((SeriesMap::default(), 0)),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Create the metrics of a new label set.
    fn new_series(&self, o: &Observation<'_>, route: &str) -> Series {
        let labels = RequestLabels {
            service: o.service.to_owned(),
            direction: if o.server { "server" } else { "client" }.to_owned(),
            http_request_method: o.method.to_owned(),
            http_route: route.to_owned(),
            http_response_status_code: status_text(o.status),
            server_address: server_address(o).to_owned(),
            url_scheme: scheme(o),
        };
        let side = if o.server { &self.server } else { &self.client };
        let h = histogram_labels(&labels);
        Series {
            requests: self.requests.get_or_create_owned(&labels),
            duration: side.duration.get_or_create_owned(&h),
            request_size: side.request_size.get_or_create_owned(&h),
            response_size: side.response_size.get_or_create_owned(&h),
            labels,
            key: SeriesKey::new(o, route),
            last_seen: Instant::now(),
            touched: false,
        }
    }

    pub fn observe(&self, o: &Observation<'_>) {
        let mut guard = self.series.lock().expect("metrics lock");
        let (series, count) = &mut *guard;
        let hash = series_hash(&self.hasher, o, o.route);
        // A known label set (nearly every exchange) is found with one lookup and one match.
        if let Some(s) = series.get_mut(&hash).and_then(|b| b.iter_mut().find(|s| s.key.matches(o, o.route))) {
            s.touched = true;
            return self.record(s, o);
        }
        let (route, hash) = if *count >= self.config.max_series {
            // Past the cap, new label sets fold into one overflow route (itself at most one
            // set past the cap per remaining label combination).
            self.overflow.inc();
            (OVERFLOW_ROUTE, series_hash(&self.hasher, o, OVERFLOW_ROUTE))
        } else {
            (o.route, hash)
        };
        let bucket = series.entry(hash).or_default();
        let index = match bucket.iter().position(|s| s.key.matches(o, route)) {
            Some(i) => i,
            None => {
                bucket.push(self.new_series(o, route));
                *count += 1;
                bucket.len() - 1
            }
        };
        self.record(&mut bucket[index], o);
    }

    fn record(&self, s: &mut Series, o: &Observation<'_>) {
        s.requests.inc();
        if let Some(duration) = o.duration_s {
            let exemplar = o.trace_id.map(|t| TraceExemplar { trace_id: ExemplarTraceId(t) });
            s.duration.observe(duration, exemplar, None);
        }
        s.request_size.observe(o.request_body_bytes as f64);
        s.response_size.observe(o.response_body_bytes as f64);
        if let Some(propagated) = o.propagated {
            let outcome = if propagated { "propagated" } else { "absent" };
            self.propagation.get_or_create(&PropagationLabels { service: o.service.to_owned(), outcome }).inc();
        }
    }

    /// Server requests in flight per service (set from the HTTP layer's pending requests).
    pub fn set_in_flight(&self, service: &str, n: u64) {
        self.in_flight.get_or_create(&ServiceLabel { service: service.to_owned() }).set(n as i64);
    }

    /// Drop label sets idle for longer than the configured TTL; returns how many. A set
    /// recorded since the last pass is seen as of this one: at most a pass late, never early.
    pub fn expire(&self, now: Instant) -> usize {
        let ttl = self.config.series_ttl;
        let mut guard = self.series.lock().expect("metrics lock");
        let (series, count) = &mut *guard;
        let mut dropped = 0;
        series.retain(|_, bucket| {
            bucket.retain_mut(|s| {
                if std::mem::take(&mut s.touched) {
                    s.last_seen = s.last_seen.max(now);
                }
                let stale = now.duration_since(s.last_seen) > ttl;
                if stale {
                    self.requests.remove(&s.labels);
                    let h = histogram_labels(&s.labels);
                    if s.labels.direction == "server" { &self.server } else { &self.client }.remove(&h);
                    dropped += 1;
                }
                !stale
            });
            !bucket.is_empty()
        });
        *count -= dropped;
        dropped
    }

    pub fn series_count(&self) -> usize {
        self.series.lock().expect("metrics lock").1
    }
}

fn histogram_labels(l: &RequestLabels) -> HistogramLabels {
    HistogramLabels {
        service: l.service.clone(),
        http_request_method: l.http_request_method.clone(),
        http_route: l.http_route.clone(),
        http_response_status_code: l.http_response_status_code.clone(),
        server_address: l.server_address.clone(),
        url_scheme: l.url_scheme,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Metrics, MetricsConfig};
    use super::*;
    use std::time::Duration;

    fn obs<'a>(route: &'a str, status: u16, server: bool) -> Observation<'a> {
        Observation {
            service: "engine",
            server,
            method: "GET",
            route,
            status: Some(status),
            server_address: (!server).then_some("127.0.0.1:8000"),
            duration_s: Some(0.02),
            request_body_bytes: 0,
            response_body_bytes: 300,
            trace_id: TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736"),
            propagated: None,
            tls: false,
        }
    }

    #[test]
    fn exposition_has_the_documented_families_and_labels() {
        let m = Metrics::new(MetricsConfig::default());
        m.http.observe(&obs("/api/v1/jobs/{id}", 200, true));
        m.http.observe(&obs("/api/v1/jobs/{id}", 200, true));
        m.http.observe(&obs("/webhooks/job-complete", 500, false));
        let text = m.encode();
        let line = "traceo_http_requests_total{service=\"engine\",direction=\"server\",http_request_method=\"GET\",\
                    http_route=\"/api/v1/jobs/{id}\",http_response_status_code=\"200\",server_address=\"\",url_scheme=\"http\"} 2";
        assert!(text.contains(line), "{text}");
        assert!(text.contains("traceo_http_server_request_duration_seconds_count{service=\"engine\",http_request_method=\"GET\",http_route=\"/api/v1/jobs/{id}\",http_response_status_code=\"200\",server_address=\"\",url_scheme=\"http\"} 2"), "{text}");
        assert!(text.contains("traceo_http_client_request_duration_seconds_bucket{"), "{text}");
        assert!(text.contains("server_address=\"127.0.0.1:8000\""), "{text}");
        // The 0.02 s observation lands in le=0.025 with the trace id as exemplar.
        let bucket = text
            .lines()
            .find(|l| l.starts_with("traceo_http_server_request_duration_seconds_bucket{le=\"0.025\""))
            .expect("the 0.025 bucket");
        assert!(bucket.ends_with("} 2 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.02"), "{bucket}");
        assert!(text.contains("traceo_http_server_response_body_size_bytes_sum{"), "{text}");
        assert!(!text.contains("traceo_propagation_total{"), "only outbound calls inside inbound ones count");
        m.http.observe(&Observation { propagated: Some(false), ..obs("/down", 200, false) });
        m.http.observe(&Observation { propagated: Some(true), ..obs("/down", 200, false) });
        m.http.observe(&Observation { propagated: Some(true), ..obs("/down", 200, false) });
        let text = m.encode();
        assert!(text.contains("traceo_propagation_total{service=\"engine\",outcome=\"absent\"} 1"), "{text}");
        assert!(text.contains("traceo_propagation_total{service=\"engine\",outcome=\"propagated\"} 2"), "{text}");
    }

    #[test]
    fn the_series_cap_folds_new_routes_into_overflow_and_counts_them() {
        let m = Metrics::new(MetricsConfig { max_series: 3, ..Default::default() });
        for i in 0..10 {
            m.http.observe(&obs(&format!("/r{i}"), 200, true));
        }
        let text = m.encode();
        assert!(text.contains("http_route=\"/r2\""), "{text}");
        assert!(!text.contains("http_route=\"/r3\""), "{text}");
        assert!(
            text.contains("http_route=\"__overflow__\",http_response_status_code=\"200\",server_address=\"\",url_scheme=\"http\"} 7"),
            "{text}"
        );
        assert!(text.contains("traceo_agent_metric_series_overflow_total 7"), "{text}");
        assert_eq!(m.http.series_count(), 4);
    }

    #[test]
    fn a_series_key_matches_its_own_label_values_only() {
        let o = obs("/r", 200, false);
        let key = SeriesKey::new(&o, o.route);
        assert!(key.matches(&o, o.route));
        // The same bytes split differently between labels are another label set.
        assert!(!key.matches(&Observation { service: "engin", method: "eGET", ..o.clone() }, o.route));
        assert!(!key.matches(&o, "/s"));
        assert!(!key.matches(&Observation { server_address: Some("127.0.0.1:8001"), ..o.clone() }, o.route));
        assert!(!key.matches(&Observation { status: None, ..o.clone() }, o.route));
        assert!(!key.matches(&Observation { tls: true, ..o.clone() }, o.route));
        assert!(!key.matches(&Observation { server: true, ..o.clone() }, o.route));
    }

    #[test]
    fn idle_series_expire() {
        let m = Metrics::new(MetricsConfig { series_ttl: Duration::from_millis(1), ..Default::default() });
        m.http.observe(&obs("/old", 200, true));
        m.http.observe(&obs("/old", 200, false));
        assert_eq!(m.http.expire(Instant::now() + Duration::from_secs(1)), 2);
        let text = m.encode();
        assert!(!text.contains("/old"), "{text}");
        assert_eq!(m.http.series_count(), 0);
    }

    #[test]
    fn a_series_is_seen_as_of_the_next_expiry_pass() {
        let m = Metrics::new(MetricsConfig { series_ttl: Duration::from_secs(10), ..Default::default() });
        let t0 = Instant::now();
        m.http.observe(&obs("/a", 200, true));
        assert_eq!(m.http.expire(t0 + Duration::from_secs(5)), 0);
        m.http.observe(&obs("/a", 200, true));
        assert_eq!(m.http.expire(t0 + Duration::from_secs(14)), 0, "recorded since the last pass: seen at this one");
        assert_eq!(m.http.expire(t0 + Duration::from_secs(16)), 0, "seen at +14 s");
        assert_eq!(m.http.expire(t0 + Duration::from_secs(25)), 1);
        // A series in use is never expired early, whatever the TTL against the tick.
        let m = Metrics::new(MetricsConfig { series_ttl: Duration::from_secs(1), ..Default::default() });
        m.http.observe(&obs("/busy", 200, true));
        for tick in 1..5 {
            m.http.observe(&obs("/busy", 200, true));
            assert_eq!(m.http.expire(t0 + Duration::from_millis(1100 * tick)), 0);
        }
    }
}
