//! How MetaBridge scales, against a real demo daemon: latency and
//! throughput as the payload grows (shared memory and TCP), and latency
//! and call rate as concurrent clients grow (shared memory).
//!
//! ```text
//! cargo run --release -p metabridge-bench --example scaling                    # full run (under a minute)
//! cargo run --release -p metabridge-bench --example scaling -- --quick         # about 10 s
//! cargo run --release -p metabridge-bench --example scaling -- --pin split     # client on vCPU 0, daemon on vCPU 1
//! cargo run --release -p metabridge-bench --example scaling -- --pin same      # both on vCPU 0
//! cargo run --release -p metabridge-bench --example scaling -- --out /tmp/x   # write the docs under /tmp/x
//! cargo run --release -p metabridge-bench --example scaling -- --sizes 16777216 --transport shm  # one point only
//! ```
//!
//! `--sizes` (bytes, comma-separated) and `--transport` narrow the payload
//! series, and skip the image and clients series (for profiling one point).
//!
//! Writes `docs/scaling.md` (the tables, also printed) and four SVG plots
//! in `docs/plots/`. The payload series is a bytes echo (`echo(data:
//! Vec<u8>) -> Vec<u8>` of the `payload-echo` service defined here; the
//! `blob` rows echo through `metabridge::Blob`, read in place on both
//! sides), so every call carries the payload both ways; it reports GB/s of payload
//! (N bytes each way per call time) and the page faults per call of both
//! processes, next to this machine's single-thread memcpy measured in the
//! same run. The image series sends a 4 MiB image in a user's struct, with
//! its pixels as bytes (`metabridge::Bin`, a `metabridge::Blob`) and as
//! serde's default array of integers. The clients series calls the demo daemon's
//! `get(s)` with 64 bytes.

#[path = "../../../examples/service_daemon.rs"]
#[allow(dead_code)]
mod service_daemon;

use metabridge::measure::{flag_value, percentile, pin_process};
use metabridge::Bin;
use serde::{Deserialize, Serialize};

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use service_daemon::ServiceClient;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const PAYLOADS: [usize; 9] = [
    64,
    1 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];
/// Side of the image series' square RGBA image: 4 MiB of pixels.
const IMAGE_SIDE: u32 = 1024;
const CLIENTS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// `blob`: shared memory, echoing through `metabridge::Blob` (read in
/// place on both sides) instead of `Vec<u8>`.
const TRANSPORTS: [&str; 3] = ["shm", "blob", "tcp"];

/// An image as a user writes it, with its pixels as bytes.
#[derive(Clone, Serialize, Deserialize)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub pixels: Bin<Vec<u8>>,
}

/// The same image with serde's default encoding of `Vec<u8>`: an array
/// of integers, one MessagePack byte or two each (what a user writes
/// first, and the slow case this series shows).
#[derive(Clone, Serialize, Deserialize)]
pub struct PlainImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// The same image with its pixels as a `metabridge::Blob`: read in place
/// from the sender's pool when it arrives through shared memory.
#[derive(Clone, Serialize, Deserialize)]
pub struct BlobImage {
    pub width: u32,
    pub height: u32,
    pub pixels: metabridge::Blob,
}

/// The service of the payload and image series: it hands back what it got.
#[derive(Default)]
pub struct PayloadEcho;

#[metabridge::service(name = "payload-echo")]
impl PayloadEcho {
    #[metabridge::function]
    pub fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }

    /// The bytes back, read in place from the caller's pool and written
    /// once into the service's.
    #[metabridge::function]
    pub fn echo_blob(&self, data: metabridge::Blob) -> metabridge::Blob {
        data
    }

    #[metabridge::function]
    pub fn image(&self, image: Image) -> Image {
        image
    }

    #[metabridge::function]
    pub fn plain_image(&self, image: PlainImage) -> PlainImage {
        image
    }

    #[metabridge::function]
    pub fn blob_image(&self, image: BlobImage) -> BlobImage {
        image
    }
}

struct Settings {
    quick: bool,
    /// Only these payload sizes (and no image or clients series).
    sizes: Option<Vec<usize>>,
    transport: Option<String>,
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

fn connect_echo(transport: &str) -> metabridge::Client {
    let kind = match transport {
        "tcp" => metabridge::TransportKind::Tcp,
        _ => metabridge::TransportKind::Shm,
    };
    metabridge::connect("payload-echo")
        .transport(kind)
        .open()
        .expect("connect to payload-echo")
}

/// Minor page faults of this process so far (all threads).
fn own_minor_faults() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer it is given,
    // which points at a zeroed one of ours.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: initialised (zeroed, then filled by getrusage).
    unsafe { usage.assume_init() }.ru_minflt as u64
}

/// Minor page faults of process `pid` so far (field 10 of its stat).
fn minor_faults_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count after its ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// One point of the payload series.
struct PayloadPoint {
    transport: &'static str,
    size: usize,
    calls: usize,
    p50_ns: u64,
    p99_ns: u64,
    /// Payload bytes per second of call time at the median (N / p50), in
    /// GB/s (10^9 B/s).
    gb_per_s: f64,
    /// Minor page faults per measured call, in this process and the daemon.
    client_faults: f64,
    daemon_faults: f64,
}

/// Calls `call` for the budget after a warm-up (at least the minimum
/// number of calls), and measures latency and page faults per call.
fn measure_point(
    s: &Settings,
    daemon_pid: u32,
    transport: &'static str,
    size: usize,
    mut call: impl FnMut(),
) -> PayloadPoint {
    // Warm up for a tenth of the budget (at least three calls): the first
    // calls of a size pay for buffers that later ones reuse.
    let budget = s.payload_budget();
    let t = Instant::now();
    let mut warm = 0;
    while warm < 3 || t.elapsed() < budget / 10 {
        call();
        warm += 1;
    }
    let mut samples = Vec::with_capacity(1 << 16);
    let (own0, daemon0) = (own_minor_faults(), minor_faults_of(daemon_pid));
    let start = Instant::now();
    while samples.len() < s.payload_min_calls() || start.elapsed() < budget {
        let t = Instant::now();
        call();
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let (own1, daemon1) = (own_minor_faults(), minor_faults_of(daemon_pid));
    let calls = samples.len();
    samples.sort_unstable();
    let p50_ns = percentile(&samples, 0.5);
    PayloadPoint {
        transport,
        size,
        calls,
        p50_ns,
        p99_ns: percentile(&samples, 0.99),
        gb_per_s: size as f64 / p50_ns.max(1) as f64,
        client_faults: (own1 - own0) as f64 / calls as f64,
        daemon_faults: daemon1.saturating_sub(daemon0) as f64 / calls as f64,
    }
}

fn payload_point(
    s: &Settings,
    daemon_pid: u32,
    client: &metabridge::Client,
    transport: &'static str,
    size: usize,
) -> PayloadPoint {
    let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
    if transport == "blob" {
        let reply: metabridge::Blob = client
            .call("echo_blob", (Bin(&payload[..]),))
            .expect("echo_blob");
        assert!(reply == payload, "echo_blob of a {size} B payload");
        return measure_point(s, daemon_pid, transport, size, || {
            let r: metabridge::Blob = client
                .call("echo_blob", (Bin(&payload[..]),))
                .expect("echo_blob");
            debug_assert_eq!(r.len(), size);
            std::hint::black_box(r);
        });
    }
    let reply: Bin<Vec<u8>> = client.call("echo", (Bin(&payload[..]),)).expect("echo");
    assert!(reply.0 == payload, "echo of a {size} B payload");
    measure_point(s, daemon_pid, transport, size, || {
        let r: Bin<Vec<u8>> = client.call("echo", (Bin(&payload[..]),)).expect("echo");
        debug_assert_eq!(r.0.len(), size);
        std::hint::black_box(r);
    })
}

/// The image series: (struct, transport) points of a 4 MiB RGBA image.
fn image_points(
    s: &Settings,
    daemon_pid: u32,
    client: &metabridge::Client,
    transport: &'static str,
) -> Vec<(&'static str, PayloadPoint)> {
    let side = IMAGE_SIDE;
    let pixels: Vec<u8> = (0..side * side * 4).map(|i| (i * 13) as u8).collect();
    let size = pixels.len();
    let image = Image {
        width: side,
        height: side,
        pixels: Bin(pixels.clone()),
    };
    let blob = BlobImage {
        width: side,
        height: side,
        pixels: metabridge::Blob::from(pixels.clone()),
    };
    let plain = PlainImage {
        width: side,
        height: side,
        pixels,
    };
    let back: BlobImage = client.call("blob_image", (&blob,)).expect("blob_image");
    assert!(back.pixels == blob.pixels, "blob image echo");
    let back: Image = client.call("image", (&image,)).expect("image");
    assert!(back.pixels == image.pixels, "image echo");
    let back: PlainImage = client.call("plain_image", (&plain,)).expect("plain_image");
    assert!(back.pixels == plain.pixels, "plain image echo");
    vec![
        (
            "`Bin<Vec<u8>>` field",
            measure_point(s, daemon_pid, transport, size, || {
                let r: Image = client.call("image", (&image,)).expect("image");
                std::hint::black_box(r);
            }),
        ),
        (
            "`Blob` field",
            measure_point(s, daemon_pid, transport, size, || {
                let r: BlobImage = client.call("blob_image", (&blob,)).expect("blob_image");
                std::hint::black_box(r);
            }),
        ),
        (
            "plain `Vec<u8>` field",
            measure_point(s, daemon_pid, transport, size, || {
                let r: PlainImage = client.call("plain_image", (&plain,)).expect("plain_image");
                std::hint::black_box(r);
            }),
        ),
    ]
}

/// This machine's single-thread memcpy of 16 MiB between two warm
/// buffers, in GB/s (the median of 21 copies).
fn memcpy_gb_per_s() -> f64 {
    let len = 16 << 20;
    let src: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let mut dst = vec![1u8; len];
    let mut ns: Vec<u64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
            t.elapsed().as_nanos() as u64
        })
        .collect();
    ns.sort_unstable();
    len as f64 / ns[ns.len() / 2] as f64
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
const BLOB_COLOR: RGBColor = RGBColor(44, 160, 44);

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
    let color = |t: &str| match t {
        "tcp" => TCP_COLOR,
        "blob" => BLOB_COLOR,
        _ => SHM_COLOR,
    };

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
            points: per_transport(t, &|p| p.gb_per_s),
        })
        .collect();
    chart_log_y(&ChartSpec {
        path: dir.join("payload_throughput.svg"),
        title: "Payload bandwidth vs payload (one client; N bytes / p50)",
        x_desc: "payload (bytes each way)",
        y_desc: "GB/s (10^9 B/s, log scale)",
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
        "| payload | transport | calls | p50 | p99 | GB/s (N / p50) | faults/call client | faults/call daemon |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for p in points {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} |",
            fmt_bytes(p.size as f64),
            p.transport,
            p.calls,
            fmt_ns(p.p50_ns),
            fmt_ns(p.p99_ns),
            p.gb_per_s,
            p.client_faults,
            p.daemon_faults,
        );
    }
    t
}

fn image_table(points: &[(&str, PayloadPoint)]) -> String {
    let mut t = String::from(
        "| pixels as | transport | calls | p50 | p99 | faults/call client | faults/call daemon |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (kind, p) in points {
        let _ = writeln!(
            t,
            "| {kind} | {} | {} | {} | {} | {:.1} | {:.1} |",
            p.transport,
            p.calls,
            fmt_ns(p.p50_ns),
            fmt_ns(p.p99_ns),
            p.client_faults,
            p.daemon_faults,
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
        sizes: value("--sizes")
            .map(|v| {
                v.split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<usize>, _>>()
            })
            .transpose()?,
        transport: value("--transport"),
        pin: value("--pin"),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")),
    };
    if let Some(p) = s.pin.as_deref() {
        if p != "split" && p != "same" {
            return Err(format!("--pin takes split or same, not {p:?}").into());
        }
    }
    let machine = machine();

    // The daemons first: a single-threaded caller is forked.
    let daemon = service_daemon::Service::run()?;
    let echo_daemon = PayloadEcho::run()?;
    if let Some((client_cpu, service_cpu)) = s.cpus() {
        pin_process(0, client_cpu);
        pin_process(daemon.pid(), service_cpu);
        pin_process(echo_daemon.pid(), service_cpu);
    }
    let memcpy = memcpy_gb_per_s();
    eprintln!(
        "scaling: demo-service daemon pid {}, placement {}{}",
        daemon.pid(),
        s.pin.as_deref().unwrap_or("unpinned"),
        if s.quick { ", quick" } else { "" }
    );

    let echo_pid = echo_daemon.pid();
    let mut payload = Vec::new();
    let mut images = Vec::new();
    let narrowed = s.sizes.is_some() || s.transport.is_some();
    for transport in TRANSPORTS {
        if s.transport.as_deref().is_some_and(|t| t != transport) {
            continue;
        }
        let client = connect_echo(transport);
        // The first point should not pay for cold caches and a sleeping
        // worker: call for a while first.
        let t = Instant::now();
        while t.elapsed() < s.payload_budget() / 2 {
            let _: Bin<Vec<u8>> = client.call("echo", (Bin(&b"warm"[..]),))?;
        }
        for &size in s.sizes.as_deref().unwrap_or(&PAYLOADS) {
            eprintln!("  .. {transport}: payload {}", fmt_bytes(size as f64));
            payload.push(payload_point(&s, echo_pid, &client, transport, size));
        }
        if !narrowed && transport != "blob" {
            eprintln!("  .. {transport}: 4 MiB image in a struct");
            images.extend(image_points(&s, echo_pid, &client, transport));
        }
        client.close();
    }
    echo_daemon.stop()?;
    // Both transports of one size next to each other.
    payload.sort_by_key(|p| (p.size, p.transport));
    images.sort_by_key(|(kind, p)| (*kind, p.transport));

    let mut clients = Vec::new();
    for n in CLIENTS.iter().copied().filter(|_| !narrowed) {
        eprintln!("  .. shm: {n} concurrent clients");
        clients.push(clients_point(&s, n));
    }
    daemon.stop()?;

    let command = if args.is_empty() {
        "cargo run --release -p metabridge-bench --example scaling".to_string()
    } else {
        format!(
            "cargo run --release -p metabridge-bench --example scaling -- {}",
            args.join(" ")
        )
    };
    let mut md = String::new();
    let _ = write!(
        md,
        "# Scaling\n\n\
         Generated by `benches/runtime/examples/scaling.rs`; rerun it rather than editing this file.\n\n\
         - command: `{command}`\n\
         - date: {}\n\
         - machine: `nproc` {}, Linux `{}` (`uname -r`), {}\n\
         - placement: {}\n\
         - services: `payload-echo` (defined in `benches/runtime/examples/scaling.rs`) for the payload and image \
         series, the demo daemon (`examples/service_daemon.rs`) for the clients series, both with \
         their default workers (`$METABRIDGE_WORKERS`, else one per CPU)\n\
         - memcpy: {memcpy:.2} GB/s (one thread, 16 MiB between warm buffers, this run)\n\
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
         `echo(data: Vec<u8>) -> Vec<u8>` through the dynamic client: the payload goes both \
         ways; GB/s is N bytes over the median call time (10^9 bytes per GB). Latency is of one \
         whole call, encode to decoded `Vec<u8>`. Faults are minor page faults per measured \
         call (`getrusage` here, `/proc/<pid>/stat` of the daemon), after a warm-up.\n\n\
         {}\n\
         ## A 4 MiB image in a user's struct (one client)\n\n\
         `image(Image) -> Image` with `pixels: Bin<Vec<u8>>` (or `#[serde(with = \
         \"metabridge::bytes\")]`), and the same struct with a plain `Vec<u8>`, which \
         serde writes as an array of integers.\n\n\
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
        image_table(&images),
        clients_table(&clients),
    );
    println!("{md}");
    if narrowed && value("--out").is_none() {
        return Ok(()); // a narrowed run does not replace the docs
    }
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
