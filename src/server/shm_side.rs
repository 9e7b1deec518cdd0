//! The shared-memory transport's service side: the doorbells (one sealed
//! memfd, handed to each client), the control socket (0600) where clients
//! hand over their segments, its accept loop and handshake threads, and
//! the workers that serve the channels (`worker.rs`).
//!
//! ```text
//! client ── Unix socket: sealed segment fd (control.rs) ──► acceptor ── assigns ──► worker k
//! client ══ shared-memory channel (request ring / reply ring) ══► worker k
//!           (client rings doorbell k only when worker k sleeps)
//! ```

use super::{Listening, Serving};
use crate::error::Result;
use crate::registry::Entry;
use crate::trust::PeerPolicy;
use crate::worker::{ChannelCount, Counted, Inbox};
use metabridge_shm::{Channel, ChannelConfig, DoorbellSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most channel handshakes in progress at once; more are refused at once
/// (each runs on a thread of its own, off the accept loop).
const MAX_PENDING_HANDSHAKES: usize = 64;

/// The longest the accept loop sleeps between looks at its stop flag.
const ACCEPT_WAIT: Duration = Duration::from_millis(200);

/// The shared-memory side once running.
pub(super) struct ShmSide {
    control_path: PathBuf,
    acceptor: Arc<Acceptor>,
    pool: Arc<crate::worker::Pool>,
    supervisor: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    accepting: std::thread::JoinHandle<()>,
    // Dropped last: the socket file goes once nothing accepts on it.
    _control: Arc<ControlSocket>,
}

/// The workers a service runs: one per doorbell.
pub(super) fn worker_count(config: &crate::config::ServiceConfig) -> usize {
    config.workers.clamp(1, metabridge_shm::MAX_BELLS)
}

/// Creates the doorbells, binds the control socket, starts the workers and
/// the accept loop (on a thread of its own).
pub(super) fn start(ctx: &Serving<'_>) -> Result<Box<dyn Listening>> {
    let workers = worker_count(ctx.config);
    let bells = DoorbellSet::create_memfd(workers)?;
    let control = Arc::new(bind_control_socket(ctx.home, ctx.stem)?);
    let started = start_workers(ctx, &bells, workers)?;
    let acceptor = Arc::new(Acceptor::new(
        ctx.name,
        ctx.config,
        bells,
        started.inboxes,
        ctx.counters.clone(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let accepting = {
        let (control, acceptor, stop) = (control.clone(), acceptor.clone(), stop.clone());
        std::thread::Builder::new()
            .name("metabridge-accept".into())
            .spawn(move || accept_loop(&control.listener, &acceptor, &stop))?
    };
    Ok(Box::new(ShmSide {
        control_path: control.path.clone(),
        acceptor,
        pool: started.pool,
        supervisor: started.supervisor,
        stop,
        accepting,
        _control: control,
    }))
}

impl Listening for ShmSide {
    fn publish(&self, entry: &mut Entry) {
        entry.control_socket = self.control_path.to_string_lossy().into_owned();
    }

    /// No new channels; workers answer what is already in their rings,
    /// then close.
    fn begin_stop(&self) {
        // Release: pairs with the accept loop's Acquire load.
        self.stop.store(true, Ordering::Release);
        self.pool.request_stop(&self.acceptor.inboxes);
    }

    fn finish_stop(self: Box<Self>, deadline: Instant) -> Option<String> {
        let stuck = self.pool.join_until(deadline);
        let _ = self.supervisor.join();
        let _ = self.accepting.join();
        (!stuck.is_empty())
            .then(|| format!("the shared-memory call running on worker(s) {stuck:?}"))
    }
}

/// The control socket, bound; its file is removed when this is dropped.
pub(super) struct ControlSocket {
    // Dropped first: the file goes before the listener closes.
    _remove: RemoveOnDrop,
    pub(super) listener: UnixListener,
    pub(super) path: PathBuf,
}

/// Binds the control socket `<stem>.sock` in `home`, readable and
/// writable by this user only, non-blocking for the accept loop.
pub(super) fn bind_control_socket(home: &std::path::Path, stem: &str) -> Result<ControlSocket> {
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
fn start_workers(ctx: &Serving<'_>, bells: &DoorbellSet, workers: usize) -> Result<Workers> {
    let Serving {
        runtime,
        dispatch,
        config,
        counters,
        ..
    } = *ctx;
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
            .ok_or(crate::HandshakeError::DoorbellSetTooSmall)?;
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
        config: &crate::config::ServiceConfig,
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

/// Accepts channel requests on the control socket until `stop`: checks
/// each peer's credentials before reading a byte, then runs its handshake
/// on a thread of its own (at most [`MAX_PENDING_HANDSHAKES`] at once).
fn accept_loop(listener: &UnixListener, acceptor: &Arc<Acceptor>, stop: &AtomicBool) {
    let channel_config = ChannelConfig {
        max_message: acceptor.max_message as u64,
        ..ChannelConfig::default()
    };
    // Acquire: pairs with the Release store of `begin_stop`.
    while !stop.load(Ordering::Acquire) {
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
                crate::platform::wait_readable(&listener, ACCEPT_WAIT);
            }
            Err(e) => {
                tracing::debug!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
