//! The service side at run time: control socket, workers, TCP listener.
//!
//! ```text
//! client ── Unix socket: sealed segment fd (control.rs) ──► acceptor ── assigns ──► worker k
//! client ══ shared-memory channel (request ring / reply ring) ══► worker k
//!           (client rings doorbell k only when worker k sleeps)
//! client ── TCP frames ──► tokio server ──► the same dispatcher
//! ```
//!
//! A worker serves many channels: it polls each for a request, answers,
//! and when a pass finds nothing for its spin budget it arms every channel
//! with the doorbell bit and sleeps on its doorbell. An idle service thus
//! uses no CPU, and a busy one answers without a syscall.

use crate::control::PeerPolicy;
use crate::dispatch::{finish_async, CallCache, Dispatch, Dispatcher, Outcome};
use crate::envelope;
use crate::error::{Error, Result};
use crate::registry::{self, Entry, Registry};
use crate::service::Service;
use metabridge_shm::{Channel, ChannelConfig, Doorbell, DoorbellSet, ProcessIdentity};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Set by SIGTERM / SIGINT (or [`request_stop`]): finish and leave.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Asks a service running in this process (`serve`) to stop gracefully.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; it replaces no handler we rely on.
        unsafe { sigaction(sig, &action) }.map_err(std::io::Error::from)?;
    }
    let detach = SigAction::new(
        SigHandler::Handler(on_detach_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler makes one async-signal-safe system call.
    unsafe { sigaction(Signal::SIGUSR1, &detach) }.map_err(std::io::Error::from)?;
    Ok(())
}

/// Set by SIGUSR1, which `DaemonHandle::detach` sends: outlive the parent.
static DETACHED: AtomicBool = AtomicBool::new(false);
/// Set when the process that started this daemon with `run` has exited
/// (the daemon's parent watch, in daemon.rs, calls [`notice_parent_gone`]).
static PARENT_GONE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_detach_signal(_: libc::c_int) {
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

/// How long a worker polls its channels before sleeping.
const WORKER_SPIN: Duration = Duration::from_micros(50);
/// A sleeping worker wakes this often to check stop requests and peers.
const WORKER_TICK: Duration = Duration::from_millis(100);

/// How long a worker waits for room in a client's reply ring.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker keeps a reply buffer up to this size between calls; a larger
/// one (after a large reply) is freed, so one big call does not pin its
/// memory until restart.
const KEEP_REPLY_BUFFER: usize = 1 << 20;

/// How often the accept loop checks that the service is still registered.
const REGISTRATION_CHECK: Duration = Duration::from_secs(1);

/// Most channel handshakes in progress at once; more are refused at once
/// (each runs on a thread of its own, off the accept loop).
const MAX_PENDING_HANDSHAKES: usize = 64;

/// New channels handed from the acceptor to a worker.
struct Inbox {
    pending: AtomicBool,
    channels: Mutex<Vec<Counted>>,
    bell: Doorbell,
}

/// The service's count of open channels, against `ServiceConfig::max_channels`.
struct ChannelCount {
    open: AtomicUsize,
    max: usize,
}

/// A channel holding one unit of [`ChannelCount`], given back on drop.
struct Counted {
    channel: Channel,
    count: Arc<ChannelCount>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::Relaxed);
    }
}

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
pub(crate) fn serve_with<S: Send + Sync + 'static>(
    mut service: Service<S>,
    ready: impl FnOnce(&Entry),
) -> Result<()> {
    install_signal_handlers()?;
    let name = service.name.clone();
    let home = registry::home_dir();
    let registry = Registry::open(&home)?;
    let me = ProcessIdentity::current();
    if let Ok(e) = registry.lookup(&name) {
        if e.pid != me.pid {
            return Err(Error::ServiceAlreadyExists { name, pid: e.pid });
        }
    }
    // Leftovers of services of this user that were killed.
    let _ = crate::gc::collect(&registry);

    // Loopback TCP is reachable by every user of the machine: unless the
    // operator chose the address (and then the token, or none), guard it
    // with a token of our own, published to this user's clients only.
    let published_token = if service.config.token.is_none() && service.config.tcp_is_default() {
        let token = random_token()?;
        service.config.token = Some(token.clone());
        Some(token)
    } else {
        None // an operator's token is theirs to hand out
    };
    let config = service.config.clone();
    let dispatch: Arc<dyn Dispatch> = Arc::new(Dispatcher::new(service));
    let stem = format!("{}-{}", file_safe(&name), me.pid);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .thread_name("metabridge-rt")
        .enable_all()
        .build()?;

    let addr = format!("{}:{}", config.host, config.port);
    let tcp = runtime.block_on(crate::tcp::bind(&addr, dispatch.clone()))?;
    let tcp_addr = tcp.local_addr();
    if !tcp_addr.ip().is_loopback() && config.token.is_none() {
        eprintln!(
            "metabridge: WARNING: service {name:?} is exposed on {tcp_addr} without a token; anyone who can reach \
             this address can call it. Set METABRIDGE_TOKEN or ServiceConfig::token."
        );
    }
    let tcp_stop = tcp.shutdown_handle();
    let tcp_task = runtime.spawn(tcp.run());

    // Shared memory: doorbells (a sealed memfd handed to each client),
    // the control socket (0600), workers.
    let workers = config.workers.clamp(1, metabridge_shm::MAX_BELLS);
    let bells = DoorbellSet::create_memfd(workers)?;
    let socket_path = home.join(format!("{stem}.sock"));
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)?;
    let _socket_guard = RemoveOnDrop(socket_path.clone());
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;

    let workers_stop = Arc::new(AtomicBool::new(false));
    let mut inboxes = Vec::new();
    let mut threads = Vec::new();
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
        let worker = Worker {
            inbox,
            dispatch: dispatch.clone(),
            runtime: runtime.handle().clone(),
            stop: workers_stop.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("metabridge-worker-{k}"))
                .spawn(move || worker.run())?,
        );
    }

    let entry = Entry {
        name: name.clone(),
        pid: me.pid,
        start_time: me.start_time,
        registered_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        control_socket: socket_path.to_string_lossy().into_owned(),
        tcp: tcp_addr.to_string(),
        endpoints: dispatch.endpoint_names().to_vec(),
        token_required: dispatch.requires_token(),
        token: published_token,
    };
    let acceptor = Arc::new(Acceptor {
        policy: PeerPolicy {
            uid: nix::unistd::geteuid().as_raw(),
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
        name: name.clone(),
    });
    let registered = registry.register(&entry);
    if registered.is_ok() {
        ready(&entry);
        accept_loop(&listener, &acceptor, &registry, &entry);
        let _ = registry.unregister(&name, me.pid);
    }

    // Graceful stop: no new channels; workers answer what is already in
    // their rings, then close; TCP finishes in-flight requests. All of it
    // within the shutdown deadline: an endpoint that never returns must
    // not keep the process alive.
    let deadline = Instant::now() + config.shutdown_timeout;
    workers_stop.store(true, Ordering::SeqCst);
    for inbox in &acceptor.inboxes {
        inbox.bell.ring();
    }
    tcp_stop.shutdown();
    let tcp_done = runtime.block_on(async {
        tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), tcp_task).await
    });
    let mut stuck: Vec<usize> = Vec::new();
    for (k, t) in threads.into_iter().enumerate() {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            stuck.push(k);
        }
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    registered?;
    if !stuck.is_empty() || tcp_done.is_err() {
        let mut abandoned = Vec::new();
        if !stuck.is_empty() {
            abandoned.push(format!(
                "the shared-memory call running on worker(s) {stuck:?}"
            ));
        }
        if tcp_done.is_err() {
            abandoned.push("the TCP calls still in progress".to_string());
        }
        let e = Error::ShutdownTimeout {
            name,
            timeout: config.shutdown_timeout,
            abandoned: abandoned.join(" and "),
        };
        tracing::warn!("{e}");
        return Err(e);
    }
    Ok(())
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
}

impl Acceptor {
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
    let channel_config = ChannelConfig::default();
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
                    crate::control::refuse(&stream, "too many channel set-ups in progress; retry");
                    continue;
                }
                let guard = PendingGuard(acceptor.clone());
                let config = channel_config.clone();
                let spawned = std::thread::Builder::new()
                    .name("metabridge-handshake".into())
                    .spawn(move || {
                        let a = &guard.0;
                        if let Err(e) =
                            crate::control::serve_request(stream, &config, &a.bells, |ch| {
                                a.place(ch)
                            })
                        {
                            tracing::debug!("channel setup failed: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a handshake thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let wait_ms = if orphaned_at.is_some() { 10 } else { 200 };
                let mut fds = [nix::poll::PollFd::new(
                    listener.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(wait_ms as u16));
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

struct Worker {
    inbox: Arc<Inbox>,
    dispatch: Arc<dyn Dispatch>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
}

/// A channel served by a worker, with what the dispatcher remembers of its
/// last call.
struct Conn {
    counted: Counted,
    cache: CallCache,
}

impl Worker {
    fn run(self) {
        let mut channels: Vec<Conn> = Vec::new();
        let mut out = Vec::with_capacity(4096);
        let mut idle_since: Option<Instant> = None;
        let mut polls = 0u32;
        let mut last_check = Instant::now();
        let mut peer_elsewhere = false;
        let mut peer_here = false;
        loop {
            if self.inbox.pending.load(Ordering::Relaxed)
                && self.inbox.pending.swap(false, Ordering::Acquire)
            {
                let mut list = self
                    .inbox
                    .channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                channels.extend(list.drain(..).map(|counted| Conn {
                    counted,
                    cache: CallCache::default(),
                }));
            }
            let seen = self.inbox.bell.count();
            let mut worked = false;
            let mut i = 0;
            while i < channels.len() {
                match self.serve_one(&mut channels[i], &mut out) {
                    Ok(served) => {
                        worked |= served;
                        i += 1;
                    }
                    Err(_) => {
                        channels.swap_remove(i);
                    }
                }
            }
            if worked {
                idle_since = None;
                continue;
            }
            if self.stop.load(Ordering::SeqCst) {
                return; // the pass above answered everything already queued
            }
            // Spin for a while, but only while a client runs on another
            // CPU: spinning on the CPU it needs only delays it. (Where we
            // and the clients run is looked up once per idle period.)
            let now_idle = *idle_since.get_or_insert_with(|| {
                let me = metabridge_shm::current_cpu();
                peer_elsewhere = channels
                    .iter()
                    .any(|c| c.counted.channel.peer_cpu().is_some_and(|p| p != me));
                peer_here = channels
                    .iter()
                    .any(|c| c.counted.channel.peer_cpu() == Some(me));
                Instant::now()
            });
            if peer_elsewhere {
                polls = polls.wrapping_add(1);
                if polls % 64 != 0 || now_idle.elapsed() < WORKER_SPIN {
                    std::hint::spin_loop();
                    continue;
                }
            } else if peer_here && now_idle.elapsed() < WORKER_SPIN {
                // A client shares our CPU: give it the CPU so that it can
                // read our answer and send its next request.
                std::thread::yield_now();
                continue;
            }
            // Arm every channel, then sleep on the doorbell.
            let mut armed = true;
            for c in channels.iter_mut() {
                match c.counted.channel.halves().1.arm_doorbell() {
                    Ok(true) => {}
                    _ => {
                        armed = false;
                        break;
                    }
                }
            }
            if !armed {
                continue;
            }
            self.inbox.bell.wait(seen, WORKER_TICK);
            if last_check.elapsed() >= WORKER_TICK {
                last_check = Instant::now();
                channels.retain(|c| c.counted.channel.check_peer().is_ok());
            }
        }
    }

    /// Answers one request of `conn` if there is one.
    fn serve_one(&self, conn: &mut Conn, out: &mut Vec<u8>) -> Result<bool> {
        let channel = &mut conn.counted.channel;
        let (tx, rx) = channel.halves();
        let outcome = match rx.try_recv() {
            Ok(Some(request)) => self.dispatch.begin_cached(&request, out, &mut conn.cache),
            Ok(None) => return Ok(false),
            Err(metabridge_shm::Error::MessageTooLarge { len, max }) => {
                out.clear();
                envelope::encode_error(
                    out,
                    "ProtocolError",
                    &format!("request of {len} bytes exceeds {max}"),
                );
                Outcome::Done
            }
            Err(e) => return Err(e.into()),
        };
        if let Outcome::Pending(future) = outcome {
            let joined = self.runtime.block_on(self.runtime.spawn(future));
            finish_async(joined, out);
        }
        // A client that stops reading its replies must not hold this worker
        // (and every other channel it serves) for long: give up on it.
        // (Large replies get one more second per 16 MiB.)
        let allowed = REPLY_TIMEOUT + Duration::from_secs((out.len() >> 24) as u64);
        let sent = tx.send_timeout(out, allowed);
        if out.capacity() > KEEP_REPLY_BUFFER {
            *out = Vec::with_capacity(4096);
        }
        sent?;
        // Tell the client where we run, for its adaptive wait.
        channel.publish_cpu(metabridge_shm::current_cpu());
        Ok(true)
    }
}
