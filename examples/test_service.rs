//! A service for the integration tests (and a handy manual probe).
//!
//! `test_service serve <name>` serves in the foreground until SIGTERM;
//! `test_service call <name> <endpoint> [args as JSON-ish strings]` calls it
//! from a process of its own and prints the result.

use metabridge::CallError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static INSTANCES: AtomicU64 = AtomicU64::new(0);
static GATHERED: AtomicU64 = AtomicU64::new(0);
static LIVE_FOREVER: AtomicU64 = AtomicU64::new(0);
static MET: tokio::sync::Notify = tokio::sync::Notify::const_new();
struct Gate {
    holders: u64,
    open: bool,
}
static GATE: (std::sync::Mutex<Gate>, std::sync::Condvar) = (
    std::sync::Mutex::new(Gate {
        holders: 0,
        open: false,
    }),
    std::sync::Condvar::new(),
);

pub struct Fixture {
    id: u64,
    prefix: String,
    scale: i64,
}

#[derive(Debug)]
pub struct Refused(String);
impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

#[metabridge::service(name = "fixture")]
impl Fixture {
    pub fn new(prefix: String, scale: i64) -> Self {
        Fixture {
            id: INSTANCES.fetch_add(1, Ordering::SeqCst),
            prefix,
            scale,
        }
    }

    #[metabridge::function]
    pub fn echo(&self, text: String) -> String {
        format!("{}{}", self.prefix, text)
    }

    #[metabridge::function]
    pub fn scaled(&self, x: i64) -> i64 {
        x * self.scale
    }

    /// `n` bytes 0, 1, 2, ... as MessagePack bin (for `metabridge call`).
    #[metabridge::function]
    pub fn bytes(&self, n: u8) -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from((0..n).collect::<Vec<u8>>())
    }

    #[metabridge::function]
    pub fn instance_id(&self) -> u64 {
        self.id
    }

    #[metabridge::function]
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    #[metabridge::function]
    pub fn boom(&self) -> String {
        panic!("boom on purpose")
    }

    #[metabridge::function]
    pub fn check(&self, value: i64) -> Result<i64, Refused> {
        if value < 0 {
            Err(Refused(format!("{value} is negative")))
        } else {
            Ok(value)
        }
    }

    #[metabridge::function]
    pub fn blob(&self, data: Vec<u8>) -> usize {
        data.len()
    }

    #[metabridge::function]
    pub fn sleep_ms(&self, ms: u64) -> u64 {
        if std::env::var_os("FIXTURE_ANNOUNCE").is_some() {
            eprintln!("fixture: sleep_ms started");
        }
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    #[metabridge::function]
    pub async fn later(&self, ms: u64) -> String {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        format!("{}after {ms} ms", self.prefix)
    }

    /// Waits (up to 30 s) until `n` calls of `gather` are in progress at
    /// once; true if they were. Only concurrent async calls can all meet.
    #[metabridge::function]
    pub async fn gather(&self, n: u64) -> bool {
        GATHERED.fetch_add(1, Ordering::SeqCst);
        MET.notify_waiters();
        let all_here = async {
            loop {
                let notified = MET.notified();
                if GATHERED.load(Ordering::SeqCst) >= n {
                    MET.notify_waiters();
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all_here)
            .await
            .is_ok()
    }

    /// Blocks its thread until `release` is called (up to 30 s); true if
    /// released. A sync call that holds its worker.
    #[metabridge::function]
    pub fn hold(&self) -> bool {
        let (lock, cv) = &GATE;
        let mut gate = lock.lock().unwrap();
        gate.holders += 1;
        cv.notify_all();
        let (gate, _) = cv
            .wait_timeout_while(gate, Duration::from_secs(30), |g| !g.open)
            .unwrap();
        gate.open
    }

    /// Waits (up to 30 s) until a `hold` is in progress, then releases it;
    /// true if one was (so this call ran while `hold` held its thread).
    #[metabridge::function]
    pub fn release(&self) -> bool {
        let (lock, cv) = &GATE;
        let gate = lock.lock().unwrap();
        let (mut gate, _) = cv
            .wait_timeout_while(gate, Duration::from_secs(30), |g| g.holders == 0)
            .unwrap();
        gate.open = true;
        cv.notify_all();
        gate.holders > 0
    }

    /// `n` zero bytes (a large reply, for slow readers).
    #[metabridge::function]
    pub fn zeros(&self, n: u64) -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from(vec![0u8; n as usize])
    }

    /// Never completes (until cancelled: its future is dropped).
    #[metabridge::function]
    pub async fn forever(&self) -> bool {
        std::future::pending::<()>().await;
        true
    }

    /// Like `forever`, counted in `forever_live` while its future lives
    /// (a cancelled call's future is dropped).
    #[metabridge::function]
    pub async fn forever_counted(&self) -> bool {
        struct Live;
        impl Drop for Live {
            fn drop(&mut self) {
                LIVE_FOREVER.fetch_sub(1, Ordering::SeqCst);
            }
        }
        LIVE_FOREVER.fetch_add(1, Ordering::SeqCst);
        let _live = Live;
        std::future::pending::<()>().await;
        true
    }

    /// How many `forever_counted` calls have a live future.
    #[metabridge::function]
    pub fn forever_live(&self) -> u64 {
        LIVE_FOREVER.load(Ordering::SeqCst)
    }

    #[metabridge::endpoint("renamed")]
    pub fn original(&self) -> &'static str {
        "renamed and original"
    }
}

/// FIXTURE_PANIC_ON_DROP=1: every instance panics when dropped (evicted
/// from the cache, or at shutdown).
static PANIC_ON_DROP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Drop for Fixture {
    fn drop(&mut self) {
        if PANIC_ON_DROP.load(Ordering::Relaxed) {
            panic!("the Drop of instance {} panics on purpose", self.id);
        }
    }
}

fn main() {
    if std::env::var_os("FIXTURE_PANIC_ON_DROP").is_some() {
        PANIC_ON_DROP.store(true, Ordering::Relaxed);
        // The runtime catches these; keep the test's output readable.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.to_string().contains("panics on purpose") {
                report(info)
            }
        }));
    }
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let name = args.get(2).cloned().unwrap_or_else(|| "fixture".into());
            let cache: usize = std::env::var("FIXTURE_CACHE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(128);
            let mut service = Fixture::service().configure(|c| c.cache_capacity = cache);
            // FIXTURE_EXPOSE=1: TCP exposed on purpose (loopback, any port),
            // as `host`/`port` would: no token unless one is given.
            if std::env::var_os("FIXTURE_EXPOSE").is_some() {
                service = service.host("127.0.0.1");
            }
            let number = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok());
            if let Some(n) = number("FIXTURE_MAX_CHANNELS") {
                service = service.configure(|c| c.max_channels = n as usize);
            }
            if let Ok(uids) = std::env::var("FIXTURE_ALLOW_UIDS") {
                let uids: Vec<u32> = uids.split(',').filter_map(|u| u.parse().ok()).collect();
                service = service.configure(|c| c.allow_uids = uids);
            }
            if let Some(ms) = number("FIXTURE_SHUTDOWN_MS") {
                service = service
                    .configure(|c| c.shutdown_timeout = std::time::Duration::from_millis(ms));
            }
            let service = rename(service, &name);
            if let Err(e) = metabridge::serve(service) {
                eprintln!("test_service: {e}");
                std::process::exit(match e {
                    metabridge::Error::ServiceAlreadyExists { .. } => 3,
                    metabridge::Error::ShutdownTimeout { .. } => 4,
                    _ => 1,
                });
            }
        }
        Some("reexec") => {
            // A program that already runs threads: `run` must not fork it;
            // it re-executes this binary, whose `run` then serves.
            let name = args.get(2).cloned().unwrap_or_else(|| "fixture".into());
            let worker =
                std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(3600)));
            let handle = metabridge::run(Fixture::service().rename(&name)).unwrap_or_else(|e| {
                eprintln!("test_service: {e}");
                std::process::exit(1)
            });
            let client = metabridge::connect(&name).arg("r:").arg(1).open().unwrap();
            let served_by: u32 = client.call("pid", ()).unwrap();
            println!("{} {} {}", std::process::id(), handle.pid(), served_by);
            drop(client);
            handle.stop().unwrap();
            drop(worker);
            std::process::exit(0);
        }
        Some(mode @ ("detach" | "orphan")) => {
            // Starts the service as a daemon of this process, prints its pid,
            // then exits: detached, the daemon must live on; not detached
            // (and the handle never dropped), it must end with us.
            let name = args.get(2).cloned().unwrap_or_else(|| "fixture".into());
            let handle = metabridge::run(Fixture::service().rename(&name)).unwrap_or_else(|e| {
                eprintln!("test_service: {e}");
                std::process::exit(1)
            });
            assert!(handle.is_running());
            let pid = if mode == "detach" {
                handle.detach()
            } else {
                handle.pid()
            };
            println!("{pid}");
            std::process::exit(0); // skips destructors: no stop() from the handle
        }
        Some("logged") => {
            // A daemon with the call log on (`logger`), to the parent's
            // standard error or to $FIXTURE_LOG_FILE: one call, then stop.
            let name = args.get(2).cloned().unwrap_or_else(|| "fixture".into());
            let mut service = Fixture::service().rename(&name).logger(true);
            if let Some(f) = std::env::var_os("FIXTURE_LOG_FILE") {
                service = service.log_file(f);
            }
            let handle = metabridge::run(service).unwrap_or_else(|e| {
                eprintln!("test_service: {e}");
                std::process::exit(1)
            });
            let client = metabridge::connect(&name)
                .arg("log:")
                .arg(1)
                .open()
                .unwrap();
            let echoed: String = client.call("echo", ("hello",)).unwrap();
            println!("{echoed}");
            client.close();
            let tcp = metabridge::connect(&name)
                .arg("log:")
                .arg(1)
                .transport(metabridge::TransportKind::Tcp)
                .open()
                .unwrap();
            let echoed: String = tcp.call("echo", ("tcp",)).unwrap();
            println!("{echoed}");
            tcp.close();
            handle.stop().unwrap();
            std::process::exit(0);
        }
        Some("zeros") => {
            // One call of `zeros(n)`; prints the length received.
            let client = metabridge::connect(&args[2])
                .arg("z:")
                .arg(1)
                .open()
                .unwrap_or_else(|e| {
                    eprintln!("test_service: {e}");
                    std::process::exit(2)
                });
            let n: u64 = args[3].parse().unwrap();
            match client.call::<serde_bytes::ByteBuf>("zeros", (n,)) {
                Ok(v) if v.len() as u64 == n && v.iter().all(|&b| b == 0) => println!("{n}"),
                Ok(v) => {
                    eprintln!("test_service: a wrong reply of {} bytes", v.len());
                    std::process::exit(5)
                }
                Err(e) => {
                    eprintln!("test_service: {e}");
                    std::process::exit(4)
                }
            }
        }
        Some("call") => {
            let name = &args[2];
            let endpoint = &args[3];
            let client = metabridge::connect(name)
                .arg("p:")
                .arg(1)
                .open()
                .unwrap_or_else(|e| {
                    eprintln!("test_service: {e}");
                    std::process::exit(2)
                });
            let mut call = metabridge::CallArgs::new();
            for a in &args[4..] {
                call = call.arg(a).unwrap();
            }
            match client.call_with::<metabridge::rmpv::Value>(endpoint, &call) {
                Ok(v) => println!("{v} via {}", client.transport_name()),
                Err(e) => {
                    eprintln!("test_service: {e}");
                    std::process::exit(4)
                }
            }
        }
        _ => {
            eprintln!("usage: test_service serve <name> | call <name> <endpoint> [args...]");
            std::process::exit(64);
        }
    }
}

/// The macro names the service "fixture"; tests run many at once, each
/// under a name of its own.
fn rename(service: metabridge::Service<Fixture>, name: &str) -> metabridge::Service<Fixture> {
    service.rename(name)
}

#[allow(dead_code)]
fn unused(_: CallError) {}
