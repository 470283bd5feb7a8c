//! Counters the metrics layer reads; parse-error reasons are logged once each.

use super::parser::ParseErrorKind;

/// What the tracker saw. Plain counters (gauges where noted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Exchanges emitted (including `no_response` ones).
    pub exchanges: u64,
    /// Indexed by [`ParseErrorKind::index`]; see [`TrackerStats::parse_errors`].
    pub parse_errors_by_kind: [u64; ParseErrorKind::ALL.len()],
    pub non_http_connections: u64,
    /// Connections read as a database protocol (PostgreSQL, Redis) instead.
    pub db_connections: u64,
    /// Requests flushed without a response.
    pub unpaired_requests: u64,
    /// Responses no request could be found for.
    pub unpaired_responses: u64,
    /// Times a stream found a start line again (midstream join or after an error).
    pub midstream_resyncs: u64,
    /// Connections resynchronised because the kernel lost some of their bytes.
    pub loss_resyncs: u64,
    pub evicted_connections: u64,
    /// Gauge: connections tracked now.
    pub active_connections: u64,
}

impl TrackerStats {
    pub fn parse_errors(&self, kind: ParseErrorKind) -> u64 {
        self.parse_errors_by_kind.get(kind.index()).copied().unwrap_or(0)
    }

    pub fn total_parse_errors(&self) -> u64 {
        self.parse_errors_by_kind.iter().sum()
    }

    /// Count a parse error; warn the first time each reason occurs.
    pub(crate) fn record_parse_error(&mut self, kind: ParseErrorKind, conn_id: u64) {
        if let Some(n) = self.parse_errors_by_kind.get_mut(kind.index()) {
            if *n == 0 {
                log::warn!("HTTP parse error {} (connection {conn_id}); later ones are only counted", kind.as_str());
            }
            *n = n.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_per_reason() {
        let mut s = TrackerStats::default();
        s.record_parse_error(ParseErrorKind::BadChunkSize, 1);
        s.record_parse_error(ParseErrorKind::BadChunkSize, 2);
        s.record_parse_error(ParseErrorKind::BufferFull, 3);
        assert_eq!(s.parse_errors(ParseErrorKind::BadChunkSize), 2);
        assert_eq!(s.parse_errors(ParseErrorKind::BufferFull), 1);
        assert_eq!(s.parse_errors(ParseErrorKind::BadHeader), 0);
        assert_eq!(s.total_parse_errors(), 3);
        for (i, k) in ParseErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?} out of order in ALL");
        }
    }
}
