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
//! Failures are contained per connection: an I/O error, a timeout, a
//! malformed or oversized frame, or even a panicking handler closes only the
//! connection concerned.
//!
//! Resources are bounded before authentication and per peer: until a
//! request on a connection has authenticated (see
//! [`Handler::requires_authentication`]), its frames may be at most
//! [`ServerConfig::max_unauthenticated_frame`] bytes; each IP address may
//! hold at most [`ServerConfig::max_connections_per_ip`] connections, of
//! which at most [`ServerConfig::max_idle_per_ip`] idle; and when a limit is
//! reached, the oldest idle connection is closed to make room for the new
//! one rather than refusing it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::frame::{read_frame, write_frame, FrameError, DEFAULT_MAX_FRAME};
use crate::peers::{Member, Peers};

/// How long [`Server::run`] waits by default, after shutdown was requested,
/// for the connection tasks to finish their in-flight requests before
/// abandoning them (see [`ServerConfig::shutdown_grace`]).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

    /// Whether a connection must authenticate before it may send frames
    /// larger than [`ServerConfig::max_unauthenticated_frame`] (default:
    /// false, every connection is trusted from the start). Asked once per
    /// connection, when it is accepted.
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
///     read_timeout: Duration::from_secs(2),
///     max_connections: 64,
///     ..ServerConfig::default()
/// };
/// assert_eq!(config.max_frame, 64 * 1024 * 1024);
/// assert_eq!(config.idle_timeout, Duration::from_secs(60));
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
    /// Once the first byte of a request frame has arrived, the rest of the
    /// frame must arrive within this time or the connection is closed
    /// (default 10 s). The same bound applies to writing each response, so a
    /// client that stops reading cannot pin a connection task forever.
    pub read_timeout: Duration,
    /// Maximum number of connections served at once (default 1024). A
    /// connection arriving while this many are open takes the place of the
    /// connection idle the longest, which is closed; if none is idle, it is
    /// accepted and closed immediately, so the client sees an end of stream
    /// (or a reset) rather than waiting. Zero refuses every connection.
    pub max_connections: usize,
    /// Maximum number of connections from one IP address (default 64).
    /// Beyond it, a new connection from that address replaces that
    /// address's connection idle the longest, or is closed at once if none
    /// is idle. (Every local client shares the loopback address.)
    pub max_connections_per_ip: usize,
    /// Maximum number of idle connections (waiting for their next request)
    /// from one IP address (default 32); when one more becomes idle, the
    /// one idle the longest is closed.
    pub max_idle_per_ip: usize,
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
    pub spin: Duration,
}

impl Default for ServerConfig {
    /// 64 MiB frames (64 KiB before authentication), 60 s idle timeout,
    /// 10 s read timeout, 1024 connections (64 per IP address, of which 32
    /// idle), 5 s shutdown grace, no polling.
    fn default() -> Self {
        ServerConfig {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_idle_per_ip: 32,
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
        Ok(Server {
            listener,
            local_addr,
            config,
            handler,
            shutdown: Arc::new(tx),
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
        } = self;
        let config = Arc::new(config);
        let slots = Arc::new(Semaphore::new(config.max_connections));
        let peers = Peers::new(config.max_connections_per_ip, config.max_idle_per_ip);
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
                            // Out of file descriptors: an idle connection
                            // gives one back, so that the next client (and
                            // the one waiting now) can be served.
                            let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                            let shed = out_of_fds && peers.shed_oldest_idle();
                            warn!(%local_addr, error = %e, shed_an_idle_connection = shed, "accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    // A replacement task (below) may take the last slot
                    // between this check and `try_acquire_owned`; the new
                    // connection is then refused, as when nothing is idle.
                    let server_full = (slots.available_permits() == 0).then_some(config.max_connections);
                    let admitted = match peers.admit(peer.ip(), server_full) {
                        Ok(admitted) => admitted,
                        Err(refused) => {
                            debug!(%peer, ?refused, "connection limit reached and nothing idle to close; closing new connection");
                            drop(stream);
                            continue;
                        }
                    };
                    let permit = match Arc::clone(&slots).try_acquire_owned() {
                        Ok(permit) => Some(permit),
                        // The idle connection shed for this one is closing;
                        // its slot is taken over in the task below.
                        Err(_) if admitted.shed_one => None,
                        Err(_) => {
                            debug!(%peer, max = config.max_connections, "connection limit reached; closing new connection");
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
                    let conn = Connection {
                        stream: BufReader::new(stream),
                        peer,
                        config: Arc::clone(&config),
                        authenticated: !handler.requires_authentication(),
                        handler: Arc::clone(&handler),
                        stop: shutdown.subscribe(),
                        slots: Arc::clone(&slots),
                        member: admitted.member,
                    };
                    let slots = Arc::clone(&slots);
                    let wait = config.read_timeout;
                    tasks.spawn(async move {
                        let permit = match permit {
                            Some(permit) => permit,
                            None => match timeout(wait, slots.acquire_owned()).await {
                                Ok(Ok(permit)) => permit,
                                _ => return,
                            },
                        };
                        conn.serve().await;
                        drop(permit);
                    });
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

/// One accepted connection and everything its task needs.
struct Connection {
    stream: BufReader<TcpStream>,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    handler: Arc<dyn Handler>,
    stop: watch::Receiver<bool>,
    /// The connection slots, to tell whether this is the only connection.
    slots: Arc<Semaphore>,
    /// Its place in the per-peer accounting (idle or busy).
    member: Member,
    /// Whether a request on this connection has authenticated (or the
    /// handler requires no authentication): until then frames are limited
    /// to [`ServerConfig::max_unauthenticated_frame`].
    authenticated: bool,
}

/// Why a connection is being closed (for the debug log).
#[derive(Debug)]
enum Close {
    PeerClosed,
    Shutdown,
    IdleTimeout,
    ReadTimeout,
    WriteTimeout,
    TooLarge,
    /// Closed to make room for a new connection (see [`crate::peers`]).
    Shed,
    Io(io::Error),
}

impl Connection {
    async fn serve(mut self) {
        let reason = self.serve_inner().await;
        match &reason {
            Close::Io(e) => {
                info!(peer = %self.peer, error = %e, "client disconnected (TCP): i/o error")
            }
            other => info!(peer = %self.peer, reason = ?other, "client disconnected (TCP)"),
        }
    }

    async fn serve_inner(&mut self) -> Close {
        let config = Arc::clone(&self.config);
        let mut buf = Vec::new();
        let polls = !config.spin.is_zero() && self.peer.ip().is_loopback();
        loop {
            // Waiting for the next request: idle, so it may be shed.
            self.member.idle();
            // Poll only while this is the server's one connection: with
            // several, a runtime thread held by polling delays the others.
            let alone = config.max_connections - self.slots.available_permits() <= 1;
            let polled = if polls && alone && self.stream.buffer().is_empty() {
                match crate::poll::Poller::take() {
                    Some(_licence) => self.poll_request(config.spin, &mut buf),
                    None => Polled::Nothing,
                }
            } else {
                Polled::Nothing
            };
            let read = match polled {
                Polled::Frame => Ok(Ok(())),
                Polled::Closed => return Close::PeerClosed,
                Polled::Failed(e) => return Close::Io(e),
                Polled::Partial {
                    head,
                    got_head,
                    body,
                } => timeout(
                    config.read_timeout,
                    self.finish_request(head, got_head, body, &mut buf),
                )
                .await
                .map_err(|_| ()),
                Polled::Nothing => {
                    // Wait for the first byte of the next request (or a
                    // buffered, pipelined one), bounded by the idle timeout,
                    // unless a shutdown is requested first.
                    let started = tokio::select! {
                        biased;
                        () = stopped(&mut self.stop) => return Close::Shutdown,
                        () = self.member.shed() => return Close::Shed,
                        r = timeout(config.idle_timeout, self.stream.fill_buf()) => match r {
                            Err(_) => return Close::IdleTimeout,
                            Ok(Err(e)) => return Close::Io(e),
                            Ok(Ok(available)) => !available.is_empty(),
                        },
                    };
                    if !started {
                        return Close::PeerClosed;
                    }
                    if !self.member.busy() {
                        return Close::Shed;
                    }
                    let limit = self.frame_limit();
                    timeout(
                        config.read_timeout,
                        read_frame(&mut self.stream, limit, &mut buf),
                    )
                    .await
                    .map_err(|_| ())
                }
            };
            // A request began: no longer idle (polling got here without
            // `busy` having been called; a second call costs little).
            if !self.member.busy() {
                return Close::Shed;
            }
            // One outcome for both ways of reading the request.
            match read {
                Err(()) => return Close::ReadTimeout,
                Ok(Ok(())) => {}
                Ok(Err(FrameError::Closed)) => return Close::PeerClosed,
                Ok(Err(FrameError::Io(e))) => return Close::Io(e),
                Ok(Err(FrameError::TooLarge { declared, max })) => {
                    debug!(peer = %self.peer, declared, max, authenticated = self.authenticated, "request frame too large");
                    let response = if self.authenticated {
                        self.handler.frame_too_large(declared, max)
                    } else {
                        self.handler.unauthenticated_frame_too_large(declared, max)
                    };
                    self.close_after_error_response(&response).await;
                    return Close::TooLarge;
                }
            }

            if !self.authenticated && self.handler.authenticates(&buf) {
                self.authenticated = true;
            }
            let request = std::mem::take(&mut buf);
            let response = self.handler.call(request).await;
            // Handled: from here the connection only waits for its next
            // request (the response is written even if it is shed now).
            // Marked before the write so that a client holding the response
            // knows its connection can be shed to make room.
            self.member.idle();
            match timeout(
                config.read_timeout,
                write_frame(&mut self.stream, &response),
            )
            .await
            {
                Err(_) => return Close::WriteTimeout,
                Ok(Err(e)) => return Close::Io(e),
                Ok(Ok(())) => {}
            }
            // Reuse the response's allocation for the next request, unless
            // it is big enough to be worth giving back.
            if response.capacity() <= RETAIN_BUFFER {
                buf = response;
            }
        }
    }

    /// The largest request frame this connection may send now.
    fn frame_limit(&self) -> usize {
        if self.authenticated {
            self.config.max_frame
        } else {
            self.config
                .max_unauthenticated_frame
                .min(self.config.max_frame)
        }
    }

    /// Polls the socket, without the runtime, for the next request for at
    /// most `spin` (see [`ServerConfig::spin`]). Reads the socket directly,
    /// so it must only run when the reader's buffer is empty.
    fn poll_request(&self, spin: Duration, buf: &mut Vec<u8>) -> Polled {
        let sock = SockRef::from(self.stream.get_ref());
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

    /// Reads the rest of a request that polling began: the rest of its
    /// length prefix, then the rest of its body (the first `body` bytes are
    /// in `buf` already), growing the buffer only as bytes arrive.
    async fn finish_request(
        &mut self,
        mut head: [u8; 4],
        got_head: usize,
        body: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        if got_head < 4 {
            self.stream.read_exact(&mut head[got_head..]).await?;
        }
        let len = u32::from_be_bytes(head) as u64;
        let limit = self.frame_limit();
        if len > limit as u64 {
            return Err(FrameError::TooLarge {
                declared: len,
                max: limit,
            });
        }
        buf.truncate(body);
        let rest = len - body as u64;
        let read = (&mut self.stream).take(rest).read_to_end(buf).await?;
        if (read as u64) < rest {
            return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// Sends `response`, half-closes, then discards whatever the client still
    /// sends for a short while so that the close is not turned into a reset
    /// before the client has read the response.
    async fn close_after_error_response(&mut self, response: &[u8]) {
        let config = Arc::clone(&self.config);
        let sent = timeout(config.read_timeout, async {
            write_frame(&mut self.stream, response).await?;
            self.stream.get_mut().shutdown().await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        let linger = config.read_timeout.min(LINGER);
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
