//! `traceo_tls_*`: what the OpenSSL probes see and what they cannot.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::tls::{TlsStats, probes::TlsProbeStats};

pub struct TlsMetrics {
    plaintext_events: Counter,
    unbound_events: Counter,
    ciphertext_bytes: Counter,
    connections: Counter,
    opaque_connections: Counter,
    on_plaintext_connections: Counter,
    probed_files: Gauge,
    failed_files: Gauge,
    opaque_processes: Gauge,
    last: std::sync::Mutex<TlsStats>,
}

impl TlsMetrics {
    pub fn register(r: &mut Registry) -> TlsMetrics {
        let m = TlsMetrics {
            plaintext_events: Counter::default(),
            unbound_events: Counter::default(),
            ciphertext_bytes: Counter::default(),
            connections: Counter::default(),
            opaque_connections: Counter::default(),
            on_plaintext_connections: Counter::default(),
            probed_files: Gauge::default(),
            failed_files: Gauge::default(),
            opaque_processes: Gauge::default(),
            last: Default::default(),
        };
        r.register(
            "traceo_tls_plaintext_events",
            "TLS plaintext chunks from the OpenSSL probes, tied to their connection and parsed",
            m.plaintext_events.clone(),
        );
        r.register(
            "traceo_tls_unbound_events",
            "TLS plaintext chunks dropped because no connection could be found for them",
            m.unbound_events.clone(),
        );
        r.register_with_unit(
            "traceo_tls_ciphertext",
            "Socket bytes of TLS connections, kept from the HTTP parser (their plaintext is parsed instead)",
            Unit::Bytes,
            m.ciphertext_bytes.clone(),
        );
        r.register("traceo_tls_connections", "Connections found to carry TLS", m.connections.clone());
        r.register(
            "traceo_tls_opaque_connections",
            "TLS connections that ended without any plaintext seen: a TLS stack the probes cannot see into",
            m.opaque_connections.clone(),
        );
        r.register(
            "traceo_tls_on_plaintext_connections",
            "TLS handshakes that got no TLS answer (a TLS client on a plaintext port, answered in plaintext or \
             not at all): not HTTPS, not opaque",
            m.on_plaintext_connections.clone(),
        );
        r.register(
            "traceo_tls_probed_libraries",
            "Library or executable files the OpenSSL probes are attached to",
            m.probed_files.clone(),
        );
        r.register(
            "traceo_tls_probe_failures",
            "OpenSSL files that could not be probed (see the log)",
            m.failed_files.clone(),
        );
        r.register(
            "traceo_tls_opaque_processes",
            "Traced processes using a TLS library the agent cannot see into (Go, GnuTLS, NSS, ...)",
            m.opaque_processes.clone(),
        );
        m
    }

    /// Follow the TLS stage's running totals and the probes' current state.
    pub fn update(&self, now: &TlsStats, probes: &TlsProbeStats) {
        let mut last = self.last.lock().expect("metrics lock");
        for (counter, v, before) in [
            (&self.plaintext_events, now.plaintext_events, last.plaintext_events),
            (&self.unbound_events, now.unbound_events, last.unbound_events),
            (&self.ciphertext_bytes, now.ciphertext_bytes, last.ciphertext_bytes),
            (&self.connections, now.tls_connections, last.tls_connections),
            (&self.opaque_connections, now.opaque_connections, last.opaque_connections),
            (&self.on_plaintext_connections, now.on_plaintext_connections, last.on_plaintext_connections),
        ] {
            counter.inc_by(v.saturating_sub(before));
        }
        *last = *now;
        self.probed_files.set(probes.probed_files as i64);
        self.failed_files.set(probes.failed_files as i64);
        self.opaque_processes.set(probes.opaque_processes as i64);
    }
}
