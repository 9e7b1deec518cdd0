//! `metabridge bench`: calls an endpoint from N clients (one thread and
//! connection each) for a while and reports latency percentiles and
//! throughput, as a table or JSON.

use crate::connect::{call_args, open_client};
use crate::fail::{usage, Fail};
use crate::flags::{positive_duration, CallSpec};
use crate::table::print_table;
use metabridge::measure;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

// `bench` words two of the shared arguments more briefly than `call`;
// `mut_args` rewrites them in place (`mut_arg` would move them to the
// end, reordering the positionals).
#[derive(clap::Args)]
#[command(mut_args(|a| match a.get_id().as_str() {
    "service" => a.help("Service name"),
    "args" => a.help("Positional arguments, a JSON array"),
    _ => a,
}))]
pub struct Args {
    #[command(flatten)]
    call: CallSpec,
    /// Concurrent clients (one thread and connection each).
    #[arg(long, short = 'n', default_value_t = 1)]
    clients: usize,
    /// How long to measure (after a short warm-up).
    #[arg(long, short, default_value = "3s", value_parser = positive_duration)]
    duration: Duration,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Measures: one trial call, a short warm-up, then every client calls as
/// fast as it can until the duration is up.
pub fn run(plan: Args) -> Result<(), Fail> {
    if plan.clients == 0 {
        return Err(usage("--clients must be at least 1"));
    }
    let (args, _) = call_args(plan.call.args.as_deref(), &plan.call.target)?;
    // One client per thread, each its own connection; one trial call
    // first, so that a wrong call fails at once with its error.
    let mut clients = Vec::new();
    for _ in 0..plan.clients {
        clients.push(open_client(&plan.call.service, &plan.call.target)?);
    }
    let _: rmpv::Value = clients[0].call_with(&plan.call.endpoint, &args)?;
    let transport = clients[0].transport_name();
    let warmup = Duration::from_millis(200).min(plan.duration / 4);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + plan.duration;
    let progress = !plan.json && std::io::stderr().is_terminal();
    let done = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<(measure::Latencies, u64, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|client| {
                let (args, endpoint, done) = (&args, &plan.call.endpoint, &done);
                s.spawn(move || {
                    let mut lat = measure::Latencies::default();
                    let mut errors = 0u64;
                    let mut first_error = None;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let r: metabridge::Result<rmpv::Value> = client.call_with(endpoint, args);
                        let ns = t0.elapsed().as_nanos() as u64;
                        if t0 >= measure_from {
                            lat.record(ns);
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Err(e) = r {
                                errors += 1;
                                first_error.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                    (lat, errors, first_error)
                })
            })
            .collect();
        if progress {
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
                let elapsed = Instant::now().saturating_duration_since(measure_from);
                let frac = (elapsed.as_secs_f64() / plan.duration.as_secs_f64()).min(1.0);
                let filled = (frac * 30.0) as usize;
                eprint!(
                    "\r[{}{}] {:>5.1}s/{:.1}s {:>10} calls",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    elapsed.as_secs_f64().min(plan.duration.as_secs_f64()),
                    plan.duration.as_secs_f64(),
                    done.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
            eprint!("\r{}\r", " ".repeat(64));
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default_result())
            .collect()
    });
    for c in &clients {
        c.close();
    }
    let mut lat = measure::Latencies::default();
    let mut errors = 0;
    let mut first_error = None;
    for (l, e, f) in results {
        lat.merge(&l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let calls = lat.count();
    let secs = plan.duration.as_secs_f64();
    let throughput = calls as f64 / secs;
    let q = |p: f64| lat.quantile(p);
    if plan.json {
        println!(
            "{}",
            serde_json::json!({
                "service": plan.call.service,
                "endpoint": plan.call.endpoint,
                "transport": transport,
                "clients": plan.clients,
                "seconds": secs,
                "calls": calls,
                "errors": errors,
                "calls_per_sec": throughput,
                "p50_ns": q(0.5),
                "p90_ns": q(0.9),
                "p99_ns": q(0.99),
                "p999_ns": q(0.999),
                "max_ns": lat.max(),
                "mean_ns": lat.mean(),
                "first_error": first_error,
            })
        );
    } else {
        println!(
            "{}.{} over {transport}, {} client(s), {:.1}s: {calls} calls, {errors} errors, {throughput:.0} calls/s",
            plan.call.service, plan.call.endpoint, plan.clients, secs
        );
        print_table(&[
            ["p50", "p90", "p99", "p99.9", "max", "mean"]
                .map(String::from)
                .to_vec(),
            vec![
                measure::fmt_ns(q(0.5)),
                measure::fmt_ns(q(0.9)),
                measure::fmt_ns(q(0.99)),
                measure::fmt_ns(q(0.999)),
                measure::fmt_ns(lat.max()),
                measure::fmt_ns(lat.mean() as u64),
            ],
        ]);
        if let Some(e) = first_error {
            println!("first error: {e}");
        }
    }
    Ok(())
}

/// A bench thread that panicked counts as no calls.
trait JoinDefault<T> {
    fn unwrap_or_default_result(self) -> T;
}

impl JoinDefault<(measure::Latencies, u64, Option<String>)>
    for std::thread::Result<(measure::Latencies, u64, Option<String>)>
{
    fn unwrap_or_default_result(self) -> (measure::Latencies, u64, Option<String>) {
        self.unwrap_or_else(|_| {
            (
                measure::Latencies::default(),
                1,
                Some("a client thread panicked".into()),
            )
        })
    }
}
