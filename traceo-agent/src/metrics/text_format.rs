//! Prometheus text format 0.0.4 from prometheus-client's OpenMetrics output, for scrapers and
//! tools that do not ask for OpenMetrics (curl, promtool). Exemplars need OpenMetrics; here
//! they are dropped.

/// Rewrites: counter families are named with `_total` in HELP/TYPE (0.0.4 names the family
/// after its samples); `# UNIT` and `# EOF` go; exemplars after ` # ` go.
pub fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut pending_help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            pending_help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name =
                if kind == "counter" && !name.ends_with("_total") { format!("{name}_total") } else { name.to_owned() };
            if let Some(help) = pending_help.take() {
                let text = help.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {}\n", if kind == "info" { "gauge" } else { kind }));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let sample = line.split_once(" # ").map_or(line, |(sample, _exemplar)| sample);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_units_exemplars_and_eof_are_rewritten() {
        let om = "# HELP traceo_http_requests HTTP requests.\n# TYPE traceo_http_requests counter\n\
                  traceo_http_requests_total{a=\"b\"} 2\n\
                  # HELP traceo_d Duration.\n# TYPE traceo_d_seconds histogram\n# UNIT traceo_d_seconds seconds\n\
                  traceo_d_seconds_bucket{le=\"0.025\"} 2 # {trace_id=\"abc\"} 0.02\n# EOF\n";
        let text = openmetrics_to_prometheus(om);
        assert_eq!(
            text,
            "# HELP traceo_http_requests_total HTTP requests.\n# TYPE traceo_http_requests_total counter\n\
             traceo_http_requests_total{a=\"b\"} 2\n\
             # HELP traceo_d_seconds Duration.\n# TYPE traceo_d_seconds histogram\n\
             traceo_d_seconds_bucket{le=\"0.025\"} 2\n"
        );
    }
}
