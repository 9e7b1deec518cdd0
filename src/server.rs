//! The service side at run time: control socket, workers, TCP listener.
//!
//! ```text
//! client ── Unix socket: "open channel <segment>" ──► acceptor ── assigns ──► worker k
//! client ══ shared-memory channel (request ring / reply ring) ══► worker k
//!           (client rings doorbell k only when worker k sleeps)
//! client ── TCP frames ──► tokio server ──► the same dispatcher
//! ```
//!
//! A worker serves many channels: it polls each for a request, answers,
//! and when a pass finds nothing for its spin budget it arms every channel
//! with the doorbell bit and sleeps on its doorbell. An idle service thus
//! uses no CPU, and a busy one answers without a syscall.

use crate::dispatch::{finish_async, CallCache, Dispatch, Dispatcher, Outcome};
use crate::envelope;
use crate::error::{Error, Result};
use crate::registry::{self, Entry, Registry};
use crate::service::Service;
use metabridge_shm::{Channel, ChannelConfig, Doorbell, DoorbellSet, ProcessIdentity};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    let orphaned = SigAction::new(
        SigHandler::Handler(on_parent_death_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe { sigaction(Signal::SIGUSR2, &orphaned) }.map_err(std::io::Error::from)?;
    Ok(())
}

/// Set by SIGUSR1, which `DaemonHandle::detach` sends: outlive the parent.
static DETACHED: AtomicBool = AtomicBool::new(false);
/// Set by SIGUSR2, the parent-death signal a daemon of `run` asks for.
static PARENT_GONE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_detach_signal(_: libc::c_int) {
    DETACHED.store(true, Ordering::SeqCst);
}

extern "C" fn on_parent_death_signal(_: libc::c_int) {
    PARENT_GONE.store(true, Ordering::SeqCst);
}

/// How long an orphaned daemon waits for a detach it may have been sent
/// just before its parent exited (the two signals can reach two threads,
/// and the handler of the first may run second).
const ORPHAN_GRACE: Duration = Duration::from_millis(100);

/// How long a worker polls its channels before sleeping.
const WORKER_SPIN: Duration = Duration::from_micros(50);
/// A sleeping worker wakes this often to check stop requests and peers.
const WORKER_TICK: Duration = Duration::from_millis(100);

/// How long a worker waits for room in a client's reply ring.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The handshake version byte of the control socket.
pub(crate) const HANDSHAKE_V1: u8 = 1;

/// New channels handed from the acceptor to a worker.
struct Inbox {
    pending: AtomicBool,
    channels: Mutex<Vec<Channel>>,
    bell: Doorbell,
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

/// Serves `service` in this process until SIGTERM, SIGINT or
/// [`request_stop`]. `ready` is told once the service is registered and
/// accepting.
pub(crate) fn serve_with<S: Send + Sync + 'static>(
    service: Service<S>,
    ready: impl FnOnce(&Entry),
) -> Result<()> {
    install_signal_handlers()?;
    let config = service.config.clone();
    let name = service.name.clone();
    let home = registry::home_dir();
    let registry = Registry::open(&home)?;
    let me = ProcessIdentity::current();
    if let Ok(e) = registry.lookup(&name) {
        if e.pid != me.pid {
            return Err(Error::ServiceAlreadyExists { name, pid: e.pid });
        }
    }
    let dispatch: Arc<dyn Dispatch> = Arc::new(Dispatcher::new(service));
    let shm_dir = std::env::var_os("METABRIDGE_SHM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.clone());
    let stem = format!("{}-{}", file_safe(&name), me.pid);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .thread_name("metabridge-rt")
        .enable_all()
        .build()?;

    // TCP: every service listens, on loopback unless told otherwise.
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

    // Shared memory: doorbells, control socket, workers.
    let bells = DoorbellSet::create(&shm_dir, &format!("{stem}-bells"), config.workers.max(1))?;
    let socket_path = home.join(format!("{stem}.sock"));
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)?;
    listener.set_nonblocking(true)?;
    let _socket_guard = RemoveOnDrop(socket_path.clone());

    let workers_stop = Arc::new(AtomicBool::new(false));
    let mut inboxes = Vec::new();
    let mut threads = Vec::new();
    for k in 0..config.workers.max(1) {
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
        doorbells: format!("{stem}-bells"),
        shm_dir: shm_dir.to_string_lossy().into_owned(),
        tcp: tcp_addr.to_string(),
        endpoints: dispatch.endpoint_names().to_vec(),
        token_required: dispatch.requires_token(),
    };
    let registered = registry.register(&entry);
    if registered.is_ok() {
        ready(&entry);
        accept_loop(&listener, &shm_dir, &inboxes);
        let _ = registry.unregister(&name, me.pid);
    }

    // Graceful stop: no new channels; workers answer what is already in
    // their rings, then close; TCP finishes in-flight requests.
    workers_stop.store(true, Ordering::SeqCst);
    for inbox in &inboxes {
        inbox.bell.ring();
    }
    for t in threads {
        let _ = t.join();
    }
    tcp_stop.shutdown();
    let _ = runtime.block_on(tcp_task);
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(bells);
    registered
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn accept_loop(listener: &UnixListener, shm_dir: &Path, inboxes: &[Arc<Inbox>]) {
    let mut next = 0usize;
    let mut orphaned_at: Option<Instant> = None;
    while !STOP.load(Ordering::SeqCst) {
        // A daemon ends with its parent, unless it was detached.
        if PARENT_GONE.load(Ordering::SeqCst) && !DETACHED.load(Ordering::SeqCst) {
            let since = *orphaned_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= ORPHAN_GRACE {
                break;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let k = next % inboxes.len();
                next += 1;
                if let Err(e) = handshake(stream, shm_dir, k, &inboxes[k]) {
                    tracing::debug!("channel setup failed: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(listener),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                let wait_ms = if orphaned_at.is_some() { 10 } else { 200 };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, wait_ms) };
            }
            Err(e) => {
                tracing::debug!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Reads "open segment <name>", opens it, hands it to worker `k`.
fn handshake(mut stream: UnixStream, shm_dir: &Path, k: usize, inbox: &Inbox) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut head = [0u8; 3];
    stream.read_exact(&mut head)?;
    let len = u16::from_le_bytes([head[1], head[2]]) as usize;
    if head[0] != HANDSHAKE_V1 || len == 0 || len > 255 {
        return Err(Error::Protocol("bad channel handshake".into()));
    }
    let mut name = vec![0u8; len];
    stream.read_exact(&mut name)?;
    let name =
        String::from_utf8(name).map_err(|_| Error::Protocol("segment name is not UTF-8".into()))?;
    let config = ChannelConfig {
        dir: shm_dir.to_owned(),
        ..ChannelConfig::default()
    };
    match Channel::open(&name, &config) {
        Ok(channel) => {
            {
                let mut list = inbox.channels.lock().unwrap_or_else(|p| p.into_inner());
                list.push(channel);
            }
            inbox.pending.store(true, Ordering::Release);
            inbox.bell.ring();
            let mut reply = vec![0u8];
            reply.extend_from_slice(&(k as u16).to_le_bytes());
            stream.write_all(&reply)?;
        }
        Err(e) => {
            let msg = e.to_string();
            let mut reply = vec![1u8];
            reply.extend_from_slice(&(msg.len().min(u16::MAX as usize) as u16).to_le_bytes());
            reply.extend_from_slice(&msg.as_bytes()[..msg.len().min(u16::MAX as usize)]);
            stream.write_all(&reply)?;
        }
    }
    Ok(())
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
    channel: Channel,
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
                channels.extend(list.drain(..).map(|channel| Conn {
                    channel,
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
                    .any(|c| c.channel.peer_cpu().is_some_and(|p| p != me));
                peer_here = channels.iter().any(|c| c.channel.peer_cpu() == Some(me));
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
                match c.channel.halves().1.arm_doorbell() {
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
                channels.retain(|c| c.channel.check_peer().is_ok());
            }
        }
    }

    /// Answers one request of `conn` if there is one.
    fn serve_one(&self, conn: &mut Conn, out: &mut Vec<u8>) -> Result<bool> {
        let channel = &mut conn.channel;
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
        tx.send_timeout(out, allowed)?;
        // Tell the client where we run, for its adaptive wait.
        channel.publish_cpu(metabridge_shm::current_cpu());
        Ok(true)
    }
}
