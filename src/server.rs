//! The service side at run time: control socket, workers, TCP listener.
//!
//! ```text
//! client ── Unix socket: sealed segment fd (control.rs) ──► acceptor ── assigns ──► worker k
//! client ══ shared-memory channel (request ring / reply ring) ══► worker k
//!           (client rings doorbell k only when worker k sleeps)
//! client ── TCP frames ──► tokio server ──► the same dispatcher
//! ```
//!
//! The workers, and how slow calls are kept from stalling others, are in
//! `worker.rs`; the control-socket handshake in `control.rs`.

use crate::control::PeerPolicy;
use crate::dispatch::{Dispatch, Dispatcher};
use crate::error::{Error, Result};
use crate::registry::{self, Entry, Registry};
use crate::service::Service;
use crate::worker::{ChannelCount, Counted, Inbox};
use metabridge_shm::{Channel, ChannelConfig, DoorbellSet, ProcessIdentity};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Set by SIGTERM / SIGINT (or [`request_stop`]): finish and leave.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: std::ffi::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Asks a service running in this process (`serve`) to stop gracefully.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<()> {
    use crate::platform::Signal;
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        crate::platform::on_signal(sig, on_stop_signal)?;
    }
    crate::platform::on_signal(Signal::SIGUSR1, on_detach_signal)?;
    Ok(())
}

/// Set by SIGUSR1, which `DaemonHandle::detach` sends: outlive the parent.
static DETACHED: AtomicBool = AtomicBool::new(false);
/// Set when the process that started this daemon with `run` has exited
/// (the daemon's parent watch, in daemon.rs, calls [`notice_parent_gone`]).
static PARENT_GONE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_detach_signal(_: std::ffi::c_int) {
    DETACHED.store(true, Ordering::SeqCst);
}

/// The parent process of this daemon has exited: stop, unless detached.
pub(crate) fn notice_parent_gone() {
    PARENT_GONE.store(true, Ordering::SeqCst);
}

/// How long an orphaned daemon waits for a detach it may have been sent
/// just before its parent exited (the parent watch and the SIGUSR1
/// handler run on two threads, and the first to start may finish second).
const ORPHAN_GRACE: Duration = Duration::from_millis(100);

/// How often the accept loop checks that the service is still registered.
const REGISTRATION_CHECK: Duration = Duration::from_secs(1);

/// Most channel handshakes in progress at once; more are refused at once
/// (each runs on a thread of its own, off the accept loop).
const MAX_PENDING_HANDSHAKES: usize = 64;

/// Name usable in file names: the service name with other bytes replaced.
pub(crate) fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// A random token, 128 bits as hex, from the kernel's generator.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves `service` in this process until SIGTERM, SIGINT or
/// [`request_stop`]. `ready` is told once the service is registered and
/// accepting.
///
/// Each step is a function below, in the order they run; a step that
/// fails undoes what it started (its parts release on drop) and the error
/// is returned as is.
pub(crate) fn serve_with<S: Send + Sync + 'static>(
    mut service: Service<S>,
    ready: impl FnOnce(&Entry),
) -> Result<()> {
    install_signal_handlers()?;
    let name = service.name.clone();
    let home = registry::home_dir();
    let me = ProcessIdentity::current();
    let registry = open_registry_and_collect(&home, &name, &me)?;
    let published_token = guard_default_tcp(&mut service.config)?;
    let config = service.config.clone();
    let counters = instrument(&mut service, &config);
    let dispatch: Arc<dyn Dispatch> = Arc::new(Dispatcher::new(service));
    let stem = format!("{}-{}", file_safe(&name), me.pid);
    let runtime = build_runtime(&config)?;
    let tcp = start_tcp(&runtime, &dispatch, &config, &counters, &name)?;

    // Shared memory: doorbells (a sealed memfd handed to each client),
    // the control socket (0600), workers.
    let workers = config.workers.clamp(1, metabridge_shm::MAX_BELLS);
    let bells = DoorbellSet::create_memfd(workers)?;
    let control = bind_control_socket(&home, &stem)?;
    let started = start_workers(&runtime, &dispatch, &config, &counters, &bells, workers)?;

    let entry = registry_entry(&name, &me, &control.path, &tcp, &dispatch, published_token);
    let acceptor = Arc::new(Acceptor::new(
        &name,
        &config,
        bells,
        started.inboxes,
        counters,
    ));
    let registered = register_and_accept(
        &registry,
        &entry,
        &control.listener,
        &acceptor,
        workers,
        ready,
    );
    let unfinished = stop_gracefully(
        &config,
        &started.pool,
        &acceptor,
        tcp,
        started.supervisor,
        runtime,
    );
    registered?;
    tracing::info!(target: "metabridge::service", service = %name, "stopped");
    unfinished.into_result(name, config.shutdown_timeout)
}

/// Opens this user's registry, refuses a name another live process holds,
/// and clears leftovers of services of this user that were killed.
fn open_registry_and_collect(
    home: &std::path::Path,
    name: &str,
    me: &ProcessIdentity,
) -> Result<Registry> {
    let registry = Registry::open(home)?;
    if let Ok(e) = registry.lookup(name) {
        if e.pid != me.pid {
            return Err(Error::ServiceAlreadyExists {
                name: name.to_string(),
                pid: e.pid,
            });
        }
    }
    let _ = crate::gc::collect(&registry);
    Ok(registry)
}

/// Loopback TCP is reachable by every user of the machine: unless the
/// operator chose the address (and then the token, or none), guard it
/// with a token of our own, published to this user's clients only.
/// Returns the token to publish, if one was made.
fn guard_default_tcp(config: &mut crate::service::ServiceConfig) -> Result<Option<String>> {
    if config.token.is_none() && config.tcp_is_default() {
        let token = random_token()?;
        config.token = Some(token.clone());
        Ok(Some(token))
    } else {
        Ok(None) // an operator's token is theirs to hand out
    }
}

/// Wraps the endpoints in the live counters and the call log
/// (instrument.rs); returns the counters, if they could be created.
/// METABRIDGE_STATS=0 turns them off (to measure what they cost).
fn instrument<S: Send + Sync + 'static>(
    service: &mut Service<S>,
    config: &crate::service::ServiceConfig,
) -> Option<Arc<crate::stats::Counters>> {
    let counters = if std::env::var_os("METABRIDGE_STATS").is_some_and(|v| v == "0") {
        None
    } else {
        let names = service.endpoint_names();
        let described: Vec<(String, Option<Vec<String>>)> = names
            .into_iter()
            .map(|n| {
                let p = service.params.get(&n).cloned();
                (n, p)
            })
            .collect();
        let threads = 2 * config.workers.max(1) + config.max_extra_workers + 16;
        match crate::stats::Counters::create(&described, threads) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                let name = &service.name;
                tracing::warn!("service {name:?} runs without live counters: {e}");
                None
            }
        }
    };
    let log_calls =
        config.logger || tracing::enabled!(target: "metabridge::call", tracing::Level::INFO);
    crate::instrument::instrument(service, counters.clone(), log_calls);
    counters
}

/// The tokio runtime that runs the TCP server and async endpoints.
fn build_runtime(config: &crate::service::ServiceConfig) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .thread_name("metabridge-rt")
        .enable_all()
        .build()?)
}

/// The TCP side once running: where it listens, how to stop it, its task.
struct TcpSide {
    addr: std::net::SocketAddr,
    stop: metabridge_tcp::ShutdownHandle,
    task: tokio::task::JoinHandle<std::io::Result<metabridge_tcp::Stopped>>,
}

/// Binds the TCP listener and starts serving on it; warns when it is
/// reachable from other machines without a token.
fn start_tcp(
    runtime: &tokio::runtime::Runtime,
    dispatch: &Arc<dyn Dispatch>,
    config: &crate::service::ServiceConfig,
    counters: &Option<Arc<crate::stats::Counters>>,
    name: &str,
) -> Result<TcpSide> {
    let addr = format!("{}:{}", config.host, config.port);
    let tcp = runtime.block_on(crate::tcp::bind(
        &addr,
        dispatch.clone(),
        config,
        counters.clone(),
    ))?;
    let tcp_addr = tcp.local_addr();
    if !tcp_addr.ip().is_loopback() && config.token.is_none() {
        eprintln!(
            "metabridge: WARNING: service {name:?} is exposed on {tcp_addr} without a token; anyone who can reach \
             this address can call it. Set METABRIDGE_TOKEN or ServiceConfig::token."
        );
    }
    let stop = tcp.shutdown_handle();
    let task = runtime.spawn(tcp.run());
    Ok(TcpSide {
        addr: tcp_addr,
        stop,
        task,
    })
}

/// The control socket, bound; its file is removed when this is dropped.
struct ControlSocket {
    // Dropped first: the file goes before the listener closes.
    _remove: RemoveOnDrop,
    listener: UnixListener,
    path: PathBuf,
}

/// Binds the control socket `<stem>.sock` in `home`, readable and
/// writable by this user only, non-blocking for the accept loop.
fn bind_control_socket(home: &std::path::Path, stem: &str) -> Result<ControlSocket> {
    let socket_path = home.join(format!("{stem}.sock"));
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)?;
    let remove = RemoveOnDrop(socket_path.clone());
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(ControlSocket {
        _remove: remove,
        listener,
        path: socket_path,
    })
}

/// The shared-memory workers once started.
struct Workers {
    pool: Arc<crate::worker::Pool>,
    /// One per worker, in doorbell order.
    inboxes: Vec<Arc<Inbox>>,
    supervisor: std::thread::JoinHandle<()>,
}

/// Starts one worker per doorbell, each on an inbox of its own, and the
/// supervisor that replaces workers that die.
fn start_workers(
    runtime: &tokio::runtime::Runtime,
    dispatch: &Arc<dyn Dispatch>,
    config: &crate::service::ServiceConfig,
    counters: &Option<Arc<crate::stats::Counters>>,
    bells: &DoorbellSet,
    workers: usize,
) -> Result<Workers> {
    let pool = crate::worker::Pool::new(
        dispatch.clone(),
        runtime.handle().clone(),
        config.max_extra_workers,
        config.max_message,
        counters.clone(),
    );
    let mut inboxes = Vec::new();
    for k in 0..workers {
        let bell = bells
            .bell(k)
            .ok_or_else(|| Error::Protocol("doorbell set too small".into()))?;
        let inbox = Arc::new(Inbox {
            pending: AtomicBool::new(false),
            channels: Mutex::new(Vec::new()),
            bell,
        });
        inboxes.push(inbox.clone());
        pool.start(inbox, Vec::new(), &k.to_string())?;
    }
    let supervisor = {
        let pool = pool.clone();
        std::thread::Builder::new()
            .name("metabridge-supervisor".into())
            .spawn(move || pool.supervise())?
    };
    Ok(Workers {
        pool,
        inboxes,
        supervisor,
    })
}

/// What the registry publishes about this service.
fn registry_entry(
    name: &str,
    me: &ProcessIdentity,
    socket_path: &std::path::Path,
    tcp: &TcpSide,
    dispatch: &Arc<dyn Dispatch>,
    published_token: Option<String>,
) -> Entry {
    Entry {
        name: name.to_string(),
        pid: me.pid,
        start_time: me.start_time,
        registered_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        control_socket: socket_path.to_string_lossy().into_owned(),
        tcp: tcp.addr.to_string(),
        endpoints: dispatch.endpoint_names().to_vec(),
        token_required: dispatch.requires_token(),
        token: published_token,
    }
}

/// Registers the service; once registered, tells `ready`, accepts channels
/// until told to stop, and unregisters. Returns how registering went.
fn register_and_accept(
    registry: &Registry,
    entry: &Entry,
    listener: &UnixListener,
    acceptor: &Arc<Acceptor>,
    workers: usize,
    ready: impl FnOnce(&Entry),
) -> Result<()> {
    let registered = registry.register(entry);
    if registered.is_ok() {
        tracing::info!(
            target: "metabridge::service",
            service = %entry.name,
            "started: pid {}, tcp {}, control socket {}, {workers} worker(s), endpoints {:?}",
            entry.pid,
            entry.tcp,
            entry.control_socket,
            entry.endpoints
        );
        ready(entry);
        accept_loop(listener, acceptor, registry, entry);
        let _ = registry.unregister(&entry.name, entry.pid);
        tracing::info!(target: "metabridge::service", service = %entry.name, "stopping");
    }
    registered
}

/// What a graceful stop left running when its deadline came.
struct Unfinished {
    /// Workers whose shared-memory call was still running.
    stuck: Vec<usize>,
    /// The TCP server did not return within the deadline.
    tcp_timed_out: bool,
    /// TCP calls the server reported abandoning.
    tcp_abandoned: usize,
}

/// Graceful stop: no new channels; workers answer what is already in
/// their rings, then close; TCP finishes in-flight requests. All of it
/// within the shutdown deadline: an endpoint that never returns must
/// not keep the process alive.
fn stop_gracefully(
    config: &crate::service::ServiceConfig,
    pool: &Arc<crate::worker::Pool>,
    acceptor: &Acceptor,
    tcp: TcpSide,
    supervisor: std::thread::JoinHandle<()>,
    runtime: tokio::runtime::Runtime,
) -> Unfinished {
    let deadline = Instant::now() + config.shutdown_timeout;
    pool.request_stop(&acceptor.inboxes);
    tcp.stop.shutdown();
    let tcp_done = runtime.block_on(async {
        tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), tcp.task).await
    });
    let stuck = pool.join_until(deadline);
    // The TCP server returns within its grace (the same deadline), saying
    // how many requests it abandoned.
    let tcp_abandoned = match &tcp_done {
        Ok(Ok(Ok(stopped))) => stopped.abandoned,
        _ => 0,
    };
    let _ = supervisor.join();
    runtime.shutdown_timeout(Duration::from_millis(100));
    Unfinished {
        stuck,
        tcp_timed_out: tcp_done.is_err(),
        tcp_abandoned,
    }
}

impl Unfinished {
    /// `Ok` if the stop finished everything; otherwise the
    /// [`Error::ShutdownTimeout`] naming what was abandoned, also logged.
    fn into_result(self, name: String, timeout: Duration) -> Result<()> {
        if self.stuck.is_empty() && !self.tcp_timed_out && self.tcp_abandoned == 0 {
            return Ok(());
        }
        let mut abandoned = Vec::new();
        if !self.stuck.is_empty() {
            abandoned.push(format!(
                "the shared-memory call running on worker(s) {:?}",
                self.stuck
            ));
        }
        if self.tcp_abandoned > 0 {
            abandoned.push(format!("{} TCP call(s)", self.tcp_abandoned));
        } else if self.tcp_timed_out {
            abandoned.push("the TCP calls still in progress".to_string());
        }
        let e = Error::ShutdownTimeout {
            name,
            timeout,
            abandoned: abandoned.join(" and "),
        };
        tracing::warn!("{e}");
        Err(e)
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the accept loop and its handshake threads share.
struct Acceptor {
    policy: PeerPolicy,
    bells: DoorbellSet,
    inboxes: Vec<Arc<Inbox>>,
    next: AtomicUsize,
    count: Arc<ChannelCount>,
    /// Handshakes in progress.
    pending: AtomicUsize,
    name: String,
    max_message: usize,
    /// The live counters, handed read-only to whoever asks (`OP_STATS`).
    counters: Option<Arc<crate::stats::Counters>>,
}

impl Acceptor {
    /// Accepts channels for peers this user trusts (`allow_uids`), up to
    /// `max_channels`, spread over `inboxes` in turn.
    fn new(
        name: &str,
        config: &crate::service::ServiceConfig,
        bells: DoorbellSet,
        inboxes: Vec<Arc<Inbox>>,
        counters: Option<Arc<crate::stats::Counters>>,
    ) -> Acceptor {
        Acceptor {
            policy: PeerPolicy {
                uid: crate::platform::euid(),
                also: config.allow_uids.clone(),
            },
            bells,
            inboxes,
            next: AtomicUsize::new(0),
            count: Arc::new(ChannelCount {
                open: AtomicUsize::new(0),
                max: config.max_channels,
            }),
            pending: AtomicUsize::new(0),
            name: name.to_string(),
            max_message: config.max_message,
            counters,
        }
    }

    /// Takes a new channel if the service has room, and hands it to the
    /// next worker in turn.
    fn place(&self, channel: Channel) -> std::result::Result<u16, String> {
        let open = self.count.open.fetch_add(1, Ordering::Relaxed);
        let counted = Counted {
            channel,
            count: self.count.clone(),
        };
        if open >= self.count.max {
            return Err(format!(
                "service {:?} has reached its limit of {} shared-memory channels \
                 (ServiceConfig::max_channels)",
                self.name, self.count.max
            ));
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len();
        let inbox = &self.inboxes[k];
        inbox
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(counted);
        inbox.pending.store(true, Ordering::Release);
        inbox.bell.ring();
        tracing::info!(
            target: "metabridge::service",
            service = %self.name,
            "client connected: shared-memory channel on worker {k} ({} open)",
            open + 1
        );
        Ok(k as u16)
    }
}

/// Counts a handshake thread in [`Acceptor::pending`] while it lives.
struct PendingGuard(Arc<Acceptor>);
impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept_loop(
    listener: &UnixListener,
    acceptor: &Arc<Acceptor>,
    registry: &Registry,
    entry: &Entry,
) {
    let mut orphaned_at: Option<Instant> = None;
    let mut checked = Instant::now();
    let channel_config = ChannelConfig {
        max_message: acceptor.max_message as u64,
        ..ChannelConfig::default()
    };
    while !STOP.load(Ordering::SeqCst) {
        // A daemon ends with its parent, unless it was detached.
        if PARENT_GONE.load(Ordering::SeqCst) && !DETACHED.load(Ordering::SeqCst) {
            let since = *orphaned_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= ORPHAN_GRACE {
                break;
            }
        }
        if checked.elapsed() >= REGISTRATION_CHECK {
            checked = Instant::now();
            keep_registered(registry, entry);
        }
        match listener.accept() {
            Ok((stream, _)) => {
                // Credentials first, before reading a byte.
                if let Err(why) = acceptor.policy.admit(&stream) {
                    tracing::warn!("control socket: {why}");
                    crate::control::refuse(&stream, &why);
                    continue;
                }
                if acceptor.pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_HANDSHAKES {
                    acceptor.pending.fetch_sub(1, Ordering::Relaxed);
                    crate::control::refuse_busy(&stream);
                    continue;
                }
                let guard = PendingGuard(acceptor.clone());
                let config = channel_config.clone();
                let spawned = std::thread::Builder::new()
                    .name("metabridge-handshake".into())
                    .spawn(move || {
                        let a = &guard.0;
                        if let Err(e) = crate::control::serve_request(
                            stream,
                            &config,
                            &a.bells,
                            a.counters.as_deref().map(|c| c.read_only_fd()),
                            |ch| a.place(ch),
                        ) {
                            tracing::debug!("channel setup failed: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a handshake thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let wait_ms = if orphaned_at.is_some() { 10 } else { 200 };
                crate::platform::wait_readable(&listener, Duration::from_millis(wait_ms));
            }
            Err(e) => {
                tracing::debug!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Registers `entry` again if it vanished from the registry (someone
/// truncated the file, or a client wrongly reclaimed it).
fn keep_registered(registry: &Registry, entry: &Entry) {
    match registry.holds(&entry.name, entry.pid) {
        Ok(true) => {}
        Ok(false) => match registry.register(entry) {
            Ok(()) => tracing::warn!(
                "the registry entry of {:?} had vanished; registered again",
                entry.name
            ),
            Err(e) => tracing::warn!("cannot register {:?} again: {e}", entry.name),
        },
        Err(e) => tracing::debug!("cannot read the registry: {e}"),
    }
}

#[cfg(test)]
mod tests;
