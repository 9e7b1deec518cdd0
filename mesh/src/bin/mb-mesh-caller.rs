//! A client for the mesh tests and benchmarks: `mb-mesh-caller <service>
//! <mesh-setting> <ca.pem> <token> <prefix> <threads>` calls `record` with
//! ids `<prefix>-<thread>-<n>` from `<threads>` threads until its stdin
//! closes, one line per call on stdout: `ok <id> <pid>` or
//! `err <id> <kind> <message>` (`kind`: `PeerGone`, `Timeout`, `NotFound`,
//! `Other`). With `<threads>` = `once:<endpoint>`, it makes one call of
//! `<endpoint>(<prefix>)` once a line comes on stdin, and prints its outcome.
//! Before the first call it waits to see `MB_WAIT_REPLICAS`
//! replicas (default 1). In `bench`, `MB_BENCH_THREADS` threads share
//! `MB_BENCH_CALLS` calls (default 1 and 20000). `MB_CLIENT_HOME` names the registry the client
//! looks in for a local replica (`.home()`), instead of `$METABRIDGE_HOME`.
//! With `MB_VIA_RELAY` set, calls go through the `metabridge-mesh relay`
//! helper (`metabridge::MeshRelay`) and the wait for replicas is one for
//! answers of `whoami` from that many processes.
//! With `MB_ASYNC` set, the calling threads are tasks of a tokio runtime
//! calling `MeshClient::call_async`.
//! `MB_CALL_TIMEOUT` is each call's timeout in milliseconds (default 5000).
//! `MB_STAMP=1` starts each line with the Unix time its call ended.
//! With `<threads>` = `bench`, it prints latency
//! percentiles of `echo` calls instead (see BENCHMARKS.md).

use metabridge_mesh::{ConnectMesh, MeshClient, MeshConfig};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, service, mesh, ca, token, prefix, threads] = &args[..] else {
        eprintln!("usage: mb-mesh-caller <service> <mesh-setting> <ca.pem> <token> <prefix> <threads|bench>");
        std::process::exit(2);
    };
    let config = MeshConfig::from_setting(mesh).expect("mesh setting");
    let ca_path = ca.clone();
    let ca = std::fs::read(ca).expect("read the CA");
    let timeout = Duration::from_millis(
        std::env::var("MB_CALL_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000),
    );
    let want: usize = std::env::var("MB_WAIT_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let client = if std::env::var_os("MB_VIA_RELAY").is_some() {
        Calls::Relay(Arc::new(metabridge::MeshRelay::new(
            metabridge::RelaySetup {
                service: service.clone(),
                setting: mesh.clone(),
                timeout_ms: timeout.as_millis() as u64,
                token: Some(token.clone()),
                tls_ca: Some(ca_path),
                ..Default::default()
            },
        )))
    } else {
        let mut connect = metabridge::connect(service).token(token).timeout(timeout);
        if let Ok(home) = std::env::var("MB_CLIENT_HOME") {
            connect = connect.home(home);
        }
        let client = connect
            .mesh(config)
            .tls(metabridge::tls::ClientTls::ca_pem(&ca).expect("CA"))
            .open()
            .unwrap_or_else(|e| panic!("mb-mesh-caller: {e}"));
        Calls::Mesh(client)
    };
    if !client.wait_for_replicas(want, Duration::from_secs(20)) {
        eprintln!("mb-mesh-caller: fewer than {want} replica(s) seen");
        std::process::exit(3);
    }
    println!("ready");
    std::io::stdout().flush().ok();
    if threads == "bench" {
        match std::env::var("MB_DIRECT") {
            // The same calls straight to one address, over TLS, for comparison.
            Ok(address) => {
                let direct = metabridge::connect(service)
                    .at(&address)
                    .token(token)
                    .tls(metabridge::tls::ClientTls::ca_pem(&ca).expect("CA"))
                    .open()
                    .expect("direct");
                bench(|p| direct.call("echo", (p,)));
            }
            Err(_) => bench(|p| client.call("echo", (p,))),
        }
        return;
    }
    if let Some(endpoint) = threads.strip_prefix("once:") {
        // One call; the test decides when it starts (a line on stdin).
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        println!(
            "{}",
            outcome(client.call::<u32>(endpoint, (prefix.clone(),)), prefix)
        );
        return;
    }
    let threads: usize = threads.parse().expect("threads");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for _ in stdin.lock().lines() {}
            stop.store(true, Ordering::Relaxed);
        });
    }
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let stamp = std::env::var_os("MB_STAMP").is_some();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (client, stop, out, prefix) =
                (client.clone(), stop.clone(), out.clone(), prefix.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{prefix}-{t}-{n}");
                    n += 1;
                    let result = client.call::<u32>("record", (id.clone(),));
                    if result.is_err() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let mut line = outcome(result, &id);
                    if stamp {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        line = format!("{}.{:09} {line}", now.as_secs(), now.subsec_nanos());
                    }
                    let mut o = out.lock().unwrap();
                    let _ = writeln!(o, "{line}");
                    let _ = o.flush();
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

thread_local! {
    /// With `MB_ASYNC`: this calling thread's own current-thread tokio
    /// runtime, which awaits `call_async` (one task per thread).
    static ASYNC: Option<tokio::runtime::Runtime> = std::env::var_os("MB_ASYNC").map(|_| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    });
}

/// The mesh client, in process or through the relay helper.
#[derive(Clone)]
enum Calls {
    Mesh(MeshClient),
    Relay(Arc<metabridge::MeshRelay>),
}

impl Calls {
    fn call<R: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        endpoint: &str,
        args: impl metabridge::IntoArgs + Send + 'static,
    ) -> metabridge::Result<R> {
        match self {
            Calls::Mesh(c) if ASYNC.with(|a| a.is_some()) => ASYNC.with(|a| {
                a.as_ref()
                    .expect("checked")
                    .block_on(c.call_async(endpoint, args))
            }),
            Calls::Mesh(c) => c.call(endpoint, args),
            Calls::Relay(r) => r.call(endpoint, args),
        }
    }

    fn wait_for_replicas(&self, n: usize, timeout: Duration) -> bool {
        match self {
            Calls::Mesh(c) => c.wait_for_replicas(n, timeout),
            Calls::Relay(r) => {
                let deadline = Instant::now() + timeout;
                let mut seen = std::collections::HashSet::new();
                let mut last = None;
                while Instant::now() < deadline {
                    match r.call::<u32>("whoami", ()) {
                        Ok(pid) => {
                            seen.insert(pid);
                            if seen.len() >= n {
                                return true;
                            }
                        }
                        Err(e) => {
                            last = Some(e);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                eprintln!("mb-mesh-caller: replicas {seen:?}; the last error: {last:?}");
                false
            }
        }
    }
}

/// A call's outcome as one line: `ok <id> <pid>` or `err <id> <kind> <message>`.
fn outcome(result: metabridge::Result<u32>, id: &str) -> String {
    match result {
        Ok(pid) => format!("ok {id} {pid}"),
        Err(e) => {
            let kind = match &e {
                metabridge::Error::PeerGone(_) => "PeerGone",
                metabridge::Error::Timeout(_) => "Timeout",
                metabridge::Error::ServiceNotFound { .. } => "NotFound",
                _ => "Other",
            };
            format!("err {id} {kind} {}", e.to_string().replace('\n', " "))
        }
    }
}

/// Latency of 64-byte `echo` calls: `MB_BENCH_CALLS` (default 20000)
/// after 2000 to warm up; prints `p50_us p99_us calls_per_s`.
fn bench(
    call: impl Fn(metabridge::Bin<Vec<u8>>) -> metabridge::Result<metabridge::Bin<Vec<u8>>> + Sync,
) {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let calls = var("MB_BENCH_CALLS", 20_000);
    let threads = var("MB_BENCH_THREADS", 1).max(1);
    let payload = metabridge::Bin(vec![7u8; 64]);
    for _ in 0..2000 {
        call(payload.clone()).expect("echo");
    }
    let t0 = Instant::now();
    let mut lat: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (call, payload) = (&call, payload.clone());
                scope.spawn(move || {
                    let mut lat = Vec::with_capacity(calls / threads);
                    for _ in 0..calls / threads {
                        let t = Instant::now();
                        call(payload.clone()).expect("echo");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a bench thread"))
            .collect()
    });
    let total = t0.elapsed();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    println!(
        "{:.1} {:.1} {:.0}",
        p(0.50),
        p(0.99),
        lat.len() as f64 / total.as_secs_f64()
    );
}
