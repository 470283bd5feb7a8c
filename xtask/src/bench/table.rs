//! The bench's printed table: each figure of bench.json next to its target, with a verdict.

use serde_json::Value;

/// The value at `v` as a float (NaN when absent).
fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A measure with no target.
fn info(name: &str, value: String) {
    println!("{name:<58} {value:>12}");
}

/// A measure with its target and verdict.
fn row(name: &str, value: String, target: &str, ok: bool) {
    println!("{name:<58} {value:>12} {target:>14} {:>7}", if ok { "met" } else { "MISSED" });
}

/// Print the sections `r` holds (`bench --only` runs some of them).
pub fn print_table(r: &Value) {
    println!(
        "\ntraceo benchmark ({} CPUs, kernel {}{})",
        r["cpus"],
        r["kernel"].as_str().unwrap_or("?"),
        if r["quick"] == true { ", --quick" } else { "" }
    );
    println!("{:<58} {:>12} {:>14} {:>7}", "measure", "measured", "target", "");
    if r.get("syscall").is_some() {
        syscalls(&r["syscall"]);
    }
    if r.get("ssl").is_some() {
        ssl(&r["ssl"]);
    }
    for (key, server) in [("nginx", "nginx"), ("uvicorn", "uvicorn"), ("uvicorn_no_runtime", "uvicorn --no-runtime")] {
        if r.get(key).is_some() {
            server_arms(&r[key], key, server);
        }
    }
    if r.get("uvicorn").is_some() && r.get("uvicorn_no_runtime").is_some() {
        task_probe_bound(&r["uvicorn"], &r["uvicorn_no_runtime"]);
    }
    for (key, server, option, flag) in [
        ("uvicorn_pools_uvloop", "uvicorn uvloop, calls on a thread pool", "thread_pools", "--thread-pools"),
        ("uvicorn_pools_asyncio", "uvicorn asyncio, calls on a thread pool", "thread_pools", "--thread-pools"),
        ("node", "node front (a fresh process each arm)", "node_inject", "--node-inject"),
    ] {
        if r.get(key).is_some() {
            runtime_option(&r[key], server, option, flag);
        }
    }
    if r.get("capacity").is_some() {
        capacity(&r["capacity"]);
    }
    if r.get("memory_at_scale").is_some() {
        memory(&r["memory_at_scale"]);
    }
    if r.get("logs").is_some() {
        logs(&r["logs"]);
    }
}

/// The syscall loop: each traced cost as a ratio of the empty-program floor's (#16).
fn syscalls(sc: &Value) {
    let added = &sc["added_ns"];
    let floor = f(&added["floor"]);
    info("syscall, no agent (ns)", format!("{:.0}", f(&sc["ns_per_syscall"]["none"])));
    info("empty-program floor, added (ns)", format!("{floor:.0}"));
    if floor <= 0.0 {
        // Noise larger than the floor itself: no ratio to it means anything.
        info("  (floor within noise: rerun on an idle machine for the ratios)", String::new());
        return;
    }
    let unselected = f(&added["unselected"]) / floor;
    let runs = sc.get("ns_per_program_run");
    // The untraced cost is the floor plus the filter's run time: the loop's arms cannot resolve
    // tens of ns, the kernel's run-time statistics can. Without those, the loop's arms.
    let filter = runs.map_or(f64::NAN, |r| f(&r["untraced_filter_per_syscall"]));
    if filter.is_finite() {
        let ratio = (floor + filter) / floor;
        row(
            "untraced process, added / the floor's",
            format!("{ratio:.2} (+{filter:.0} ns)"),
            "<= 1.10 (#16)",
            ratio <= 1.10,
        );
        info("  by the loop's arms alone (±100 ns between runs)", format!("{unselected:.2}"));
        let at_exit = runs.map_or(f64::NAN, |r| f(&r["exit_filter_per_syscall"]));
        info("  its test at exit alone (the least), added / the floor's", format!("{:.2}", (floor + at_exit) / floor));
    } else {
        row("untraced process, added / the floor's", format!("{unselected:.2}"), "<= 1.10 (#16)", unselected <= 1.10);
    }
    // The least filtering program by the loop (as noisy as the untraced arm).
    if let Some(least) = added.get("bound_unselected") {
        info("  least filtering program, by the loop", format!("{:.2} ({:.0} ns)", f(least) / floor, f(least)));
    }
    // The programs' own time per run, from the kernel's statistics (not the loop's noise).
    if let Some(runs) = runs {
        for at in ["exit", "entry"] {
            let ns = |mode: &str| f(&runs[mode][at]);
            info(
                &format!("  one run at {at}: empty / untraced / traced / least (ns)"),
                format!("{:.0} / {:.0} / {:.0} / {:.0}", ns("floor"), ns("unselected"), ns("traced"), ns("bound")),
            );
        }
    }
    for (key, what, bound) in [("traced_64b", "64 B", 2.0), ("traced_1kib", "1 KiB", 2.5)] {
        let ratio = f(&added[key]) / floor;
        row(
            &format!("traced socket syscall, {what}: added / the floor's"),
            format!("{ratio:.2} ({:.0} ns)", f(&added[key])),
            &format!("<= {bound:.1} (#16)"),
            ratio <= bound,
        );
    }
    // The least capturing program (process, socket, copy, ring record; nothing else): how far
    // the floor's ratio can go down with capture at the syscall on this kernel.
    if added.get("bound_64b").is_some() {
        for (key, bound_key, what) in [("traced_64b", "bound_64b", "64 B"), ("traced_1kib", "bound_1kib", "1 KiB")] {
            let bound = f(&added[bound_key]);
            info(
                &format!("  least capturing program, {what}: added / the floor's"),
                format!("{:.2} ({bound:.0} ns)", bound / floor),
            );
            info(&format!("  traced / least capturing, {what}"), format!("{:.2}", f(&added[key]) / bound));
        }
    }
}

fn ssl(ssl: &Value) {
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
}

/// What asyncio task tracking costs uvicorn per request, from its traced arms with and
/// without it, and the CPU ceiling the task probes alone would leave even at one hit per task.
fn task_probe_bound(traced: &Value, no_runtime: &Value) {
    let tasks = f(&traced["tasks_per_request"]);
    let cpu = |s: &Value, arm: &str| f(&s["server_cpu_us_per_request"][arm]);
    let (untraced, with, without) = (cpu(traced, "untraced"), cpu(traced, "traced"), cpu(no_runtime, "traced"));
    if tasks <= 0.0 || with <= without {
        return;
    }
    // Each task is two probe hits (`Task.__init__` entry and return).
    let per_hit = (with - without) / (2.0 * tasks);
    info("uvicorn: asyncio tasks per request (2 probe hits each)", format!("{tasks:.2}"));
    info("uvicorn: server CPU per task probe hit (us)", format!("{per_hit:.1}"));
    info(
        "uvicorn: untraced / (untraced + 1 task probe hit per task)",
        format!("{:.3}", task_probe_ceiling(untraced, tasks, per_hit)),
    );
}

/// The server's untraced CPU per request over that plus one probe hit per task: the task
/// probes in isolation (no syscall programs), were a task one trap instead of two.
fn task_probe_ceiling(untraced_us: f64, tasks_per_request: f64, per_hit_us: f64) -> f64 {
    untraced_us / (untraced_us + tasks_per_request * per_hit_us)
}

/// One server's arms: throughput against untraced and floor-only, latency, agent cost, loss.
fn server_arms(s: &Value, key: &str, server: &str) {
    let ratio = f(&s["throughput_ratio"]);
    // #16: uvicorn against untraced; nginx against its floor (below), the syscall hooks'
    // physical limit being a large share of a static file server's work.
    let target = if key == "uvicorn" { ">= 0.98 (#16)" } else { "(report)" };
    row(
        &format!("{server}: traced / untraced throughput"),
        format!("{ratio:.3}"),
        target,
        key != "uvicorn" || ratio >= 0.98,
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
    if s.get("bound_rps").is_some() {
        info(
            &format!("  {server}: least capturing program / floor-only throughput"),
            format!("{:.3}", f(&s["bound_over_floor"])),
        );
        info(
            &format!("  {server}: its reader's CPU per request (us)"),
            format!("{:.2}", f(&s["bound_reader_cpu_us_per_request"])),
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
    agent_cpu(s, &format!("{server}: agent CPU per exchange"));
    for (arm, how) in [("otlp", "OTLP/gRPC"), ("otlp_http", "OTLP/HTTP")] {
        let o = &s[arm];
        if !o.is_object() {
            continue;
        }
        agent_cpu(o, &format!("{server}: agent CPU per exchange, {how} export on"));
        println!(
            "{:<58} {:>12}",
            format!("{server}: {how} on: traced / untraced, spans out / dropped"),
            format!("{:.3}, {:.0} / {:.0}", f(&o["throughput_ratio"]), f(&o["spans_exported"]), f(&o["spans_dropped"]))
        );
    }
    println!(
        "{:<58} {:>12}",
        format!("{server}: agent CPU s per 1,000 exchanges"),
        format!("{:.4}", f(&s["agent_cpu_s_per_1000_exchanges"]))
    );
    let cpu = &s["server_cpu_us_per_request"];
    if cpu.get("bound").is_some() {
        info(
            &format!("{server}: server CPU per request, untraced / floor / least capturing / traced (us)"),
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1}",
                f(&cpu["untraced"]),
                f(&cpu["floor"]),
                f(&cpu["bound"]),
                f(&cpu["traced"])
            ),
        );
    } else if cpu.get("floor").is_some() {
        info(
            &format!("{server}: server CPU per request, untraced / floor / traced (us)"),
            format!("{:.1} / {:.1} / {:.1}", f(&cpu["untraced"]), f(&cpu["floor"]), f(&cpu["traced"])),
        );
    } else if cpu.is_object() {
        info(
            &format!("{server}: server CPU per request, untraced / traced (us)"),
            format!("{:.1} / {:.1}", f(&cpu["untraced"]), f(&cpu["traced"])),
        );
    }
    let rss = f(&s["agent_peak_rss_mib"]);
    row(&format!("{server}: agent peak RSS (MiB)"), format!("{rss:.1}"), "<= 64 (#16)", rss <= 64.0);
    row(
        &format!("{server}: events lost / exchanges missed"),
        format!("{:.0} / {:.0}", f(&s["events_lost"]), f(&s["exchanges_missed"])),
        "0 / 0",
        f(&s["events_lost"]) == 0.0 && f(&s["exchanges_missed"]) == 0.0,
    );
}

/// An arm's agent CPU per exchange: steady under load (the target's measure), then over the
/// whole arm (its first seconds under load and the export of its last spans included).
fn agent_cpu(arm: &Value, what: &str) {
    let steady = f(&arm["agent_cpu_us_per_exchange"]);
    row(&format!("{what} (us)"), format!("{steady:.2}"), "<= 3 (#16)", steady <= 3.0);
    info("  whole arm, from a fresh agent (us)", format!("{:.2}", f(&arm["agent_cpu_us_per_exchange_whole_arm"])));
    if let Some(threads) = arm["agent_cpu_us_per_exchange_by_thread"].as_object() {
        let parts: Vec<String> =
            threads.iter().filter(|(_, v)| f(v) >= 0.005).map(|(name, v)| format!("{name} {:.2}", f(v))).collect();
        info("  by thread (us)", parts.join(", "));
    }
}

/// A runtime option's arm beside the plain traced one.
fn runtime_option(s: &Value, server: &str, option: &str, flag: &str) {
    let o = &s[option];
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
        format!("{:.0} / {:.0} / {:.0}", f(&cpu["untraced"]), f(&cpu["traced"]), f(&o["server_cpu_us_per_request"])),
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

/// Capacity (the nginx section's).
fn capacity(c: &Value) {
    let cap = f(&c["max_clean_exchanges_per_s"]);
    row("capacity: max exchanges/s with no loss (over tested loads)", format!("{cap:.0}"), ">= 20000", cap >= 20_000.0);
}

/// Memory at scale (the nginx section's, or the memory section alone).
fn memory(m: &Value) {
    row(
        &format!("agent RSS with {} idle keep-alive connections (MiB)", m["connections"]),
        format!("{:.1}", f(&m["agent_rss_mib"])),
        "<= 32 (#16)",
        f(&m["agent_rss_mib"]) <= 32.0,
    );
}

/// What log capture costs a write.
fn logs(l: &Value) {
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

#[cfg(test)]
mod tests {
    use super::task_probe_ceiling;

    #[test]
    fn the_task_probe_ceiling_counts_the_untraced_cpu_and_one_hit_per_task_only() {
        // 100 us untraced, 1 task per request at 2 us a hit: 100 / 102.
        assert!((task_probe_ceiling(100.0, 1.0, 2.0) - 100.0 / 102.0).abs() < 1e-12);
        assert!((task_probe_ceiling(50.0, 2.5, 4.0) - 50.0 / 60.0).abs() < 1e-12);
        assert_eq!(task_probe_ceiling(80.0, 0.0, 5.0), 1.0);
    }
}
