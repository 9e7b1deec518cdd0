//! The seed's benchmark, on both transports, against a real daemon:
//! single-client latency, 16-client throughput, 32-client bottleneck; and
//! the cost of the RPC layer over the raw ring round trip of the same bytes.
//!
//! ```text
//! cargo run --release --example bench            # full run (about a minute)
//! cargo run --release --example bench -- --quick # under 20 s
//! cargo run --release --example bench -- --json  # one JSON object per line
//! ```

#[path = "service_daemon.rs"]
#[allow(dead_code)]
mod service_daemon;

use metabridge::measure::{percentile, pin_process};

use metabridge_shm::{Channel, ChannelConfig};
use service_daemon::ServiceClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ECHO_ENV: &str = "MB_BENCH_ECHO";

/// The seed's benchmark against a real daemon (arguments parsed with clap,
/// like the `metabridge` tool's, which shares `metabridge::measure`).
#[derive(clap::Parser)]
#[command(about)]
struct Settings {
    /// A shorter run (under 20 s).
    #[arg(long)]
    quick: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// `split`: client on vCPU 0, service on vCPU 1; `same`: both on 0.
    #[arg(long, value_parser = ["split", "same"])]
    pin: Option<String>,
    /// Calls per latency run.
    #[arg(long)]
    calls: Option<usize>,
    /// Only this transport.
    #[arg(long, value_parser = ["shm", "tcp"])]
    transport: Option<String>,
    /// Only the single-client latency runs.
    #[arg(long)]
    latency_only: bool,
}

impl Settings {
    fn cpus(&self) -> Option<(usize, usize)> {
        match self.pin.as_deref() {
            Some("split") => Some((0, 1)),
            Some("same") => Some((0, 0)),
            _ => None,
        }
    }
}

impl Settings {
    fn latency_calls(&self) -> usize {
        if let Some(n) = self.calls {
            return n;
        }
        if self.quick {
            20_000
        } else {
            200_000
        }
    }
    fn window(&self) -> Duration {
        if self.quick {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(5)
        }
    }
}

fn progress(s: &Settings, msg: &str) {
    if !s.json {
        eprintln!("  .. {msg}");
    }
}

fn connect(transport: &str) -> ServiceClient {
    let kind = if transport == "tcp" {
        metabridge::TransportKind::Tcp
    } else {
        metabridge::TransportKind::Shm
    };
    let client = metabridge::connect("demo-service")
        .kwarg("argumento", "Olá,")
        .transport(kind)
        .open()
        .expect("connect");
    ServiceClient::from_client(client)
}

fn latency(s: &Settings, transport: &str) -> Vec<u64> {
    let client = connect(transport);
    for _ in 0..50_000 {
        client.get("mundo!").unwrap();
    }
    let mut samples = Vec::with_capacity(s.latency_calls());
    for _ in 0..s.latency_calls() {
        let t = Instant::now();
        let r = client.get("mundo!").unwrap();
        samples.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(r);
    }
    samples.sort_unstable();
    samples
}

/// `clients` threads, each with its own client, calling for the window.
fn concurrent(s: &Settings, transport: &str, clients: usize) -> (f64, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, calls) = (stop.clone(), calls.clone());
            let client = connect(transport);
            client.get("aquecer").unwrap();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    std::hint::black_box(client.get("mundo!").unwrap());
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                calls.fetch_add(lat.len() as u64, Ordering::Relaxed);
                lat
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(s.window());
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    (calls.load(Ordering::Relaxed) as f64 / elapsed, all)
}

/// The echo peer of the raw-ring measurement: answers each frame with a
/// reply of the given size, as the service answers `get`.
fn echo_child(name: &str, reply_len: usize) -> ! {
    let config = ChannelConfig {
        dir: bench_dir(),
        ..ChannelConfig::default()
    };
    let mut ch = Channel::open(name, &config).expect("open echo channel");
    let reply = vec![0x5au8; reply_len];
    loop {
        match ch.recv() {
            Ok(m) => drop(m),
            Err(_) => std::process::exit(0),
        }
        if ch.send(&reply).is_err() {
            std::process::exit(0);
        }
    }
}

fn bench_dir() -> std::path::PathBuf {
    metabridge::registry::home_dir()
}

/// p50 of the raw ring round trip with the request and response bytes of
/// one `get("mundo!")` call, default wait policy, two processes.
fn raw_ring(s: &Settings, request_len: usize, reply_len: usize) -> Vec<u64> {
    let name = format!("bench-raw-{}", std::process::id());
    let config = ChannelConfig {
        dir: bench_dir(),
        ..ChannelConfig::default()
    };
    let mut ch = Channel::create(&name, &config).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(ECHO_ENV, format!("{name}:{reply_len}"))
        .spawn()
        .unwrap();
    if let Some((client_cpu, service_cpu)) = s.cpus() {
        pin_process(0, client_cpu);
        pin_process(child.id(), service_cpu);
    }
    let request = vec![0xa5u8; request_len];
    for _ in 0..50_000 {
        ch.send(&request).unwrap();
        drop(ch.recv().unwrap());
    }
    let mut samples = Vec::with_capacity(s.latency_calls());
    for _ in 0..s.latency_calls() {
        let t = Instant::now();
        ch.send(&request).unwrap();
        let m = ch.recv().unwrap();
        samples.push(t.elapsed().as_nanos() as u64);
        drop(m);
    }
    drop(ch);
    let _ = child.wait();
    samples.sort_unstable();
    samples
}

fn main() -> metabridge::Result<()> {
    if let Ok(spec) = std::env::var(ECHO_ENV) {
        let (name, len) = spec.rsplit_once(':').unwrap();
        echo_child(name, len.parse().unwrap());
    }
    let s = <Settings as clap::Parser>::parse();
    let only_latency = s.latency_only;
    let daemon = service_daemon::start()?;
    if let Some((client_cpu, service_cpu)) = s.cpus() {
        pin_process(0, client_cpu);
        pin_process(daemon.pid(), service_cpu);
    }
    if !s.json {
        eprintln!(
            "placement: {}",
            s.pin.as_deref().unwrap_or("unpinned (the kernel chooses)")
        );
        eprintln!(
            "MetaBridge bench: demo-service `get`, daemon pid {}, {} calls per latency run, {:?} windows",
            daemon.pid(),
            s.latency_calls(),
            s.window()
        );
    }
    let mut rows = Vec::new();
    for transport in ["shm", "tcp"] {
        if s.transport.as_deref().is_some_and(|t| t != transport) {
            continue;
        }
        progress(&s, &format!("{transport}: latency, 1 client"));
        let l = latency(&s, transport);
        let (p50, p95, p99, p999, min, max) = (
            percentile(&l, 0.5),
            percentile(&l, 0.95),
            percentile(&l, 0.99),
            percentile(&l, 0.999),
            l[0],
            l[l.len() - 1],
        );
        rows.push(format!(
            r#"{{"transport":"{transport}","benchmark":"latency","p50_ns":{p50},"p95_ns":{p95},"p99_ns":{p99},"p999_ns":{p999},"min_ns":{min},"max_ns":{max}}}"#
        ));
        if !s.json {
            println!("{transport:>4} latency     1 client : p50 {p50:>8} ns  p95 {p95:>8} ns  p99 {p99:>8} ns  p99.9 {p999:>8} ns  min {min:>7} ns  max {max:>9} ns");
        }
        if only_latency {
            continue;
        }
        progress(&s, &format!("{transport}: throughput, 16 clients"));
        let (rate, _) = concurrent(&s, transport, 16);
        rows.push(format!(
            r#"{{"transport":"{transport}","benchmark":"throughput","clients":16,"calls_per_s":{rate:.0}}}"#
        ));
        if !s.json {
            println!("{transport:>4} throughput 16 clients: {rate:>10.0} calls/s");
        }
        progress(&s, &format!("{transport}: bottleneck, 32 clients"));
        let (rate, lat) = concurrent(&s, transport, 32);
        let (p50, p95) = (percentile(&lat, 0.5), percentile(&lat, 0.95));
        rows.push(format!(
            r#"{{"transport":"{transport}","benchmark":"bottleneck","clients":32,"calls_per_s":{rate:.0},"p50_ns":{p50},"p95_ns":{p95}}}"#
        ));
        if !s.json {
            println!("{transport:>4} bottleneck 32 clients: {rate:>10.0} calls/s  p50 {p50:>8} ns  p95 {p95:>8} ns");
        }
    }

    // The RPC layer's cost: the same bytes through the bare ring.
    progress(&s, "shm: raw ring round trip of the same bytes");
    let mut request = Vec::new();
    let ctor = metabridge::envelope::encode_ctor(
        &[0x90],
        &metabridge::to_msgpack(
            &[("argumento", "Olá,")]
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        )?,
    );
    metabridge::envelope::encode_call(
        &mut request,
        "get",
        &metabridge::to_msgpack(&("mundo!",))?,
        &[0x80],
        &ctor,
        None,
    );
    let mut reply = Vec::new();
    metabridge::envelope::encode_ok(&mut reply, "Olá, mundo!").unwrap();
    let raw = raw_ring(&s, request.len(), reply.len());
    let rpc = latency(&s, "shm");
    let (raw50, rpc50) = (percentile(&raw, 0.5), percentile(&rpc, 0.5));
    rows.push(format!(
        r#"{{"transport":"shm","benchmark":"rpc_overhead","raw_p50_ns":{raw50},"rpc_p50_ns":{rpc50},"overhead_ns":{}}}"#,
        rpc50 as i64 - raw50 as i64
    ));
    if !s.json {
        println!(
            " shm raw ring ({} B request, {} B reply) p50 {raw50} ns; full call p50 {rpc50} ns; RPC layer adds {} ns",
            request.len(),
            reply.len(),
            rpc50 as i64 - raw50 as i64
        );
    } else {
        for r in rows {
            println!("{r}");
        }
    }
    daemon.stop()?;
    Ok(())
}
