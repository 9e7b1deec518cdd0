//! The tokio TCP server.
//!
//! A [`Server`] accepts connections and serves each one in its own tokio
//! task: it reads a request frame, hands the payload to the [`Handler`],
//! writes the handler's response as one frame, and repeats until the client
//! closes the connection, stays idle too long, misbehaves, or the server is
//! shut down. Requests on one connection are answered strictly in order;
//! concurrency comes from using several connections (see
//! [`Pool`](crate::pool::Pool)).
//!
//! Failures are contained per connection: an I/O error, a stall, a
//! malformed or oversized frame, or even a panicking handler closes only the
//! connection concerned. While a handler is still working on a request,
//! the connection's socket is watched: a client that closes it (or whose
//! connection is reset) ends the call, its future dropped, so that a call
//! that never completes cannot keep a connection of a client long gone.
//!
//! Deadlines follow progress, not size: a frame being read or written may
//! take as long as it needs while bytes keep moving, and the connection is
//! closed only when none has moved for [`ServerConfig::stall_timeout`].
//!
//! Resources are bounded before authentication and per peer (see
//! [`Handler::requires_authentication`]). A connection that has not
//! authenticated may send frames of at most
//! [`ServerConfig::max_unauthenticated_frame`] bytes and must authenticate
//! within [`ServerConfig::auth_timeout`]; such connections have quotas of
//! their own ([`ServerConfig::max_unauthenticated_per_ip`] per address,
//! [`ServerConfig::max_unauthenticated`] in all), and when one is full the
//! oldest unauthenticated connection is closed to make room: an
//! authenticated connection never is. Authenticated connections (all of
//! them when the handler requires no authentication) are at most
//! [`ServerConfig::max_connections_per_ip`] per address, of which at most
//! [`ServerConfig::max_idle_per_ip`] idle, and
//! [`ServerConfig::max_connections`] in all; when a limit is reached, the
//! connection whose request frame has been half-sent for longer than
//! [`ServerConfig::auth_timeout`] is closed to make room, else the one idle
//! the longest, rather than refusing the new one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

use crate::frame::{read_frame, write_frame, FrameError, DEFAULT_MAX_FRAME};
use crate::peers::{Connections, Cut, Limits, Member, Peers};

/// How long [`Server::run`] waits by default, after shutdown was requested,
/// for the connection tasks to finish their in-flight requests before
/// abandoning them (see [`ServerConfig::shutdown_grace`]).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Default for [`ServerConfig::auth_timeout`]: 3 s.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Default for [`ServerConfig::stall_timeout`]: 10 s.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// After the grace period, how long aborted connection tasks get to
/// unwind; a task stuck in blocking code is abandoned after this.
const ABORT_WAIT: Duration = Duration::from_millis(100);

/// Idle time after which TCP keepalive probes start on accepted sockets.
pub(crate) const KEEPALIVE_TIME: Duration = Duration::from_secs(60);

/// Upper bound on how long a connection closed for an oversized frame keeps
/// discarding the client's input (so that closing it does not turn into a
/// reset that could destroy the error response in flight).
const LINGER: Duration = Duration::from_secs(1);

/// Largest buffer a connection keeps between requests.
const RETAIN_BUFFER: usize = 64 * 1024;

/// Delay before accepting again after `accept` failed (e.g. out of file
/// descriptors), so that a persistent error does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// The application side of the server: turns request payloads into response
/// payloads.
///
/// The transport knows nothing of RPC semantics; the bytes passed in and out
/// are whole frame payloads (for MetaBridge, msgpack envelopes).
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use metabridge_tcp::Handler;
///
/// /// Answers every request with its bytes reversed.
/// struct Reverse;
///
/// impl Handler for Reverse {
///     fn call(&self, mut request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
///         Box::pin(async move {
///             request.reverse();
///             request
///         })
///     }
///
///     fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
///         format!("frame of {declared} bytes exceeds {max}").into_bytes()
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(Reverse.call(b"abc".to_vec()).await, b"cba");
/// # });
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles one request frame body and returns the response frame body.
    ///
    /// The future is polled on a runtime thread: work that blocks (or
    /// computes for long) belongs in `tokio::task::block_in_place` or
    /// `spawn_blocking`, or every connection of the server waits for it.
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>>;

    /// The response body to send when a client declares a frame longer than
    /// the maximum; the server sends it, then closes that connection.
    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8>;

    /// The response body sent to a plaintext client on a TLS port (see
    /// `ServerConfig::tls`) before its connection is closed; empty (the
    /// default): closed without one.
    fn not_tls(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Whether a connection must authenticate before it may send frames
    /// larger than [`ServerConfig::max_unauthenticated_frame`] (default:
    /// false, every connection is trusted from the start). Asked once per
    /// connection, when it is accepted.
    ///
    /// A connection of a handler that requires authentication must
    /// authenticate within [`ServerConfig::auth_timeout`], and counts
    /// against the quotas of unauthenticated connections until it does.
    ///
    /// A handler that checks credentials in [`call`](Self::call) should say
    /// so here and implement [`authenticates`](Self::authenticates), so that
    /// a client without credentials cannot make the server buffer large
    /// frames only to be refused afterwards.
    fn requires_authentication(&self) -> bool {
        false
    }

    /// Whether `request` carries valid credentials. Asked before
    /// [`call`](Self::call) for each request of a connection that requires
    /// authentication and has not authenticated yet; once it answers true,
    /// the connection may send frames of up to [`ServerConfig::max_frame`]
    /// bytes. It does not decide whether `request` is served: `call` still
    /// receives it, and must refuse it itself if the credentials are wrong.
    ///
    /// The default accepts every request.
    ///
    /// ```
    /// use std::future::Future;
    /// use std::pin::Pin;
    /// use metabridge_tcp::Handler;
    ///
    /// /// Serves requests that start with its password; the rest get "no".
    /// struct Guarded(&'static [u8]);
    ///
    /// impl Handler for Guarded {
    ///     fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
    ///         let ok = self.authenticates(&request);
    ///         Box::pin(async move { if ok { request } else { b"no".to_vec() } })
    ///     }
    ///     fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
    ///         format!("frame of {declared} bytes exceeds {max}").into_bytes()
    ///     }
    ///     fn requires_authentication(&self) -> bool {
    ///         true
    ///     }
    ///     fn authenticates(&self, request: &[u8]) -> bool {
    ///         request.starts_with(self.0)
    ///     }
    /// }
    ///
    /// let guarded = Guarded(b"sesame:");
    /// assert!(guarded.authenticates(b"sesame: hello"));
    /// assert!(!guarded.authenticates(b"hello"));
    /// ```
    fn authenticates(&self, request: &[u8]) -> bool {
        let _ = request;
        true
    }

    /// The response body to send when a connection that has not
    /// authenticated declares a frame longer than `max` (which is then
    /// [`ServerConfig::max_unauthenticated_frame`]); the server sends it,
    /// then closes that connection. Defaults to
    /// [`frame_too_large`](Self::frame_too_large).
    fn unauthenticated_frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        self.frame_too_large(declared, max)
    }
}

/// How [`Server::run`] ended.
///
/// ```
/// let stopped = metabridge_tcp::Stopped::default();
/// assert_eq!(stopped.abandoned, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Connections still handling a request when the shutdown grace period
    /// ended. Their tasks were aborted; a handler stuck in blocking code
    /// cannot be interrupted, so it is left running and its response is
    /// never sent.
    pub abandoned: usize,
}

/// Server limits and timeouts.
///
/// ```
/// use std::time::Duration;
/// use metabridge_tcp::ServerConfig;
///
/// let config = ServerConfig {
///     stall_timeout: Duration::from_secs(2),
///     max_connections: 64,
///     ..ServerConfig::default()
/// };
/// assert_eq!(config.max_frame, 64 * 1024 * 1024);
/// assert_eq!(config.idle_timeout, Duration::from_secs(60));
/// assert_eq!(config.auth_timeout, Duration::from_secs(3));
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest accepted request payload, in bytes (default 64 MiB). A client
    /// declaring more gets [`Handler::frame_too_large`]'s response and its
    /// connection is closed.
    pub max_frame: usize,
    /// A connection on which no new request starts for this long is closed
    /// (default 60 s).
    pub idle_timeout: Duration,
    /// While a request frame is being read, or a response written, the
    /// longest time no byte may move before the connection is closed
    /// (default [`STALL_TIMEOUT`], 10 s). A frame takes as long as it needs
    /// while bytes keep moving, so no frame size is capped by the link's
    /// speed, while a client that stops sending (or reading) cannot pin a
    /// connection for long. Checked lazily: a stall is noticed between one
    /// and two times this after the last byte moved.
    pub stall_timeout: Duration,
    /// Maximum number of authenticated connections (every connection, when
    /// the handler requires no authentication) served at once (default
    /// 1024). A connection arriving, or authenticating, while this many
    /// are open takes the place of the one whose request frame has been
    /// half-sent for longer than [`auth_timeout`](Self::auth_timeout), else
    /// of the one idle the longest, which is closed; if there is none, it
    /// is closed at once, so the client sees an end of stream (or a reset)
    /// rather than waiting. Zero refuses every connection.
    pub max_connections: usize,
    /// Maximum number of authenticated connections from one IP address
    /// (default 64). Beyond it, a new one from that address replaces one
    /// of that address's as for [`max_connections`](Self::max_connections).
    /// (Every local client shares the loopback address.)
    pub max_connections_per_ip: usize,
    /// Maximum number of idle authenticated connections (waiting for their
    /// next request) from one IP address (default 32); when one more
    /// becomes idle, the one idle the longest is closed.
    pub max_idle_per_ip: usize,
    /// Maximum number of connections that have not authenticated yet, in
    /// all (default 256; irrelevant when the handler requires no
    /// authentication). They count apart from authenticated connections:
    /// when this many are open, a new connection takes the place of the
    /// oldest unauthenticated one (one whose task has begun serving it, if
    /// any), never of an authenticated one.
    pub max_unauthenticated: usize,
    /// Maximum number of connections that have not authenticated yet from
    /// one IP address (default 64), with the same rule as
    /// [`max_unauthenticated`](Self::max_unauthenticated).
    pub max_unauthenticated_per_ip: usize,
    /// How long a connection may take to authenticate (default
    /// [`AUTH_TIMEOUT`], 3 s): one that has not by then is closed, whatever
    /// it is doing. The same duration marks a request frame as stalled for
    /// shedding: an authenticated connection whose frame has been half-sent
    /// for longer is the first closed to make room (see
    /// [`max_connections`](Self::max_connections)).
    pub auth_timeout: Duration,
    /// Largest request payload, in bytes, accepted on a connection that has
    /// not authenticated yet (default 64 KiB; see
    /// [`Handler::requires_authentication`]). A client declaring more gets
    /// [`Handler::unauthenticated_frame_too_large`]'s response and its
    /// connection is closed; nothing of the declared length is allocated.
    /// Irrelevant when the handler requires no authentication.
    pub max_unauthenticated_frame: usize,
    /// How long [`Server::run`], once shutdown is requested, lets requests
    /// in progress finish before it abandons them and returns (default
    /// [`SHUTDOWN_GRACE`], 5 s).
    pub shutdown_grace: Duration,
    /// After answering, poll a loopback client's socket this long (yielding
    /// the CPU between polls) for its next request before going back to
    /// the runtime (default zero: never). Saves a thread wakeup (about
    /// 20 µs on a VM) per call on loopback; it holds a runtime thread while
    /// it polls, so it happens only while a loopback connection is the
    /// server's only one (with several, the runtime serves them better).
    /// On a TLS connection it polls for the bytes to arrive, then reads
    /// them through rustls.
    pub spin: Duration,
    /// Serve TLS (feature `tls`; default `None`: plaintext). Every
    /// connection must then open with a TLS handshake, within
    /// [`auth_timeout`](Self::auth_timeout) (a stalled handshake is an
    /// unauthenticated connection, shed first); a plaintext client is sent
    /// [`Handler::not_tls`]'s response and closed. The same port never
    /// serves both.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::ServerTls>,
}

impl Default for ServerConfig {
    /// 64 MiB frames (64 KiB before authentication), 60 s idle timeout,
    /// 10 s stall timeout, 1024 authenticated connections (64 per IP
    /// address, of which 32 idle), 256 unauthenticated ones (64 per IP
    /// address) with 3 s to authenticate, 5 s shutdown grace, no polling.
    fn default() -> Self {
        ServerConfig {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(60),
            stall_timeout: STALL_TIMEOUT,
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_idle_per_ip: 32,
            max_unauthenticated: 256,
            max_unauthenticated_per_ip: 64,
            auth_timeout: AUTH_TIMEOUT,
            #[cfg(feature = "tls")]
            tls: None,
            max_unauthenticated_frame: DEFAULT_MAX_UNAUTHENTICATED_FRAME,
            shutdown_grace: SHUTDOWN_GRACE,
            spin: Duration::ZERO,
        }
    }
}

/// Default for [`ServerConfig::max_unauthenticated_frame`]: 64 KiB.
pub const DEFAULT_MAX_UNAUTHENTICATED_FRAME: usize = 64 * 1024;

/// Largest request body read while polling; a larger one is finished by
/// the runtime, growing its buffer as bytes arrive.
const POLLED_BODY_MAX: usize = 64 * 1024;

/// What polling for the next request found.
enum Polled {
    /// Nothing arrived: wait through the runtime as usual.
    Nothing,
    /// A whole request is in the buffer.
    Frame,
    /// `head` bytes of the length prefix (and, if all 4, `body` bytes of
    /// the body) arrived; the runtime reads the rest.
    Partial {
        head: [u8; 4],
        got_head: usize,
        body: usize,
    },
    /// The client closed the connection.
    Closed,
    Failed(io::Error),
}

/// A bound TCP listener ready to serve a [`Handler`].
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::sync::Arc;
/// use metabridge_tcp::{Handler, Pool, PoolConfig, Server, ServerConfig};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
///         Box::pin(async move { request })
///     }
///     fn frame_too_large(&self, _declared: u64, _max: usize) -> Vec<u8> {
///         b"too large".to_vec()
///     }
/// }
///
/// let rt = tokio::runtime::Runtime::new()?;
/// let server = rt.block_on(Server::bind("127.0.0.1:0", ServerConfig::default(), Arc::new(Echo)))?;
/// let addr = server.local_addr();
/// let stop = server.shutdown_handle();
/// let running = rt.spawn(server.run());
///
/// // Any number of threads may share the pool.
/// let pool = Arc::new(Pool::connect(addr, PoolConfig::default())?);
/// let workers: Vec<_> = (0..4)
///     .map(|i| {
///         let pool = Arc::clone(&pool);
///         std::thread::spawn(move || {
///             let mut response = Vec::new();
///             let request = format!("request {i}");
///             pool.call(request.as_bytes(), &mut response).unwrap();
///             assert_eq!(response, request.as_bytes());
///         })
///     })
///     .collect();
/// for w in workers {
///     w.join().unwrap();
/// }
///
/// stop.shutdown();
/// rt.block_on(running)??;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: ServerConfig,
    handler: Arc<dyn Handler>,
    shutdown: Arc<watch::Sender<bool>>,
    peers: Arc<Peers>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Requests a graceful stop of a [`Server`]; cheap to clone and usable from
/// any thread, inside or outside the runtime.
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::sync::Arc;
/// use metabridge_tcp::{Handler, Server, ServerConfig};
///
/// struct Nothing;
/// impl Handler for Nothing {
///     fn call(&self, _: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
///         Box::pin(async { Vec::new() })
///     }
///     fn frame_too_large(&self, _: u64, _: usize) -> Vec<u8> {
///         Vec::new()
///     }
/// }
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let server = Server::bind("127.0.0.1:0", ServerConfig::default(), Arc::new(Nothing)).await?;
/// let stop = server.shutdown_handle();
/// stop.shutdown(); // a stop requested before `run` makes it return at once
/// server.run().await?;
/// # Ok::<(), std::io::Error>(())
/// # })?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Stops the server: it accepts no more connections; requests already
    /// being read or handled finish and their responses are written, then
    /// every connection is closed and [`Server::run`] returns (after at most
    /// [`ServerConfig::shutdown_grace`], when stragglers are abandoned).
    /// Idempotent.
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    ///
    /// See [`ShutdownHandle`] for an example.
    pub fn is_shutdown(&self) -> bool {
        *self.tx.borrow()
    }
}

/// A view of a [`Server`]'s connections, usable from any thread while it
/// runs (and after).
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::sync::Arc;
/// use metabridge_tcp::{Handler, Server, ServerConfig};
///
/// struct Nothing;
/// impl Handler for Nothing {
///     fn call(&self, _: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
///         Box::pin(async { Vec::new() })
///     }
///     fn frame_too_large(&self, _: u64, _: usize) -> Vec<u8> {
///         Vec::new()
///     }
/// }
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// let server = Server::bind("127.0.0.1:0", ServerConfig::default(), Arc::new(Nothing)).await?;
/// let monitor = server.monitor();
/// assert_eq!(monitor.connections().authenticated, 0);
/// # Ok::<(), std::io::Error>(())
/// # })?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Monitor {
    peers: Arc<Peers>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("connections", &self.connections())
            .finish()
    }
}

impl Monitor {
    /// The server's connections now, by state.
    ///
    /// See [`Monitor`] for an example.
    pub fn connections(&self) -> Connections {
        self.peers.counts()
    }
}

impl Server {
    /// Binds a listener on `addr` (for example `"127.0.0.1:0"`, then see
    /// [`local_addr`](Self::local_addr)). Must be called inside a tokio
    /// runtime context. No connection is accepted until [`run`](Self::run).
    ///
    /// See [`Server`] for an example.
    pub async fn bind(
        addr: &str,
        config: ServerConfig,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (tx, _) = watch::channel(false);
        debug!(%local_addr, "metabridge-tcp server bound");
        let peers = Peers::new(Limits {
            max_total: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            max_idle_per_ip: config.max_idle_per_ip,
            max_pending_total: config.max_unauthenticated,
            max_pending_per_ip: config.max_unauthenticated_per_ip,
            stalled_after: config.auth_timeout,
        });
        Ok(Server {
            listener,
            local_addr,
            config,
            handler,
            shutdown: Arc::new(tx),
            peers,
        })
    }

    /// The address the listener is bound to (with the real port when bound
    /// to port 0).
    ///
    /// See [`Server`] for an example.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops [`run`](Self::run) from any thread.
    ///
    /// See [`ShutdownHandle`] for an example.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: Arc::clone(&self.shutdown),
        }
    }

    /// A view of the server's connections.
    ///
    /// See [`Monitor`] for an example.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            peers: Arc::clone(&self.peers),
        }
    }

    /// Accepts and serves connections until shutdown is requested. Every
    /// connection is its own tokio task; `TCP_NODELAY` and `SO_KEEPALIVE` are
    /// set on each accepted socket.
    ///
    /// Errors from `accept` itself (such as running out of file descriptors)
    /// are logged and retried after a short pause rather than returned, so
    /// currently this only returns `Ok`, after shutdown, once every
    /// connection task has finished, or once
    /// [`ServerConfig::shutdown_grace`] has passed: then the connections
    /// still busy are aborted and, if their handlers are stuck in blocking
    /// code, abandoned (counted in [`Stopped::abandoned`] and logged), so
    /// that the process can exit.
    ///
    /// See [`Server`] for an example.
    pub async fn run(self) -> io::Result<Stopped> {
        let Server {
            listener,
            local_addr,
            config,
            handler,
            shutdown,
            peers,
        } = self;
        let config = Arc::new(config);
        let mut stop = shutdown.subscribe();
        let mut tasks = JoinSet::new();

        loop {
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => report_task_end(done),
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors: a connection gives
                            // one back, so that the next client (and the one
                            // waiting now) can be served; never an
                            // authenticated one for an unauthenticated
                            // newcomer.
                            let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                            let shed = out_of_fds
                                && peers.shed_for_descriptor(handler.requires_authentication());
                            warn!(%local_addr, error = %e, shed_a_connection = shed, "accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let authenticated = !handler.requires_authentication();
                    let member = match peers.admit(peer.ip(), authenticated) {
                        Ok(member) => member,
                        Err(refused) => {
                            debug!(%peer, ?refused, authenticated, "connection limit reached and nothing may make room; closing new connection");
                            drop(stream);
                            continue;
                        }
                    };
                    if let Err(e) = configure(&stream) {
                        debug!(%peer, error = %e, "could not configure accepted socket; closing it");
                        continue;
                    }
                    // Info: a connect is one of the events a service's
                    // log (`logger`) shows.
                    info!(%peer, "client connected (TCP)");
                    let accepted = Accepted {
                        stream,
                        peer,
                        config: Arc::clone(&config),
                        handler: Arc::clone(&handler),
                        stop: shutdown.subscribe(),
                        peers: Arc::clone(&peers),
                        member,
                    };
                    tasks.spawn(accepted.serve());
                }
            }
        }

        drop(listener);
        debug!(%local_addr, open = tasks.len(), "server stopping; draining connections");
        let drained = timeout(config.shutdown_grace, async {
            while let Some(done) = tasks.join_next().await {
                report_task_end(done);
            }
        })
        .await;
        let mut stopped = Stopped::default();
        if drained.is_err() {
            stopped.abandoned = tasks.len();
            warn!(%local_addr, abandoned = stopped.abandoned, grace = ?config.shutdown_grace,
                "requests still in progress after the shutdown grace period; abandoning them");
            // An aborted task ends at its next await; one blocked inside a
            // handler never reaches it, so waiting for all of them (as
            // `JoinSet::shutdown` does) could take forever: wait briefly,
            // then let the rest go.
            tasks.abort_all();
            let _ = timeout(ABORT_WAIT, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            tasks.detach_all();
        }
        debug!(%local_addr, "server stopped");
        Ok(stopped)
    }
}

/// Completes once shutdown has been requested (or the sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it right here.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn report_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            warn!("a connection task panicked (its connection was closed): {e}");
        }
    }
}

/// Sets `TCP_NODELAY` and `SO_KEEPALIVE` on an accepted socket.
fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    SockRef::from(stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(KEEPALIVE_TIME))
}

/// A connection accepted, before its TLS handshake (if the server serves
/// TLS): its task makes it a [`Connection`].
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    handler: Arc<dyn Handler>,
    stop: watch::Receiver<bool>,
    peers: Arc<Peers>,
    member: Member,
}

impl Accepted {
    async fn serve(self) {
        let Accepted {
            stream,
            peer,
            config,
            handler,
            stop,
            peers,
            member,
        } = self;
        #[cfg(feature = "tls")]
        let (link, member) = {
            let mut member = member;
            let link = match &config.tls {
                None => Link::Plain(stream),
                Some(tls) => {
                    member.start();
                    match tls_accept(stream, tls, &config, handler.as_ref(), &member).await {
                        Ok(tls) => Link::Tls(Box::new(tls)),
                        Err(why) => {
                            info!(%peer, reason = %why, "client disconnected (TCP): no TLS session");
                            return;
                        }
                    }
                }
            };
            (link, member)
        };
        #[cfg(not(feature = "tls"))]
        let link = Link::Plain(stream);
        let moved = Arc::new(AtomicU64::new(0));
        let polls = !config.spin.is_zero() && peer.ip().is_loopback();
        Connection {
            stream: BufReader::new(Metered {
                stream: link,
                moved: Arc::clone(&moved),
            }),
            moved,
            peer,
            polls,
            config,
            handler,
            stop,
            peers,
            member,
        }
        .serve()
        .await
    }
}

/// The TLS handshake of an accepted connection, bounded by the time a
/// connection has to authenticate and cut short if the connection is shed
/// meanwhile. A first byte that cannot open a TLS record is a plaintext
/// client: it gets the handler's `not_tls` response.
#[cfg(feature = "tls")]
async fn tls_accept(
    stream: TcpStream,
    tls: &crate::tls::ServerTls,
    config: &ServerConfig,
    handler: &dyn Handler,
    member: &Member,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let guard = member.guard(Instant::now() + config.auth_timeout);
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) => return Err("closed before its handshake".to_string()),
            Ok(_) => {}
            Err(e) => return Err(format!("i/o error before its handshake: {e}")),
        }
        if !crate::tls::looks_like_tls(first[0]) {
            let mut stream = stream;
            let response = handler.not_tls();
            if !response.is_empty() {
                // Each of its first few requests (a client's greeting, then
                // its call) gets the answer, within the linger; then the
                // connection closes.
                let limit = config.max_unauthenticated_frame.min(config.max_frame);
                let _ = timeout(config.stall_timeout.min(LINGER), async {
                    let mut request = Vec::new();
                    for _ in 0..PLAINTEXT_ANSWERS {
                        if read_frame(&mut stream, limit, &mut request).await.is_err()
                            || write_frame(&mut stream, &response).await.is_err()
                        {
                            break;
                        }
                    }
                    let _ = stream.shutdown().await;
                })
                .await;
            }
            return Err("a plaintext client on the TLS port".to_string());
        }
        tokio_rustls::TlsAcceptor::from(tls.config())
            .accept(stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    };
    // The guard sheds an unauthenticated connection; the handshake's own
    // limit holds for every connection (one of a handler that requires no
    // authentication too).
    let late = format!("TLS handshake not done within {:?}", config.auth_timeout);
    tokio::select! {
        biased;
        done = handshake => done,
        cut = guard => Err(match cut {
            Cut::Shed => "shed during its TLS handshake".to_string(),
            Cut::Deadline => late,
        }),
        () = tokio::time::sleep(config.auth_timeout) => Err(late),
    }
}

/// How many requests of a plaintext client on a TLS port are answered
/// with [`Handler::not_tls`] before its connection closes.
#[cfg(feature = "tls")]
const PLAINTEXT_ANSWERS: usize = 4;

/// What a connection's bytes travel on: the socket itself, or TLS over it.
enum Link {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Link {
    /// The socket under it (to watch for the peer going away).
    fn tcp(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            #[cfg(feature = "tls")]
            Link::Tls(t) => t.get_ref().0,
        }
    }

    /// Whether bytes on the socket are the protocol's own (which polling
    /// the socket directly needs).
    fn is_plain(&self) -> bool {
        matches!(self, Link::Plain(_))
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Link::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_write(cx, data),
            #[cfg(feature = "tls")]
            Link::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Link::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Link::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Link::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An accepted connection's stream that counts the bytes it moves, so that
/// a deadline can follow progress (see [`progressing`]).
struct Metered {
    stream: Link,
    moved: Arc<AtomicU64>,
}

impl Metered {
    fn count(&self, n: usize) {
        // Relaxed, and a load and a store rather than an atomic add: this
        // connection's task is the only writer, and the only reader.
        let moved = self.moved.load(Relaxed);
        self.moved.store(moved.wrapping_add(n as u64), Relaxed);
    }
}

impl AsyncRead for Metered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.count(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.count(n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Polls `f` once: its output if it is ready, `None` if it is not (its
/// waker is then registered, as for any poll).
fn poll_once<F: Future + ?Sized>(
    mut f: Pin<&mut F>,
) -> impl Future<Output = Option<F::Output>> + '_ {
    std::future::poll_fn(move |cx| {
        Poll::Ready(match f.as_mut().poll(cx) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        })
    })
}

/// Why [`progressing`] gave up.
enum Halted {
    /// No byte moved for the stall timeout.
    Stalled,
    /// The connection was shed while its frame was awaited.
    Shed,
}

/// Drives `io`, which reads or writes through a [`Metered`] stream
/// counting into `moved`, to its end unless no byte moves for `stall`.
///
/// With a `member`, `io` reads a request frame: if the frame did not
/// arrive at once, the member is told it is awaited (see
/// [`Member::waiting_for_frame`]), and being shed meanwhile ends the wait.
///
/// An `io` that completes at once (a request already buffered, a response
/// the socket takes whole) costs no timer and no clock read. The deadline
/// is moved lazily: when it passes, it is moved on by `stall` if bytes
/// moved since it was set, so a stall is noticed between one and two times
/// `stall` after the last byte.
async fn progressing<T>(
    io: impl Future<Output = T>,
    moved: &AtomicU64,
    stall: Duration,
    mut member: Option<&mut Member>,
) -> Result<T, Halted> {
    let mut io = pin!(io);
    if let Some(done) = poll_once(io.as_mut()).await {
        return Ok(done);
    }
    let since = Instant::now();
    if let Some(member) = member.as_deref_mut() {
        member.waiting_for_frame(since);
    }
    let mut deadline = since + stall;
    // Relaxed: see `Metered::count`.
    let mut seen = moved.load(Relaxed);
    let outcome = loop {
        let shed = async {
            match member.as_deref() {
                Some(member) => member.shed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            done = io.as_mut() => break Ok(done),
            () = shed => break Err(Halted::Shed),
            () = tokio::time::sleep_until(deadline) => {
                let now = moved.load(Relaxed);
                if now == seen {
                    break Err(Halted::Stalled);
                }
                seen = now;
                deadline = Instant::now() + stall;
            }
        }
    };
    if let (Ok(_), Some(member)) = (&outcome, member) {
        if !member.frame_arrived() {
            return Err(Halted::Shed);
        }
    }
    outcome
}

/// Completes when the peer of `socket` has closed the connection (or it
/// was reset); never if data arrives instead (a request pipelined behind
/// the one being handled, read once that one is answered). A client that
/// only shuts down its sending side looks the same as one that closed, so
/// a client must keep its connection open until it has its response.
async fn peer_gone(socket: &TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match socket.peek(&mut byte).await {
            Ok(0) => return,
            Ok(_) => return std::future::pending().await,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// One accepted connection and everything its task needs.
struct Connection {
    stream: BufReader<Metered>,
    /// The bytes `stream` has moved (it holds the same counter).
    moved: Arc<AtomicU64>,
    peer: SocketAddr,
    /// Whether to poll for the next request (see [`ServerConfig::spin`]).
    polls: bool,
    config: Arc<ServerConfig>,
    handler: Arc<dyn Handler>,
    stop: watch::Receiver<bool>,
    /// The server's connection accounting, to tell whether this is its only
    /// connection.
    peers: Arc<Peers>,
    /// Its place in that accounting (unauthenticated, idle, busy, reading),
    /// and whether a request on it has authenticated (or the handler
    /// requires no authentication): until then frames are limited to
    /// [`ServerConfig::max_unauthenticated_frame`].
    member: Member,
}

/// Why a connection is being closed (for the log).
#[derive(Debug)]
enum Close {
    PeerClosed,
    /// The client closed the connection while its request was handled;
    /// the call was dropped.
    PeerGoneMidCall,
    Shutdown,
    IdleTimeout,
    /// No byte of a request frame arrived for the stall timeout.
    ReadStalled,
    /// No byte of a response could be written for the stall timeout.
    WriteStalled,
    TooLarge,
    /// Closed to make room for a new connection (see [`crate::peers`]).
    Shed,
    /// Not authenticated within [`ServerConfig::auth_timeout`].
    AuthTimeout,
    /// Authenticated while the authenticated quotas were full and nothing
    /// could make room.
    NoRoom,
    Io(io::Error),
}

impl Connection {
    async fn serve(mut self) {
        self.member.start();
        let reason = self.serve_inner().await;
        match &reason {
            Close::Io(e) => {
                info!(peer = %self.peer, error = %e, "client disconnected (TCP): i/o error")
            }
            other => info!(peer = %self.peer, reason = ?other, "client disconnected (TCP)"),
        }
    }

    async fn serve_inner(&mut self) -> Close {
        let mut buf = Vec::new();
        if !self.member.is_authenticated() {
            // Until a request authenticates, the connection lives under its
            // deadline, and being shed stops it wherever it is.
            let guard = self.member.guard(Instant::now() + self.config.auth_timeout);
            let mut guard = pin!(guard);
            loop {
                let served = tokio::select! {
                    biased;
                    served = self.cycle(&mut buf) => served,
                    cut = guard.as_mut() => return match cut {
                        Cut::Shed => Close::Shed,
                        Cut::Deadline => Close::AuthTimeout,
                    },
                };
                if let Err(close) = served {
                    return close;
                }
                if self.member.is_authenticated() {
                    break;
                }
            }
        }
        loop {
            if let Err(close) = self.cycle(&mut buf).await {
                return close;
            }
        }
    }

    /// Serves one request: waits for it, reads it, has it handled and
    /// writes the response. An error: the connection must close, why.
    async fn cycle(&mut self, buf: &mut Vec<u8>) -> Result<(), Close> {
        // Copied, not borrowed: `self` is borrowed mutably below.
        let (spin, idle_timeout, stall) = (
            self.config.spin,
            self.config.idle_timeout,
            self.config.stall_timeout,
        );
        // Waiting for the next request: idle, so it may be shed.
        self.member.idle();
        // Poll only while this is the server's one connection: with
        // several, a runtime thread held by polling delays the others.
        let alone = self.peers.connections() <= 1;
        let polled = if self.polls && alone && self.stream.buffer().is_empty() {
            match metabridge_spin::SpinLicence::take() {
                Some(_licence) if self.stream.get_ref().stream.is_plain() => {
                    self.poll_request(spin, buf)
                }
                // TLS: its bytes go through rustls, so the poll only
                // waits for them to arrive; the read below then finds
                // them without this thread having slept.
                Some(_licence) => {
                    self.poll_readable(spin);
                    Polled::Nothing
                }
                None => Polled::Nothing,
            }
        } else {
            Polled::Nothing
        };
        let read = match polled {
            Polled::Frame => {
                // Read while idle: it may have been shed meanwhile.
                if !self.member.busy() {
                    return Err(Close::Shed);
                }
                Ok(Ok(()))
            }
            Polled::Closed => return Err(Close::PeerClosed),
            Polled::Failed(e) => return Err(Close::Io(e)),
            Polled::Partial {
                head,
                got_head,
                body,
            } => {
                if !self.member.busy() {
                    return Err(Close::Shed);
                }
                let limit = self.frame_limit();
                progressing(
                    finish_request(&mut self.stream, limit, head, got_head, body, buf),
                    &self.moved,
                    stall,
                    Some(&mut self.member),
                )
                .await
            }
            Polled::Nothing => {
                // Wait for the first byte of the next request (or a
                // buffered, pipelined one), bounded by the idle timeout,
                // unless a shutdown is requested first.
                let started = tokio::select! {
                    biased;
                    () = stopped(&mut self.stop) => return Err(Close::Shutdown),
                    () = self.member.shed() => return Err(Close::Shed),
                    r = timeout(idle_timeout, self.stream.fill_buf()) => match r {
                        Err(_) => return Err(Close::IdleTimeout),
                        Ok(Err(e)) => return Err(Close::Io(e)),
                        Ok(Ok(available)) => !available.is_empty(),
                    },
                };
                if !started {
                    return Err(Close::PeerClosed);
                }
                // A request began: no longer idle.
                if !self.member.busy() {
                    return Err(Close::Shed);
                }
                let limit = self.frame_limit();
                progressing(
                    read_frame(&mut self.stream, limit, buf),
                    &self.moved,
                    stall,
                    Some(&mut self.member),
                )
                .await
            }
        };
        // One outcome for both ways of reading the request.
        match read {
            Err(Halted::Stalled) => return Err(Close::ReadStalled),
            Err(Halted::Shed) => return Err(Close::Shed),
            Ok(Ok(())) => {}
            Ok(Err(FrameError::Closed)) => return Err(Close::PeerClosed),
            Ok(Err(FrameError::Io(e))) => return Err(Close::Io(e)),
            Ok(Err(FrameError::TooLarge { declared, max })) => {
                let authenticated = self.member.is_authenticated();
                debug!(peer = %self.peer, declared, max, authenticated, "request frame too large");
                let response = if authenticated {
                    self.handler.frame_too_large(declared, max)
                } else {
                    self.handler.unauthenticated_frame_too_large(declared, max)
                };
                self.close_after_error_response(&response).await;
                return Err(Close::TooLarge);
            }
        }

        if !self.member.is_authenticated()
            && self.handler.authenticates(buf)
            && !self.member.authenticate()
        {
            return Err(Close::NoRoom);
        }
        let request = std::mem::take(buf);
        let response = self.handle(request).await?;
        // Handled: from here the connection only waits for its next
        // request (the response is written even if it is shed now).
        // Marked before the write so that a client holding the response
        // knows its connection can be shed to make room.
        self.member.idle();
        match progressing(
            write_frame(&mut self.stream, &response),
            &self.moved,
            stall,
            None,
        )
        .await
        {
            Err(_) => return Err(Close::WriteStalled),
            Ok(Err(e)) => return Err(Close::Io(e)),
            Ok(Ok(())) => {}
        }
        // Reuse the response's allocation for the next request, unless
        // it is big enough to be worth giving back.
        if response.capacity() <= RETAIN_BUFFER {
            *buf = response;
        }
        Ok(())
    }

    /// Has the handler answer `request`. A call that does not complete at
    /// once is raced against the client going away: if the connection
    /// closes first, the call's future is dropped (which cancels an async
    /// handler at its next await) and the connection with it.
    async fn handle(&self, request: Vec<u8>) -> Result<Vec<u8>, Close> {
        let mut call = self.handler.call(request);
        if let Some(response) = poll_once(call.as_mut()).await {
            return Ok(response);
        }
        // Bytes already buffered are the next request: whether the client
        // is still there cannot be told without reading past them, so the
        // call is then left to finish.
        let watch = self.stream.buffer().is_empty();
        tokio::select! {
            biased;
            response = call.as_mut() => Ok(response),
            () = peer_gone(self.stream.get_ref().stream.tcp()), if watch => Err(Close::PeerGoneMidCall),
        }
    }

    /// The largest request frame this connection may send now.
    fn frame_limit(&self) -> usize {
        if self.member.is_authenticated() {
            self.config.max_frame
        } else {
            self.config
                .max_unauthenticated_frame
                .min(self.config.max_frame)
        }
    }

    /// Polls the socket, without the runtime, for at most `spin` until
    /// bytes of the next request are there (a TLS connection's: read
    /// through rustls afterwards).
    fn poll_readable(&self, spin: Duration) {
        let sock = SockRef::from(self.stream.get_ref().stream.tcp());
        let start = std::time::Instant::now();
        while !crate::poll::readable(&sock) && start.elapsed() < spin {
            std::thread::yield_now();
        }
    }

    /// Polls the socket, without the runtime, for the next request for at
    /// most `spin` (see [`ServerConfig::spin`]). Reads the socket directly,
    /// so it must only run when the reader's buffer is empty.
    fn poll_request(&self, spin: Duration, buf: &mut Vec<u8>) -> Polled {
        let sock = SockRef::from(self.stream.get_ref().stream.tcp());
        let start = std::time::Instant::now();
        let mut head = [0u8; 4];
        let mut got_head = 0;
        while got_head < 4 {
            match crate::poll::try_read(&sock, &mut head[got_head..]) {
                Ok(Some(0)) if got_head == 0 => return Polled::Closed,
                Ok(Some(0)) => return Polled::Failed(io::ErrorKind::UnexpectedEof.into()),
                Ok(Some(n)) => got_head += n,
                Ok(None) if start.elapsed() < spin => std::thread::yield_now(),
                Ok(None) if got_head == 0 => return Polled::Nothing,
                Ok(None) => {
                    return Polled::Partial {
                        head,
                        got_head,
                        body: 0,
                    }
                }
                Err(e) => return Polled::Failed(e),
            }
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > POLLED_BODY_MAX.min(self.frame_limit()) {
            // Large (or too large): the runtime path bounds and grows it.
            return Polled::Partial {
                head,
                got_head,
                body: 0,
            };
        }
        buf.clear();
        buf.resize(len, 0);
        let mut got = 0;
        while got < len {
            match crate::poll::try_read(&sock, &mut buf[got..]) {
                Ok(Some(0)) => return Polled::Failed(io::ErrorKind::UnexpectedEof.into()),
                Ok(Some(n)) => got += n,
                Ok(None) if start.elapsed() < spin => std::thread::yield_now(),
                Ok(None) => {
                    return Polled::Partial {
                        head,
                        got_head,
                        body: got,
                    }
                }
                Err(e) => return Polled::Failed(e),
            }
        }
        Polled::Frame
    }

    /// Sends `response`, half-closes, then discards whatever the client still
    /// sends for a short while so that the close is not turned into a reset
    /// before the client has read the response.
    async fn close_after_error_response(&mut self, response: &[u8]) {
        let config = Arc::clone(&self.config);
        let sent = timeout(config.stall_timeout, async {
            write_frame(&mut self.stream, response).await?;
            self.stream.get_mut().shutdown().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        let linger = config.stall_timeout.min(LINGER);
        let _ = timeout(linger, async {
            let mut scratch = [0u8; 8192];
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// Reads the rest of a request that polling began: the rest of its length
/// prefix, then the rest of its body (the first `body` bytes are in `buf`
/// already), growing the buffer only as bytes arrive.
async fn finish_request(
    stream: &mut BufReader<Metered>,
    limit: usize,
    mut head: [u8; 4],
    got_head: usize,
    body: usize,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if got_head < 4 {
        stream.read_exact(&mut head[got_head..]).await?;
    }
    let len = u32::from_be_bytes(head) as u64;
    if len > limit as u64 {
        return Err(FrameError::TooLarge {
            declared: len,
            max: limit,
        });
    }
    buf.truncate(body);
    let rest = len - body as u64;
    let read = stream.take(rest).read_to_end(buf).await?;
    if (read as u64) < rest {
        return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}
