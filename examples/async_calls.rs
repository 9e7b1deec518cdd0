//! The async client, measured against a real daemon: what a call in flight
//! costs (threads), how much it disturbs the runtime it runs in (a 10 ms
//! heartbeat's lateness while 200 calls of 4 MiB run), and a small call's
//! latency against the blocking client's. Each figure is taken for the
//! async client (`call_async`) and for what it replaced, the blocking call
//! on tokio's blocking pool (`spawn_blocking(move || client.call(..))`), in
//! the same run.
//!
//! ```text
//! cargo run --release --example async_calls             # about 30 s
//! cargo run --release --example async_calls -- --quick  # about 10 s
//! ```

use metabridge::measure::percentile;
use metabridge::Bin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The service: a small answer, a large argument, and a call that waits.
#[derive(Default)]
pub struct Bench;

#[metabridge::service(name = "async-calls-bench")]
impl Bench {
    #[metabridge::function]
    pub fn get(&self, s: String) -> String {
        s
    }

    /// The length of a large argument.
    #[metabridge::function]
    pub fn size(&self, data: Vec<u8>) -> usize {
        data.len()
    }

    /// Answers after `ms` milliseconds, holding no thread.
    #[metabridge::function]
    pub async fn later(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Which client path a figure is for.
#[derive(Clone, Copy)]
enum Path {
    Async,
    Blocking,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Async => "call_async",
            Path::Blocking => "spawn_blocking(call)",
        }
    }
}

/// One call of `endpoint` with `args` by `path`.
async fn call<R, A>(client: &metabridge::Client, path: Path, endpoint: &'static str, args: A) -> R
where
    R: serde::de::DeserializeOwned + Send + 'static,
    A: metabridge::IntoArgs + Send + 'static,
{
    match path {
        Path::Async => client.call_async(endpoint, args).await.expect("call"),
        Path::Blocking => {
            let c = client.clone();
            tokio::task::spawn_blocking(move || c.call(endpoint, args))
                .await
                .expect("join")
                .expect("call")
        }
    }
}

/// Threads at the peak of `n` calls of 20 ms started at once.
async fn pending_threads(client: &metabridge::Client, path: Path, n: usize) -> (usize, usize) {
    let before = threads();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(threads() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { call::<u64, _>(&c, path, "later", (20u64,)).await })
        })
        .collect();
    for c in calls {
        c.await.expect("join");
    }
    done.store(true, Ordering::Relaxed);
    let _ = watch.await;
    (before, peak.load(Ordering::Relaxed) as usize)
}

/// The worst and median lateness of a 10 ms heartbeat while `n` calls
/// with a 4 MiB argument run at once, and how long the `n` calls took.
async fn heartbeat_late(
    client: &metabridge::Client,
    path: Path,
    n: usize,
) -> (Duration, Duration, Duration) {
    let done = Arc::new(AtomicBool::new(false));
    let beat = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut late = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let due = Instant::now() + Duration::from_millis(10);
                tokio::time::sleep_until(due.into()).await;
                late.push(Instant::now().saturating_duration_since(due));
            }
            late
        })
    };
    let data: Arc<[u8]> = vec![7u8; 4 << 20].into();
    let start = Instant::now();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (c, data) = (client.clone(), data.clone());
            tokio::spawn(async move {
                let len: usize = call(&c, path, "size", (Bin(data),)).await;
                assert_eq!(len, 4 << 20);
            })
        })
        .collect();
    for c in calls {
        c.await.expect("join");
    }
    let took = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut late = beat.await.expect("join");
    late.sort();
    let worst = late.last().copied().unwrap_or_default();
    (worst, late[late.len() / 2], took)
}

/// p50 and p99 of `n` sequential small calls, in ns.
async fn small_latency(client: &metabridge::Client, path: Option<Path>, n: usize) -> (u64, u64) {
    let mut ns = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let s: String = match path {
            Some(p) => call(client, p, "get", ("mundo!",)).await,
            None => tokio::task::block_in_place(|| client.call("get", ("mundo!",)).expect("call")),
        };
        std::hint::black_box(s);
        if i >= n / 10 {
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    ns.sort_unstable();
    (percentile(&ns, 0.50), percentile(&ns, 0.99))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let home = std::env::temp_dir().join(format!("mb-async-calls-{}", std::process::id()));
    std::fs::create_dir_all(&home)?;
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    std::env::set_var("METABRIDGE_HOME", &home);
    // Before any thread starts: run() forks.
    let daemon = Bench::run()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let client = metabridge::connect("async-calls-bench")
            .timeout(Duration::from_secs(120))
            .max_channels(64)
            .open()?;
        let (pending, small) = if quick {
            (2_000, 20_000)
        } else {
            (10_000, 100_000)
        };
        println!(
            "# async client, {} CPUs",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!();
        println!("| figure | call_async | spawn_blocking(call) |");
        println!("| --- | ---: | ---: |");
        let mut row = Vec::new();
        for path in [Path::Async, Path::Blocking] {
            let (before, peak) = pending_threads(&client, path, pending).await;
            row.push(format!("{peak} (from {before})"));
        }
        println!(
            "| peak threads, {pending} calls of 20 ms started at once (64 channels) | {} | {} |",
            row[0], row[1]
        );
        let mut row = Vec::new();
        for path in [Path::Async, Path::Blocking] {
            let (worst, median, took) = heartbeat_late(&client, path, 200).await;
            row.push(format!(
                "{worst:.1?} worst, {median:.1?} median (the calls: {took:.0?})"
            ));
            eprintln!("  .. heartbeat under {}: {worst:?}", path.name());
        }
        println!(
            "| 10 ms heartbeat lateness, 200 calls of 4 MiB | {} | {} |",
            row[0], row[1]
        );
        let (sync50, sync99) = small_latency(&client, None, small).await;
        let mut row = Vec::new();
        for path in [Path::Async, Path::Blocking] {
            let (p50, p99) = small_latency(&client, Some(path), small).await;
            row.push(format!("{p50} / {p99} ns"));
        }
        println!(
            "| 64 B call p50 / p99 (blocking `call`: {sync50} / {sync99} ns) | {} | {} |",
            row[0], row[1]
        );
        client.close();
        Ok::<(), metabridge::Error>(())
    });
    drop(rt);
    daemon.stop()?;
    let _ = std::fs::remove_dir_all(&home);
    result.map_err(Into::into)
}
