//! `metabridge stats`: a service's counters per endpoint (calls, errors,
//! in flight, latency percentiles) once or every interval, as a table or
//! JSON.

use crate::fail::Fail;
use crate::flags::positive_duration;
use crate::services::{lookup, STATS_TIMEOUT};
use crate::table::print_table;
use metabridge::measure;
use metabridge::registry::Entry;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Service name.
    service: String,
    /// Print again every interval until interrupted.
    #[arg(long, short)]
    watch: bool,
    /// Interval of --watch (e.g. 500ms, 2s).
    #[arg(long, default_value = "1s", value_parser = positive_duration)]
    interval: Duration,
    /// Stop --watch after this many reports.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// JSON (one object per report) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints one report, or one every interval with `--watch` (the screen
/// cleared between reports on a terminal).
pub fn run(a: Args) -> Result<(), Fail> {
    let service = &a.service;
    let entry = lookup(service)?;
    let tty = std::io::stdout().is_terminal();
    let mut last: Option<(Instant, u64)> = None;
    let mut reports = 0u64;
    loop {
        let snap = metabridge::stats::fetch(&entry, STATS_TIMEOUT)
            .map_err(|e| Fail(1, format!("cannot read the counters of {service:?}: {e}")))?;
        let now = Instant::now();
        let total = snap.calls();
        let rate = last.map(|(t, n)| total.saturating_sub(n) as f64 / (now - t).as_secs_f64());
        last = Some((now, total));
        if a.json {
            println!("{}", stats_json(&entry, &snap, rate));
        } else {
            if a.watch && tty {
                print!("\x1b[2J\x1b[H");
            }
            print_stats(&entry, &snap, rate);
        }
        let _ = std::io::stdout().flush();
        reports += 1;
        if !a.watch || a.count.is_some_and(|c| reports >= c) {
            return Ok(());
        }
        std::thread::sleep(a.interval);
    }
}

fn pct(e: &metabridge::stats::EndpointStats, q: f64) -> Option<u64> {
    e.percentile(q).map(|d| d.as_nanos() as u64)
}

fn stats_json(
    entry: &Entry,
    snap: &metabridge::stats::Snapshot,
    rate: Option<f64>,
) -> serde_json::Value {
    let eps: Vec<serde_json::Value> = snap
        .endpoints
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "calls": e.calls,
                "errors": e.errors,
                "in_flight": e.in_flight,
                "timed": e.samples,
                "p50_ns": pct(e, 0.5),
                "p90_ns": pct(e, 0.9),
                "p99_ns": pct(e, 0.99),
                "max_ns": pct(e, 1.0),
                "mean_ns": e.mean().map(|d| d.as_nanos() as u64),
            })
        })
        .collect();
    serde_json::json!({
        "service": entry.name,
        "pid": entry.pid,
        "calls": snap.calls(),
        "errors": snap.errors(),
        "refused": snap.refused,
        "in_flight": snap.in_flight(),
        "calls_per_sec": rate,
        "endpoints": eps,
    })
}

fn print_stats(entry: &Entry, snap: &metabridge::stats::Snapshot, rate: Option<f64>) {
    println!(
        "{} (pid {}): {} calls, {} errors ({} refused before an endpoint), {} in flight{}",
        entry.name,
        entry.pid,
        snap.calls(),
        snap.errors(),
        snap.refused,
        snap.in_flight(),
        rate.map_or(String::new(), |r| format!(", {r:.0} calls/s"))
    );
    let mut table = vec![[
        "ENDPOINT",
        "CALLS",
        "ERRORS",
        "IN-FLIGHT",
        "P50",
        "P90",
        "P99",
        "MAX",
    ]
    .map(String::from)
    .to_vec()];
    let f = |v: Option<u64>| v.map_or("-".to_string(), measure::fmt_ns);
    for e in &snap.endpoints {
        table.push(vec![
            e.name.clone(),
            e.calls.to_string(),
            e.errors.to_string(),
            e.in_flight.to_string(),
            f(pct(e, 0.5)),
            f(pct(e, 0.9)),
            f(pct(e, 0.99)),
            f(pct(e, 1.0)),
        ]);
    }
    print_table(&table);
}
