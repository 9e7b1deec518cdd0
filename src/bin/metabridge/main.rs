//! `metabridge`: look inside the running services of this user and call
//! them by hand.
//!
//! ```text
//! metabridge list [--json]                     live services, their transports and counters
//! metabridge call SERVICE ENDPOINT [ARGS]      one call; the result as JSON
//! metabridge endpoints SERVICE                 endpoints and their parameters
//! metabridge stats SERVICE [--watch]           calls, errors, in flight, latency per endpoint
//! metabridge gc                                remove what dead services left
//! metabridge bench SERVICE ENDPOINT [ARGS]     latency percentiles and throughput
//! metabridge completions SHELL                 shell completions
//! ```
//!
//! Exit status: 0 on success, 1 when the call or command failed (a remote
//! error, an unknown service), 2 for a bad command line (invalid JSON
//! included).

#[path = "../../../examples/support/measure.rs"]
mod measure;

mod json;

use clap::{CommandFactory, Parser, Subcommand};
use metabridge::registry::{Entry, Registry};
use metabridge::{CallArgs, Client, Error};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// Look inside the MetaBridge services of this user, and call them.
#[derive(Parser)]
#[command(name = "metabridge", version, about, long_about = None)]
struct Cli {
    /// The registry directory (default: $METABRIDGE_HOME, or
    /// /dev/shm/metabridge-<uid>).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The live services of this user: name, pid, uptime, transports,
    /// endpoints, calls served, errors (stale entries shown as such).
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Calls an endpoint and prints its result as JSON on one line.
    Call {
        /// Service name, as registered.
        service: String,
        /// Endpoint name.
        endpoint: String,
        /// Positional arguments, a JSON array (e.g. '["mundo!", 2]').
        args: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Write a bytes result as raw bytes instead of base64 JSON.
        #[arg(long)]
        raw: bool,
    },
    /// The endpoints of a service, with parameter names where it knows
    /// them.
    Endpoints {
        /// Service name.
        service: String,
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Per endpoint: calls, errors, calls in flight, latency percentiles
    /// (from the histogram the service keeps; one call in 16 is timed);
    /// and the requests refused before any endpoint (unknown endpoint, bad
    /// token).
    Stats {
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
    },
    /// Removes stale registry entries, sockets, segments and doorbell files
    /// of dead services; says what it removed and what it left.
    Gc {
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Calls an endpoint from N clients for a while: latency percentiles
    /// and throughput.
    Bench(BenchPlan),
    /// Prints shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where and how to call.
#[derive(clap::Args, Clone)]
struct Target {
    /// Keyword arguments, a JSON object.
    #[arg(long, value_name = "JSON")]
    kwargs: Option<String>,
    /// Constructor arguments: a JSON array (positional) or object (keyword).
    #[arg(long, value_name = "JSON")]
    ctor: Option<String>,
    /// Call over TCP at this address instead of looking the service up.
    #[arg(long, value_name = "HOST:PORT")]
    at: Option<String>,
    /// The token (default: the one the service published in the registry).
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// Timeout of each call (e.g. 500ms, 5s).
    #[arg(long, default_value = "10s", value_parser = positive_duration)]
    timeout: Duration,
}

/// The longest duration a flag takes: a deadline this far ahead is still
/// representable (an `Instant` plus a few hundred years would not be).
const MAX_FLAG_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration flag (`--timeout`, `--interval`, `--duration`): more than 0
/// (a zero timeout cannot be set on a socket, a zero interval would poll
/// without sleeping, a zero bench measures nothing) and at most
/// [`MAX_FLAG_DURATION`]. Clap reports an error here as a usage error,
/// exit 2, naming the flag.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = measure::parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "{s:?} is no time at all: the duration must be more than 0 (e.g. 500ms, 5s)"
        ));
    }
    if d > MAX_FLAG_DURATION {
        return Err(format!(
            "{s:?} is too long: at most {}s (a year)",
            MAX_FLAG_DURATION.as_secs()
        ));
    }
    Ok(d)
}

/// A failure and the exit status it gives.
struct Fail(u8, String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        match e {
            Error::Remote { kind, message } => Fail(1, format!("{kind}: {message}")),
            other => Fail(1, other.to_string()),
        }
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(2, msg.into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(home) = &cli.home {
        std::env::set_var("METABRIDGE_HOME", home);
    }
    let result = match cli.command {
        Command::List { json } => list(json),
        Command::Call {
            service,
            endpoint,
            args,
            target,
            raw,
        } => call(&service, &endpoint, args.as_deref(), &target, raw),
        Command::Endpoints { service, json } => endpoints(&service, json),
        Command::Stats {
            service,
            watch,
            interval,
            count,
            json,
        } => stats(&service, watch, interval, count, json),
        Command::Gc { json } => gc(json),
        Command::Bench(plan) => bench(plan),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "metabridge", &mut script);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(&script);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            let _ = std::io::stdout().flush();
            eprintln!("metabridge: {msg}");
            ExitCode::from(code)
        }
    }
}

fn registry() -> Result<Registry, Fail> {
    Ok(Registry::open(&metabridge::registry::home_dir())?)
}

fn lookup(service: &str) -> Result<Entry, Fail> {
    Ok(registry()?.lookup(service)?)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fmt_uptime(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// How long a command waits for a service's counters.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

fn list(as_json: bool) -> Result<(), Fail> {
    let reg = registry()?;
    let mut rows = Vec::new();
    for (e, alive) in reg.list_all() {
        let snap = if alive {
            metabridge::stats::fetch(&e, STATS_TIMEOUT).ok()
        } else {
            None
        };
        rows.push((e, alive, snap));
    }
    rows.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let now = now_secs();
    if as_json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, alive, snap)| {
                serde_json::json!({
                    "name": e.name,
                    "pid": e.pid,
                    "state": if *alive { "live" } else { "stale" },
                    "registered_at": e.registered_at,
                    "uptime_secs": now.saturating_sub(e.registered_at),
                    "transports": {
                        "shm": e.control_socket,
                        "tcp": e.tcp,
                    },
                    "token_required": e.token_required,
                    "endpoints": e.endpoints,
                    "calls": snap.as_ref().map(|s| s.calls()),
                    "errors": snap.as_ref().map(|s| s.errors()),
                    "in_flight": snap.as_ref().map(|s| s.in_flight()),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no services registered in {}",
            metabridge::registry::home_dir().display()
        );
        return Ok(());
    }
    let mut table = vec![vec![
        "NAME".to_string(),
        "PID".into(),
        "STATE".into(),
        "UPTIME".into(),
        "TRANSPORTS".into(),
        "CALLS".into(),
        "ERRORS".into(),
        "ENDPOINTS".into(),
    ]];
    for (e, alive, snap) in &rows {
        let num = |f: fn(&metabridge::stats::Snapshot) -> u64| {
            snap.as_ref().map_or("-".to_string(), |s| f(s).to_string())
        };
        table.push(vec![
            e.name.clone(),
            e.pid.to_string(),
            if *alive { "live" } else { "stale" }.into(),
            if *alive {
                fmt_uptime(now.saturating_sub(e.registered_at))
            } else {
                "-".into()
            },
            format!("shm+tcp {}", e.tcp),
            num(|s| s.calls()),
            num(|s| s.errors()),
            e.endpoints.join(","),
        ]);
    }
    print_table(&table);
    Ok(())
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, |r| r.len());
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// The call's arguments and constructor arguments, from the command line.
fn call_args(args: Option<&str>, target: &Target) -> Result<(CallArgs, Option<CallArgs>), Fail> {
    let mut call = CallArgs::new();
    if let Some(a) = args {
        match json::parse(a, "ARGS")? {
            rmpv::Value::Array(items) => {
                for v in items {
                    call = call.arg(v)?;
                }
            }
            _ => return Err(usage("ARGS must be a JSON array, e.g. '[\"mundo!\", 2]'")),
        }
    }
    if let Some(k) = &target.kwargs {
        match json::parse(k, "--kwargs")? {
            rmpv::Value::Map(pairs) => {
                for (k, v) in pairs {
                    call = call.kwarg(k.as_str().unwrap_or_default(), v)?;
                }
            }
            _ => return Err(usage("--kwargs must be a JSON object, e.g. '{\"a\": 1}'")),
        }
    }
    let ctor = match &target.ctor {
        None => None,
        Some(c) => Some(match json::parse(c, "--ctor")? {
            rmpv::Value::Array(items) => {
                let mut a = CallArgs::new();
                for v in items {
                    a = a.arg(v)?;
                }
                a
            }
            rmpv::Value::Map(pairs) => {
                let mut a = CallArgs::new();
                for (k, v) in pairs {
                    a = a.kwarg(k.as_str().unwrap_or_default(), v)?;
                }
                a
            }
            _ => {
                return Err(usage(
                    "--ctor must be a JSON array (positional) or object (keyword arguments)",
                ))
            }
        }),
    };
    Ok((call, ctor))
}

fn open_client(service: &str, target: &Target, transport: &str) -> Result<Client, Fail> {
    let mut c = metabridge::connect(service).timeout(target.timeout);
    match transport {
        "auto" => {}
        "shm" => c = c.transport(metabridge::TransportKind::Shm),
        "tcp" => c = c.transport(metabridge::TransportKind::Tcp),
        other => {
            return Err(usage(format!(
                "unknown transport {other:?} (auto, shm, tcp)"
            )))
        }
    }
    if let Some(at) = &target.at {
        c = c.at(at);
    } else {
        // Name the service in the error if it is not there.
        lookup(service)?;
    }
    if let Some(t) = &target.token {
        c = c.token(t);
    }
    let (_, ctor) = call_args(None, target)?;
    if let Some(ctor) = ctor {
        c = c.ctor_args(ctor);
    }
    Ok(c.open()?)
}

fn call(
    service: &str,
    endpoint: &str,
    args: Option<&str>,
    target: &Target,
    raw: bool,
) -> Result<(), Fail> {
    let (call, _) = call_args(args, target)?;
    let client = open_client(service, target, "auto")?;
    let result: rmpv::Value = client.call_with(endpoint, &call)?;
    client.close();
    let mut out = std::io::stdout().lock();
    match (&result, raw) {
        (rmpv::Value::Binary(b), true) => {
            let _ = out.write_all(b);
        }
        _ => {
            let _ = writeln!(out, "{}", json::to_json(&result));
        }
    }
    Ok(())
}

fn endpoints(service: &str, as_json: bool) -> Result<(), Fail> {
    let entry = lookup(service)?;
    let listed: Vec<(String, Option<Vec<String>>)> =
        match metabridge::stats::fetch(&entry, STATS_TIMEOUT) {
            Ok(snap) => snap
                .endpoints
                .into_iter()
                .map(|e| (e.name, e.params))
                .collect(),
            Err(_) => entry.endpoints.iter().map(|n| (n.clone(), None)).collect(),
        };
    if as_json {
        let v: Vec<serde_json::Value> = listed
            .iter()
            .map(|(n, p)| serde_json::json!({"name": n, "params": p}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    for (name, params) in listed {
        match params {
            Some(p) => println!("{name}({})", p.join(", ")),
            None => println!("{name}"),
        }
    }
    Ok(())
}

fn stats(
    service: &str,
    watch: bool,
    interval: Duration,
    count: Option<u64>,
    as_json: bool,
) -> Result<(), Fail> {
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
        if as_json {
            println!("{}", stats_json(&entry, &snap, rate));
        } else {
            if watch && tty {
                print!("\x1b[2J\x1b[H");
            }
            print_stats(&entry, &snap, rate);
        }
        let _ = std::io::stdout().flush();
        reports += 1;
        if !watch || count.is_some_and(|c| reports >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
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

fn gc(as_json: bool) -> Result<(), Fail> {
    let report = metabridge::gc()?;
    if as_json {
        println!(
            "{}",
            serde_json::json!({"removed": report.removed, "kept": report.kept})
        );
        return Ok(());
    }
    if report.removed.is_empty() {
        println!("removed nothing");
    }
    for r in &report.removed {
        println!("removed: {r}");
    }
    for k in &report.kept {
        println!("kept: {k}");
    }
    Ok(())
}

#[derive(clap::Args)]
struct BenchPlan {
    /// Service name.
    service: String,
    /// Endpoint name.
    endpoint: String,
    /// Positional arguments, a JSON array.
    args: Option<String>,
    #[command(flatten)]
    target: Target,
    /// Concurrent clients (one thread and connection each).
    #[arg(long, short = 'n', default_value_t = 1)]
    clients: usize,
    /// How long to measure (after a short warm-up).
    #[arg(long, short, default_value = "3s", value_parser = positive_duration)]
    duration: Duration,
    /// Transport: auto (shared memory if it can), shm or tcp.
    #[arg(long, default_value = "auto")]
    transport: String,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn bench(plan: BenchPlan) -> Result<(), Fail> {
    if plan.clients == 0 {
        return Err(usage("--clients must be at least 1"));
    }
    let (args, _) = call_args(plan.args.as_deref(), &plan.target)?;
    // One client per thread, each its own connection; one trial call
    // first, so that a wrong call fails at once with its error.
    let mut clients = Vec::new();
    for _ in 0..plan.clients {
        clients.push(open_client(&plan.service, &plan.target, &plan.transport)?);
    }
    let _: rmpv::Value = clients[0].call_with(&plan.endpoint, &args)?;
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
                let (args, endpoint, done) = (&args, &plan.endpoint, &done);
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
                "service": plan.service,
                "endpoint": plan.endpoint,
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
            plan.service, plan.endpoint, plan.clients, secs
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
