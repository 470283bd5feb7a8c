//! The bench's printed table: each figure of bench.json next to its target, with a verdict.

use serde_json::Value;

pub fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let sc = &r["syscall"];
    let added = &sc["added_ns"];
    println!(
        "\ntraceo benchmark ({} CPUs, kernel {}{})",
        r["cpus"],
        r["kernel"].as_str().unwrap_or("?"),
        if r["quick"] == true { ", --quick" } else { "" }
    );
    println!("{:<58} {:>12} {:>14} {:>7}", "measure", "measured", "target", "");
    let row = |name: &str, value: String, target: &str, ok: bool| {
        println!("{name:<58} {value:>12} {target:>14} {:>7}", verdict(ok))
    };
    println!("{:<58} {:>12}", "syscall, no agent (ns)", format!("{:.0}", f(&sc["ns_per_syscall"]["none"])));
    println!("{:<58} {:>12}", "empty-program floor, added (ns)", format!("{:.0}", f(&added["floor"])));
    row(
        "untraced process, added over the floor (ns)",
        format!("{:.0}", f(&added["unselected_over_floor"])),
        "<= 30",
        f(&added["unselected_over_floor"]) <= 30.0,
    );
    row(
        "traced socket syscall, 64 B, added (ns)",
        format!("{:.0}", f(&added["traced_64b"])),
        "<= 250",
        f(&added["traced_64b"]) <= 250.0,
    );
    row(
        "traced socket syscall, 1 KiB, added (ns)",
        format!("{:.0}", f(&added["traced_1kib"])),
        "<= 1000",
        f(&added["traced_1kib"]) <= 1000.0,
    );
    let ssl = &r["ssl"];
    let pair = |key: &str| format!("{:.0}", f(&ssl["added_ns"][key]));
    println!(
        "{:<58} {:>12}",
        "SSL_write + SSL_read pair, 64 B, no agent (ns)",
        format!("{:.0}", f(&ssl["ns_per_pair"]["none"]))
    );
    println!("{:<58} {:>12}", "OpenSSL probes, untraced process, added per pair (ns)", pair("unselected"));
    if ssl["added_ns"].get("beside").is_some() {
        println!("{:<58} {:>12}", "  untraced, a traced process on the same libssl (ns)", pair("beside"));
    }
    println!("{:<58} {:>12}", "OpenSSL probes, traced process, added per pair (ns)", pair("traced"));
    for (key, server) in [("nginx", "nginx"), ("uvicorn", "uvicorn"), ("uvicorn_no_runtime", "uvicorn --no-runtime")] {
        let s = &r[key];
        let ratio = f(&s["throughput_ratio"]);
        let target = if key == "nginx" { ">= 0.97" } else { "(report)" };
        row(
            &format!("{server}: traced / untraced throughput"),
            format!("{ratio:.3}"),
            target,
            key != "nginx" || ratio >= 0.97,
        );
        if s.get("floor_rps").is_some() {
            println!(
                "{:<58} {:>12}",
                format!("{server}: floor-only / untraced throughput"),
                format!("{:.3}", f(&s["floor_over_untraced"]))
            );
            let over_floor = f(&s["traced_over_floor"]);
            row(
                &format!("{server}: traced / floor-only throughput"),
                format!("{over_floor:.3}"),
                if key == "nginx" { ">= 0.90 (#16)" } else { "(report)" },
                key != "nginx" || over_floor >= 0.90,
            );
        }
        println!(
            "{:<58} {:>12}",
            format!("{server}: p50 / p99 latency delta (ms)"),
            format!(
                "{:+.3} / {:+.3}",
                f(&s["p50_ms"]["traced"]) - f(&s["p50_ms"]["untraced"]),
                f(&s["p99_ms"]["traced"]) - f(&s["p99_ms"]["untraced"])
            )
        );
        row(
            &format!("{server}: agent CPU per exchange (us)"),
            format!("{:.1}", f(&s["agent_cpu_us_per_exchange"])),
            "<= 10",
            f(&s["agent_cpu_us_per_exchange"]) <= 10.0,
        );
        let o = &s["otlp"];
        if o.is_object() {
            row(
                &format!("{server}: agent CPU per exchange, OTLP export on (us)"),
                format!("{:.1}", f(&o["agent_cpu_us_per_exchange"])),
                "<= 3 (#16)",
                f(&o["agent_cpu_us_per_exchange"]) <= 3.0,
            );
            println!(
                "{:<58} {:>12}",
                format!("{server}: OTLP on: traced / untraced, spans out / dropped"),
                format!(
                    "{:.3}, {:.0} / {:.0}",
                    f(&o["throughput_ratio"]),
                    f(&o["spans_exported"]),
                    f(&o["spans_dropped"])
                )
            );
        }
        println!(
            "{:<58} {:>12}",
            format!("{server}: agent CPU s per 1,000 exchanges"),
            format!("{:.4}", f(&s["agent_cpu_s_per_1000_exchanges"]))
        );
        println!(
            "{:<58} {:>12}",
            format!("{server}: agent peak RSS (MiB)"),
            format!("{:.1}", f(&s["agent_peak_rss_mib"]))
        );
        row(
            &format!("{server}: events lost / exchanges missed"),
            format!("{:.0} / {:.0}", f(&s["events_lost"]), f(&s["exchanges_missed"])),
            "0 / 0",
            f(&s["events_lost"]) == 0.0 && f(&s["exchanges_missed"]) == 0.0,
        );
    }
    for (key, server, option, flag) in [
        ("uvicorn_pools_uvloop", "uvicorn uvloop, calls on a thread pool", "thread_pools", "--thread-pools"),
        ("uvicorn_pools_asyncio", "uvicorn asyncio, calls on a thread pool", "thread_pools", "--thread-pools"),
        ("node", "node front (a fresh process each arm)", "node_inject", "--node-inject"),
    ] {
        let (s, o) = (&r[key], &r[key][option]);
        let line = |what: &str, value: String| println!("{:<58} {value:>12}", format!("  {what}"));
        println!("{:<58} {:>12}", format!("{server}, untraced (req/s)"), format!("{:.0}", f(&s["untraced_rps"])));
        line("traced / untraced throughput", format!("{:.3}", f(&s["throughput_ratio"])));
        line(&format!("traced with {flag} / traced throughput"), format!("{:.3}", f(&o["over_traced"])));
        line(
            &format!("p50 untraced / traced / {flag} (ms)"),
            format!("{:.2} / {:.2} / {:.2}", f(&s["p50_ms"]["untraced"]), f(&s["p50_ms"]["traced"]), f(&o["p50_ms"])),
        );
        line(
            &format!("agent CPU per exchange, traced / {flag} (us)"),
            format!("{:.1} / {:.1}", f(&s["agent_cpu_us_per_exchange"]), f(&o["agent_cpu_us_per_exchange"])),
        );
        let cpu = &s["server_cpu_us_per_request"];
        line(
            &format!("server CPU per request, untraced / traced / {flag} (us)"),
            format!(
                "{:.0} / {:.0} / {:.0}",
                f(&cpu["untraced"]),
                f(&cpu["traced"]),
                f(&o["server_cpu_us_per_request"])
            ),
        );
        line(
            &format!("events lost / exchanges missed, traced, {flag}"),
            format!(
                "{:.0} / {:.0}, {:.0} / {:.0}",
                f(&s["events_lost"]),
                f(&s["exchanges_missed"]),
                f(&o["events_lost"]),
                f(&o["exchanges_missed"])
            ),
        );
    }
    let cap = f(&r["capacity"]["max_clean_exchanges_per_s"]);
    row("capacity: max exchanges/s with no loss (over tested loads)", format!("{cap:.0}"), ">= 20000", cap >= 20_000.0);
    let m = &r["memory_at_scale"];
    row(
        &format!("agent RSS with {} idle keep-alive connections (MiB)", m["connections"]),
        format!("{:.1}", f(&m["agent_rss_mib"])),
        "<= 64",
        f(&m["agent_rss_mib"]) <= 64.0,
    );
    let l = &r["logs"];
    let w = &l["ns_per_write_unselected_file"];
    println!("{:<58} {:>12}", "64 B write to an unselected file, no agent (ns)", format!("{:.0}", f(&w["none"])));
    for (key, what) in [
        ("traced", "traced process, added (ns)"),
        ("log_records", "traced, --log-records on, added (ns)"),
        ("log_file", "traced, --log-records + --log-file (other files), added (ns)"),
    ] {
        println!("{:<58} {:>12}", format!("  {what}"), format!("{:+.0}", f(&l["added_ns"][key])));
    }
    println!(
        "{:<58} {:>12}",
        "captured log write (64 B line to stderr, a file) (ns)",
        format!("{:.0}", f(&l["ns_per_captured_write"]))
    );
    println!(
        "{:<58} {:>12}",
        "agent CPU per captured log record (us)",
        format!("{:.1}", f(&l["agent_cpu_us_per_record"]))
    );
    println!(
        "{:<58} {:>12}",
        "log records counted / written, events lost",
        format!("{:.0} / {} , {:.0}", f(&l["records_counted_min"]), l["records_written"], f(&l["events_lost_max"]))
    );
}
