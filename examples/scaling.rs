//! How MetaBridge scales, against a real demo daemon: latency and
//! throughput as the payload grows (shared memory and TCP), and latency
//! and call rate as concurrent clients grow (shared memory).
//!
//! ```text
//! cargo run --release --example scaling                    # full run (under a minute)
//! cargo run --release --example scaling -- --quick         # about 10 s
//! cargo run --release --example scaling -- --pin split     # client on vCPU 0, daemon on vCPU 1
//! cargo run --release --example scaling -- --pin same      # both on vCPU 0
//! cargo run --release --example scaling -- --out /tmp/x   # write the docs under /tmp/x
//! ```
//!
//! Writes `docs/scaling.md` (the tables, also printed) and four SVG plots
//! in `docs/plots/`. The payload is `get(s)` with `s` a string of N ASCII
//! bytes; the service answers `"Olá, " + s`, so every call carries the
//! payload both ways, and throughput counts 2·N bytes per call.

#[path = "service_daemon.rs"]
#[allow(dead_code)]
mod service_daemon;

use metabridge::measure::{flag_value, percentile, pin_process};

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use service_daemon::ServiceClient;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const PAYLOADS: [usize; 7] = [64, 1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];
const CLIENTS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
const TRANSPORTS: [&str; 2] = ["shm", "tcp"];
/// What the demo's `get` puts before its argument.
const REPLY_PREFIX: &str = "Olá, ";

struct Settings {
    quick: bool,
    pin: Option<String>,
    out: PathBuf,
}

impl Settings {
    /// `split`: this process on vCPU 0, the daemon on vCPU 1; `same`: both on 0.
    fn cpus(&self) -> Option<(usize, usize)> {
        match self.pin.as_deref() {
            Some("split") => Some((0, 1)),
            Some("same") => Some((0, 0)),
            _ => None,
        }
    }

    fn placement(&self) -> &'static str {
        match self.pin.as_deref() {
            Some("split") => {
                "split: this process (all client threads) on vCPU 0, the daemon on vCPU 1"
            }
            Some("same") => "same: this process and the daemon both on vCPU 0",
            _ => "unpinned: the kernel places every thread",
        }
    }

    /// Measuring time of one payload point.
    fn payload_budget(&self) -> Duration {
        if self.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        }
    }

    /// Fewest calls of one payload point, however long they take.
    fn payload_min_calls(&self) -> usize {
        if self.quick {
            5
        } else {
            20
        }
    }

    /// Window of one concurrency point.
    fn window(&self) -> Duration {
        if self.quick {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        }
    }
}

fn connect(transport: &str) -> ServiceClient {
    let kind = match transport {
        "tcp" => metabridge::TransportKind::Tcp,
        _ => metabridge::TransportKind::Shm,
    };
    let client = metabridge::connect("demo-service")
        .kwarg("argumento", "Olá,")
        .transport(kind)
        .open()
        .expect("connect to demo-service");
    ServiceClient::from_client(client)
}

/// One point of the payload series.
struct PayloadPoint {
    transport: &'static str,
    size: usize,
    calls: usize,
    p50_ns: u64,
    p99_ns: u64,
    /// Payload bytes moved per second, both ways (2·N per call), in MB/s.
    mb_per_s: f64,
}

fn payload_point(
    s: &Settings,
    client: &ServiceClient,
    transport: &'static str,
    size: usize,
) -> PayloadPoint {
    let payload = "x".repeat(size);
    let want = REPLY_PREFIX.len() + size;
    let reply = client.get(&payload).expect("get");
    assert_eq!(reply.len(), want, "reply of a {size} B payload");
    // Warm up for a tenth of the budget (at least two calls).
    let budget = s.payload_budget();
    let t = Instant::now();
    let mut warm = 0;
    while warm < 2 || t.elapsed() < budget / 10 {
        std::hint::black_box(client.get(&payload).expect("get"));
        warm += 1;
    }
    let mut samples = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    while samples.len() < s.payload_min_calls() || start.elapsed() < budget {
        let t = Instant::now();
        let r = client.get(&payload).expect("get");
        samples.push(t.elapsed().as_nanos() as u64);
        debug_assert_eq!(r.len(), want);
        std::hint::black_box(r);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let calls = samples.len();
    samples.sort_unstable();
    PayloadPoint {
        transport,
        size,
        calls,
        p50_ns: percentile(&samples, 0.5),
        p99_ns: percentile(&samples, 0.99),
        mb_per_s: (2 * size * calls) as f64 / elapsed / 1e6,
    }
}

/// One point of the concurrency series.
struct ClientsPoint {
    clients: usize,
    calls: usize,
    rate: f64,
    p50_ns: u64,
    p95_ns: u64,
    p99_ns: u64,
}

/// `clients` threads, each with its own client, calling `get` with a
/// 64-byte payload for the window; all start together.
fn clients_point(s: &Settings, clients: usize) -> ClientsPoint {
    let payload: Arc<str> = "x".repeat(64).into();
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let client = connect("shm");
            for _ in 0..100 {
                client.get(&payload).expect("warm-up call");
            }
            let (stop, barrier, payload) = (stop.clone(), barrier.clone(), payload.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 16);
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    std::hint::black_box(client.get(&payload).expect("get"));
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                let end = Instant::now();
                client.close();
                (lat, end)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(s.window());
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut end = start;
    for t in threads {
        let (lat, e) = t.join().expect("client thread");
        all.extend(lat);
        end = end.max(e);
    }
    all.sort_unstable();
    ClientsPoint {
        clients,
        calls: all.len(),
        rate: all.len() as f64 / (end - start).as_secs_f64(),
        p50_ns: percentile(&all, 0.5),
        p95_ns: percentile(&all, 0.95),
        p99_ns: percentile(&all, 0.99),
    }
}

fn fmt_bytes(n: f64) -> String {
    let n = n.round() as u64;
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

fn fmt_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e4 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e8 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.0} ms", ns / 1e6)
    }
}

/// A tick label of a log axis: 1-2 significant digits, no trailing zeros.
fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

/// A tick label of a log axis in microseconds: `5 µs`, `20 ms`.
fn fmt_us_tick(v: f64) -> String {
    if v >= 1e3 {
        format!("{} ms", trim(v / 1e3))
    } else {
        format!("{} µs", trim(v))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `YYYY-MM-DD HH:MM UTC` of now, without a date crate.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// What the report says about the machine.
struct Machine {
    nproc: usize,
    kernel: String,
    cpu: String,
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Machine {
        // Before any pinning narrows this process's affinity.
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        cpu,
    }
}

/// One line of a chart.
struct Series {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// What a chart shows.
struct ChartSpec<'a> {
    path: PathBuf,
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    /// Ticks of the (log) x axis: the measured values.
    x_keys: Vec<f64>,
    x_fmt: &'a dyn Fn(&f64) -> String,
    y_fmt: &'a dyn Fn(&f64) -> String,
    /// Where the legend goes: a corner the lines stay away from.
    legend: SeriesLabelPosition,
    series: Vec<Series>,
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// A chart with a log y axis spanning the data.
fn chart_log_y(spec: &ChartSpec<'_>) -> DrawResult {
    let (lo, hi) = y_extent(spec);
    let (lo, hi) = (lo / 1.05, hi * 1.05);
    // Ticks at 1-2-5 steps over a few decades, else at powers of ten; the
    // axis runs from the tick below the data to the tick above it.
    let steps: &[f64] = if (hi / lo).log10() <= 3.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let ticks: Vec<f64> = (lo.log10().floor() as i32..=hi.log10().ceil() as i32)
        .flat_map(|e| steps.iter().map(move |m| m * 10f64.powi(e)))
        .collect();
    let lo = ticks.iter().rev().copied().find(|&t| t <= lo).unwrap_or(lo);
    let hi = ticks.iter().copied().find(|&t| t >= hi).unwrap_or(hi);
    let keys = ticks
        .into_iter()
        .filter(|t| (lo..=hi).contains(t))
        .collect();
    draw_chart(spec, (lo..hi).log_scale().with_key_points(keys))
}

/// A chart with a linear y axis from 0.
fn chart_linear_y(spec: &ChartSpec<'_>) -> DrawResult {
    let (_, hi) = y_extent(spec);
    draw_chart(spec, 0.0..hi * 1.12)
}

fn y_extent(spec: &ChartSpec<'_>) -> (f64, f64) {
    let ys = spec
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if lo.is_finite() && lo > 0.0 {
        (lo, hi)
    } else {
        (1.0, hi.max(10.0))
    }
}

fn draw_chart<Y>(spec: &ChartSpec<'_>, y_range: Y) -> DrawResult
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let root = SVGBackend::new(&spec.path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_lo = spec.x_keys.iter().copied().fold(f64::INFINITY, f64::min);
    let x_hi = spec.x_keys.iter().copied().fold(0f64, f64::max);
    let x_range = (x_lo / 1.5..x_hi * 1.5)
        .log_scale()
        .with_key_points(spec.x_keys.clone());
    let mut chart = ChartBuilder::on(&root)
        .caption(spec.title, ("sans-serif", 24))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(76)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc(spec.x_desc)
        .y_desc(spec.y_desc)
        .x_label_formatter(spec.x_fmt)
        .y_label_formatter(spec.y_fmt)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for s in &spec.series {
        let style = s.color.stroke_width(2);
        if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style))?
                .label(&s.label)
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 3, style)
                });
        } else {
            chart
                .draw_series(LineSeries::new(s.points.clone(), style))?
                .label(&s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart.draw_series(
            s.points
                .iter()
                .map(|&p| Circle::new(p, 3, s.color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(spec.legend.clone())
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    Ok(())
}

const SHM_COLOR: RGBColor = RGBColor(31, 119, 180);
const TCP_COLOR: RGBColor = RGBColor(214, 39, 40);

fn plots(dir: &Path, payload: &[PayloadPoint], clients: &[ClientsPoint]) -> DrawResult {
    std::fs::create_dir_all(dir)?;
    let sizes: Vec<f64> = PAYLOADS.iter().map(|&n| n as f64).collect();
    let counts: Vec<f64> = CLIENTS.iter().map(|&n| n as f64).collect();
    let bytes = |v: &f64| fmt_bytes(*v);
    let micros = |v: &f64| fmt_us_tick(*v);
    let plain = |v: &f64| fmt_tick(*v);
    let count = |v: &f64| format!("{v:.0}");
    let per_transport = |t: &str, f: &dyn Fn(&PayloadPoint) -> f64| -> Vec<(f64, f64)> {
        payload
            .iter()
            .filter(|p| p.transport == t)
            .map(|p| (p.size as f64, f(p)))
            .collect()
    };
    let color = |t: &str| if t == "tcp" { TCP_COLOR } else { SHM_COLOR };

    let mut series = Vec::new();
    for t in TRANSPORTS {
        series.push(Series {
            label: format!("{t} p50"),
            color: color(t),
            dashed: false,
            points: per_transport(t, &|p| p.p50_ns as f64 / 1e3),
        });
        series.push(Series {
            label: format!("{t} p99"),
            color: color(t),
            dashed: true,
            points: per_transport(t, &|p| p.p99_ns as f64 / 1e3),
        });
    }
    chart_log_y(&ChartSpec {
        path: dir.join("payload_latency.svg"),
        title: "Call latency vs payload (one client; payload both ways)",
        x_desc: "payload (bytes each way)",
        y_desc: "latency (log scale)",
        x_keys: sizes.clone(),
        x_fmt: &bytes,
        y_fmt: &micros,
        legend: SeriesLabelPosition::UpperLeft,
        series,
    })?;

    let series = TRANSPORTS
        .iter()
        .map(|&t| Series {
            label: t.to_string(),
            color: color(t),
            dashed: false,
            points: per_transport(t, &|p| p.mb_per_s),
        })
        .collect();
    chart_log_y(&ChartSpec {
        path: dir.join("payload_throughput.svg"),
        title: "Throughput vs payload (one client; 2·N bytes per call)",
        x_desc: "payload (bytes each way)",
        y_desc: "MB/s (10^6 B/s, log scale)",
        x_keys: sizes,
        x_fmt: &bytes,
        y_fmt: &plain,
        legend: SeriesLabelPosition::UpperLeft,
        series,
    })?;

    chart_linear_y(&ChartSpec {
        path: dir.join("clients_rate.svg"),
        title: "Calls per second vs concurrent clients (shm, 64 B payload)",
        x_desc: "concurrent clients (one thread each)",
        y_desc: "calls/s (all clients)",
        x_keys: counts.clone(),
        x_fmt: &count,
        y_fmt: &plain,
        legend: SeriesLabelPosition::LowerLeft,
        series: vec![Series {
            label: "shm".into(),
            color: SHM_COLOR,
            dashed: false,
            points: clients.iter().map(|c| (c.clients as f64, c.rate)).collect(),
        }],
    })?;

    let latency = |f: fn(&ClientsPoint) -> u64| -> Vec<(f64, f64)> {
        clients
            .iter()
            .map(|c| (c.clients as f64, f(c) as f64 / 1e3))
            .collect()
    };
    chart_log_y(&ChartSpec {
        path: dir.join("clients_latency.svg"),
        title: "Call latency vs concurrent clients (shm, 64 B payload)",
        x_desc: "concurrent clients (one thread each)",
        y_desc: "latency (log scale)",
        x_keys: counts,
        x_fmt: &count,
        y_fmt: &micros,
        legend: SeriesLabelPosition::UpperLeft,
        series: vec![
            Series {
                label: "p50".into(),
                color: SHM_COLOR,
                dashed: false,
                points: latency(|c| c.p50_ns),
            },
            Series {
                label: "p95".into(),
                color: SHM_COLOR,
                dashed: true,
                points: latency(|c| c.p95_ns),
            },
        ],
    })?;
    Ok(())
}

fn payload_table(points: &[PayloadPoint]) -> String {
    let mut t = String::from(
        "| payload | transport | calls | p50 | p99 | MB/s (2·N per call) |\n\
         | ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for p in points {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {:.1} |",
            fmt_bytes(p.size as f64),
            p.transport,
            p.calls,
            fmt_ns(p.p50_ns),
            fmt_ns(p.p99_ns),
            p.mb_per_s
        );
    }
    t
}

fn clients_table(points: &[ClientsPoint]) -> String {
    let mut t = String::from(
        "| clients | calls | calls/s | p50 | p95 | p99 |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for c in points {
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {} | {} | {} |",
            c.clients,
            c.calls,
            c.rate,
            fmt_ns(c.p50_ns),
            fmt_ns(c.p95_ns),
            fmt_ns(c.p99_ns)
        );
    }
    t
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| flag_value(&args, flag);
    let s = Settings {
        quick: args.iter().any(|a| a == "--quick"),
        pin: value("--pin"),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")),
    };
    if let Some(p) = s.pin.as_deref() {
        if p != "split" && p != "same" {
            return Err(format!("--pin takes split or same, not {p:?}").into());
        }
    }
    let machine = machine();

    // The daemon first: a single-threaded caller is forked.
    let daemon = service_daemon::Service::run()?;
    if let Some((client_cpu, service_cpu)) = s.cpus() {
        pin_process(0, client_cpu);
        pin_process(daemon.pid(), service_cpu);
    }
    eprintln!(
        "scaling: demo-service daemon pid {}, placement {}{}",
        daemon.pid(),
        s.pin.as_deref().unwrap_or("unpinned"),
        if s.quick { ", quick" } else { "" }
    );

    let mut payload = Vec::new();
    for transport in TRANSPORTS {
        let client = connect(transport);
        // The first point should not pay for cold caches, page faults and
        // a sleeping worker: call for a while first.
        let t = Instant::now();
        while t.elapsed() < s.payload_budget() / 2 {
            client.get("aquecer").expect("warm-up call");
        }
        for size in PAYLOADS {
            eprintln!("  .. {transport}: payload {}", fmt_bytes(size as f64));
            payload.push(payload_point(&s, &client, transport, size));
        }
        client.close();
    }
    // Both transports of one size next to each other.
    payload.sort_by_key(|p| (p.size, p.transport));

    let mut clients = Vec::new();
    for n in CLIENTS {
        eprintln!("  .. shm: {n} concurrent clients");
        clients.push(clients_point(&s, n));
    }
    daemon.stop()?;

    let command = if args.is_empty() {
        "cargo run --release --example scaling".to_string()
    } else {
        format!(
            "cargo run --release --example scaling -- {}",
            args.join(" ")
        )
    };
    let mut md = String::new();
    let _ = write!(
        md,
        "# Scaling\n\n\
         Generated by `examples/scaling.rs`; rerun it rather than editing this file.\n\n\
         - command: `{command}`\n\
         - date: {}\n\
         - machine: `nproc` {}, Linux `{}` (`uname -r`), {}\n\
         - placement: {}\n\
         - service: the demo daemon (`examples/service_daemon.rs`) with its default workers \
         (`$METABRIDGE_WORKERS`, else one per CPU); `get(s)` answers `\"Olá, \" + s`\n\
         - time per point: {} (payload series, at least {} calls), {} window (clients series)\n\
         - caveat: one run each; on a shared VM small-payload latencies can differ 2x between \
         runs, and the p99 of a point with few calls is close to its maximum\n\n",
        utc_now(),
        machine.nproc,
        machine.kernel,
        machine.cpu,
        s.placement(),
        humantime(s.payload_budget()),
        s.payload_min_calls(),
        humantime(s.window()),
    );
    let _ = write!(
        md,
        "## Payload size (one client)\n\n\
         The argument is a string of N ASCII bytes and comes back with a 6-byte prefix, so a \
         round trip carries the payload both ways; MB/s counts 2·N bytes per call \
         (10^6 bytes per MB). Latency is of one whole call, encode to decoded `String`.\n\n\
         {}\n\
         ![latency vs payload](plots/payload_latency.svg)\n\n\
         ![throughput vs payload](plots/payload_throughput.svg)\n\n\
         ## Concurrent clients (shared memory, 64-byte payload)\n\n\
         Each client is a thread with its own `ServiceClient`; all start together and call \
         `get` back to back for the window. calls/s is over all clients.\n\n\
         {}\n\
         ![calls per second vs clients](plots/clients_rate.svg)\n\n\
         ![latency vs clients](plots/clients_latency.svg)\n",
        payload_table(&payload),
        clients_table(&clients),
    );
    println!("{md}");
    std::fs::create_dir_all(&s.out)?;
    std::fs::write(s.out.join("scaling.md"), &md)?;
    plots(&s.out.join("plots"), &payload, &clients)?;
    eprintln!(
        "wrote {} and 4 plots in {}",
        s.out.join("scaling.md").display(),
        s.out.join("plots").display()
    );
    Ok(())
}

fn humantime(d: Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}
