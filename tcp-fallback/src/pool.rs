//! A blocking client with a connection pool.
//!
//! [`Pool`] uses plain `std::net` sockets, so it needs no async runtime and
//! can be shared by any number of threads (put it in an `Arc`). Each
//! [`call`](Pool::call) borrows an idle connection (opening one if all open
//! ones are busy and the limit allows, otherwise waiting for one to come
//! back), writes one request frame, reads one response frame, and returns
//! the connection for reuse. A connection that saw any error is closed
//! rather than reused, so a late or partial response can never be mistaken
//! for the answer to a later request.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tracing::debug;

use crate::frame::{read_frame_blocking, write_frame_blocking, FrameError, DEFAULT_MAX_FRAME};
use crate::server::KEEPALIVE_TIME;

/// Client pool limits and timeouts.
///
/// ```
/// use std::time::Duration;
/// use metabridge_tcp::PoolConfig;
///
/// let config = PoolConfig {
///     call_timeout: Some(Duration::from_secs(30)),
///     ..PoolConfig::default()
/// };
/// assert_eq!(config.max_connections, 16);
/// assert_eq!(config.connect_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most connections open at once, busy or idle (default 16). Zero is
    /// treated as one.
    pub max_connections: usize,
    /// Largest accepted response payload, in bytes (default 64 MiB). A
    /// larger declared response fails the call with
    /// [`FrameError::TooLarge`] (inside [`PoolError::Frame`]).
    pub max_frame: usize,
    /// Bound on establishing a new TCP connection (default 5 s). Must not be
    /// zero.
    pub connect_timeout: Duration,
    /// Bound on a whole call: waiting for a free connection, sending the
    /// request and receiving the response (default `None`: no bound).
    /// Connecting is bounded by the smaller of this and
    /// [`connect_timeout`](Self::connect_timeout). Enforced through socket
    /// read/write timeouts, so a call may overrun it by up to about an
    /// eighth.
    pub call_timeout: Option<Duration>,
    /// After sending a request, poll the socket this long (yielding the CPU
    /// between polls) before blocking on it (default zero: block at once).
    /// On loopback the answer often comes within tens of microseconds, less
    /// than a blocked thread takes to be woken on a VM; over a network, keep
    /// it zero. At most one thread per CPU but one polls at a time.
    pub spin: Duration,
    /// A request sent on every new connection before its first call, whose
    /// response is read and discarded (default `None`). A server that
    /// requires authentication accepts only small frames on a connection
    /// until a request on it has authenticated (see
    /// [`ServerConfig::max_unauthenticated_frame`](crate::ServerConfig::max_unauthenticated_frame));
    /// a small request carrying the credentials as the greeting lets the
    /// first call be of any size. Bounded by
    /// [`connect_timeout`](Self::connect_timeout) (and the call's timeout).
    pub greeting: Option<Arc<[u8]>>,
    /// Speak TLS (feature `tls`; default `None`: plaintext): each new
    /// connection runs its handshake when it opens, bounded by
    /// [`connect_timeout`](Self::connect_timeout) and the call's deadline,
    /// and is pooled with it done (a pooled connection pays it once; the
    /// connector's session cache lets the next ones resume).
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::TlsConnector>,
}

impl Default for PoolConfig {
    /// 16 connections, 64 MiB frames, 5 s connect timeout, no call timeout,
    /// no polling.
    fn default() -> Self {
        PoolConfig {
            max_connections: 16,
            max_frame: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_secs(5),
            call_timeout: None,
            spin: Duration::ZERO,
            greeting: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Why a [`Pool::call`] (or [`Pool::connect`]) failed.
///
/// ```
/// use std::net::{SocketAddr, TcpListener};
/// use metabridge_tcp::{Pool, PoolConfig, PoolError};
///
/// // A port with nothing listening on it.
/// let addr: SocketAddr = {
///     let probe = TcpListener::bind("127.0.0.1:0")?;
///     probe.local_addr()?
/// };
/// match Pool::connect(addr, PoolConfig::default()) {
///     Err(PoolError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Connecting, sending or receiving failed. I/O errors met while reading
    /// the response frame are reported here too (not as
    /// `Frame(FrameError::Io(_))`).
    #[error("tcp transport i/o error: {0}")]
    Io(#[source] io::Error),
    /// The response frame was unusable: the server closed the connection
    /// instead of answering ([`FrameError::Closed`]), or declared a response
    /// larger than [`PoolConfig::max_frame`] ([`FrameError::TooLarge`]).
    #[error("bad response frame: {0}")]
    Frame(#[source] FrameError),
    /// [`PoolConfig::call_timeout`] (or, while connecting,
    /// [`PoolConfig::connect_timeout`]) elapsed.
    #[error("tcp transport call timed out")]
    Timeout,
    /// [`Pool::close`] was called.
    #[error("connection pool is closed")]
    Closed,
    /// TLS failed: the service's certificate was refused, the peer does
    /// not speak TLS, the handshake stalled (see the cause).
    #[cfg(feature = "tls")]
    #[error("{0}")]
    Tls(#[source] crate::tls::TlsError),
}

impl From<io::Error> for PoolError {
    /// Timeout-like errors (`TimedOut`, and `WouldBlock` which a socket read
    /// timeout produces on Unix) become [`PoolError::Timeout`].
    fn from(e: io::Error) -> Self {
        // A TLS stream's failures (a certificate the service refused after
        // the handshake, in TLS 1.3) arrive inside an `io::Error`.
        #[cfg(feature = "tls")]
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return PoolError::Tls(crate::tls::TlsError::from_rustls(tls, ""));
        }
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => PoolError::Timeout,
            _ => PoolError::Io(e),
        }
    }
}

impl From<FrameError> for PoolError {
    /// [`FrameError::Io`] is flattened into [`PoolError::Io`] (or
    /// [`PoolError::Timeout`]); the other variants become
    /// [`PoolError::Frame`].
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => e.into(),
            other => PoolError::Frame(other),
        }
    }
}

/// A blocking, thread-safe client holding up to
/// [`PoolConfig::max_connections`] connections to one server.
///
/// ```
/// use std::future::Future;
/// use std::pin::Pin;
/// use std::sync::Arc;
/// use metabridge_tcp::{Handler, Pool, PoolConfig, PoolError, Server, ServerConfig};
///
/// struct Upper;
/// impl Handler for Upper {
///     fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
///         Box::pin(async move { request.to_ascii_uppercase() })
///     }
///     fn frame_too_large(&self, _declared: u64, _max: usize) -> Vec<u8> {
///         Vec::new()
///     }
/// }
///
/// let rt = tokio::runtime::Runtime::new()?;
/// let server = rt.block_on(Server::bind("127.0.0.1:0", ServerConfig::default(), Arc::new(Upper)))?;
/// let addr = server.local_addr();
/// let stop = server.shutdown_handle();
/// let running = rt.spawn(server.run());
///
/// let pool = Pool::new(addr, PoolConfig { max_connections: 2, ..PoolConfig::default() });
/// assert_eq!(pool.open_connections(), 0); // lazy
/// let mut response = Vec::new();
/// pool.call(b"abc", &mut response)?;
/// assert_eq!(response, b"ABC");
/// pool.call(b"def", &mut response)?; // reuses the same connection
/// assert_eq!(response, b"DEF");
/// assert_eq!(pool.open_connections(), 1);
///
/// pool.close();
/// assert!(matches!(pool.call(b"x", &mut response), Err(PoolError::Closed)));
/// stop.shutdown();
/// rt.block_on(running)??;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Pool {
    addr: SocketAddr,
    config: PoolConfig,
    state: Mutex<State>,
    /// Signalled whenever a connection is returned or a slot is freed.
    available: Condvar,
}

struct State {
    idle: Vec<Conn>,
    /// A second handle (a duplicated descriptor) on the socket of each
    /// connection lent to a call, so that [`Pool::abort`] can shut it down
    /// under the call. An entry is removed (under this lock) when the call
    /// gives its connection back or drops it, so only sockets of calls in
    /// flight are shut down.
    busy: Vec<Arc<TcpStream>>,
    /// Connections open or being opened, busy or idle.
    open: usize,
    closed: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .field("config", &self.config)
            .field("open", &st.open)
            .field("idle", &st.idle.len())
            .field("closed", &st.closed)
            .finish()
    }
}

impl Pool {
    /// Creates a pool for the server at `addr`. Lazy: no socket is opened
    /// until the first [`call`](Self::call).
    ///
    /// See [`Pool`] for an example.
    pub fn new(addr: SocketAddr, config: PoolConfig) -> Pool {
        Pool {
            addr,
            config,
            state: Mutex::new(State {
                idle: Vec::new(),
                busy: Vec::new(),
                open: 0,
                closed: false,
            }),
            available: Condvar::new(),
        }
    }

    /// Creates a pool and opens one connection right away, to check that the
    /// server is reachable. That connection stays in the pool for reuse.
    ///
    /// See [`PoolError`] for an example of the failure case.
    pub fn connect(addr: SocketAddr, config: PoolConfig) -> Result<Pool, PoolError> {
        let pool = Pool::new(addr, config);
        let conn = pool.open(None)?;
        let mut st = pool.lock();
        st.open += 1;
        st.idle.push(conn);
        drop(st);
        Ok(pool)
    }

    /// Sends one request frame and waits for its response frame, which is
    /// left in `response` (cleared first).
    ///
    /// Uses an idle pooled connection, opening a new one only when all open
    /// ones are busy and fewer than [`PoolConfig::max_connections`] exist;
    /// otherwise waits for one to be returned. A connection that saw any
    /// error is dropped, not returned to the pool. The call is not retried:
    /// on error the server may or may not have processed the request, and
    /// the contents of `response` are unspecified.
    ///
    /// See [`Pool`] for an example.
    pub fn call(&self, request: &[u8], response: &mut Vec<u8>) -> Result<(), PoolError> {
        self.call_within(request, response, self.config.call_timeout)
    }

    /// [`call`](Self::call) with its own limit in place of
    /// [`PoolConfig::call_timeout`] (`None`: no limit), for the waits for a
    /// connection, the send and the response alike.
    ///
    /// ```no_run
    /// # use metabridge_tcp::{Pool, PoolConfig};
    /// # use std::time::Duration;
    /// # let pool = Pool::connect("127.0.0.1:7000".parse().unwrap(), PoolConfig::default()).unwrap();
    /// let mut response = Vec::new();
    /// pool.call_within(b"ping", &mut response, Some(Duration::from_millis(50)))?;
    /// # Ok::<(), metabridge_tcp::PoolError>(())
    /// ```
    pub fn call_within(
        &self,
        request: &[u8],
        response: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(), PoolError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut lease = self.checkout(deadline)?;
        let conn = lease
            .conn
            .as_mut()
            .expect("a checked-out lease holds a connection");
        conn.exchange(
            request,
            response,
            self.config.max_frame,
            deadline,
            self.config.spin,
        )?;
        lease.reusable = true;
        Ok(())
    }

    /// Closes the idle connections and marks the pool closed: later calls
    /// (and calls waiting for a connection) fail with [`PoolError::Closed`].
    /// Calls already in progress finish; their connections are closed when
    /// they are done.
    ///
    /// See [`Pool`] for an example.
    pub fn close(&self) {
        let idle = {
            let mut st = self.lock();
            st.closed = true;
            st.open -= st.idle.len();
            std::mem::take(&mut st.idle)
        };
        self.available.notify_all();
        drop(idle);
    }

    /// Ends the calls in flight now: shuts down the socket of every
    /// connection lent to a call, so that each fails at once as a lost
    /// connection (`PoolError::Frame(FrameError::Closed)` or an I/O error:
    /// the server may or may not have run it). For a server known to be gone or hung, whose calls
    /// would otherwise wait for their timeout. The pool stays usable: later
    /// calls open new connections.
    ///
    /// ```no_run
    /// # use metabridge_tcp::{Pool, PoolConfig};
    /// # let pool = Pool::connect("127.0.0.1:7000".parse().unwrap(), PoolConfig::default()).unwrap();
    /// // Another thread's `pool.call(..)` returns an error now.
    /// let ended = pool.abort();
    /// # let _ = ended;
    /// ```
    pub fn abort(&self) -> usize {
        let st = self.lock();
        for socket in &st.busy {
            // Under the lock: the socket is still the call's (see `busy`).
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        st.busy.len()
    }

    /// The number of connections currently open (busy or idle, including
    /// ones being established).
    ///
    /// See [`Pool`] for an example.
    pub fn open_connections(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent at every unlock point, so a panic in
        // another thread while holding the lock does not invalidate it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn max_connections(&self) -> usize {
        self.config.max_connections.max(1)
    }

    /// Takes an idle connection, or reserves a slot and opens one, or waits.
    fn checkout(&self, deadline: Option<Instant>) -> Result<Lease<'_>, PoolError> {
        loop {
            let taken = {
                let mut st = self.lock();
                loop {
                    if st.closed {
                        return Err(PoolError::Closed);
                    }
                    if let Some(conn) = st.idle.pop() {
                        st.busy.push(conn.socket.clone());
                        break Some(conn);
                    }
                    if st.open < self.max_connections() {
                        st.open += 1;
                        break None;
                    }
                    st = match deadline {
                        None => self
                            .available
                            .wait(st)
                            .unwrap_or_else(PoisonError::into_inner),
                        Some(deadline) => {
                            let left = remaining(deadline)?;
                            self.available
                                .wait_timeout(st, left)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0
                        }
                    };
                }
            };
            // From here on the lease owns one slot; dropping it without
            // marking it reusable gives the slot back.
            let mut lease = Lease {
                pool: self,
                conn: taken,
                reusable: false,
            };
            match &lease.conn {
                Some(conn) => {
                    if conn.looks_alive() {
                        return Ok(lease);
                    }
                    debug!(addr = %self.addr, "discarding a pooled connection the server closed");
                }
                None => {
                    let conn = self.open(deadline)?;
                    self.lock().busy.push(conn.socket.clone());
                    lease.conn = Some(conn);
                    return Ok(lease);
                }
            }
        }
    }

    /// Opens and configures a new connection (does not touch the counts).
    fn open(&self, deadline: Option<Instant>) -> Result<Conn, PoolError> {
        let mut limit = self.config.connect_timeout;
        if let Some(deadline) = deadline {
            limit = limit.min(remaining(deadline)?);
        }
        let stream = TcpStream::connect_timeout(&self.addr, limit)?;
        stream.set_nodelay(true)?;
        SockRef::from(&stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(KEEPALIVE_TIME))?;
        #[cfg(feature = "tls")]
        let stream = match &self.config.tls {
            None => Wire::Plain(stream),
            Some(connector) => {
                let mut by = Instant::now() + limit;
                if let Some(deadline) = deadline {
                    by = by.min(deadline);
                }
                Wire::Tls(Box::new(crate::tls::client_handshake(
                    connector, stream, by,
                )?))
            }
        };
        #[cfg(not(feature = "tls"))]
        let stream = Wire::Plain(stream);
        debug!(addr = %self.addr, "opened a pooled connection");
        let socket = Arc::new(stream.tcp().try_clone()?);
        let mut conn = Conn {
            socket,
            reader: BufReader::new(Timed {
                stream,
                deadline: None,
                read_timeout: None,
                write_timeout: None,
            }),
        };
        if let Some(greeting) = &self.config.greeting {
            let mut greeted_by = Instant::now() + self.config.connect_timeout;
            if let Some(deadline) = deadline {
                greeted_by = greeted_by.min(deadline);
            }
            let mut response = Vec::new();
            conn.exchange(
                greeting,
                &mut response,
                self.config.max_frame,
                Some(greeted_by),
                self.config.spin,
            )?;
            conn.reader.get_mut().deadline = None;
        }
        Ok(conn)
    }

    /// Returns a healthy connection to the idle list.
    fn checkin(&self, mut conn: Conn) {
        conn.reader.get_mut().deadline = None;
        let mut st = self.lock();
        st.unlend(&conn.socket);
        let discard = if st.closed {
            st.open -= 1;
            Some(conn)
        } else {
            st.idle.push(conn);
            None
        };
        drop(st);
        self.available.notify_one();
        drop(discard);
    }

    /// Gives back the slot of a connection about to be closed (`socket`:
    /// its handle, if it was lent), or never opened.
    fn forget(&self, socket: Option<&Arc<TcpStream>>) {
        let mut st = self.lock();
        if let Some(socket) = socket {
            st.unlend(socket);
        }
        st.open -= 1;
        drop(st);
        self.available.notify_one();
    }
}

impl State {
    /// Takes a connection's socket off the busy list (it is back, or about
    /// to be closed).
    fn unlend(&mut self, socket: &Arc<TcpStream>) {
        if let Some(i) = self.busy.iter().position(|s| Arc::ptr_eq(s, socket)) {
            self.busy.swap_remove(i);
        }
    }
}

/// Time left until `deadline`, or [`PoolError::Timeout`] if none is.
fn remaining(deadline: Instant) -> Result<Duration, PoolError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(PoolError::Timeout)
    } else {
        Ok(left)
    }
}

/// A slot in the pool, held for the duration of one call.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    /// Set once the call completed cleanly.
    reusable: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        match self.conn.take() {
            Some(conn) if self.reusable && conn.reader.buffer().is_empty() => {
                self.pool.checkin(conn)
            }
            Some(conn) => {
                self.pool.forget(Some(&conn.socket));
                drop(conn);
            }
            None => self.pool.forget(None),
        }
    }
}

/// One pooled connection.
struct Conn {
    /// A second handle on its socket, for [`Pool::abort`].
    socket: Arc<TcpStream>,
    /// Buffered so that a small response is read with one syscall. Between
    /// calls the buffer is empty (the protocol is strictly request/response).
    reader: BufReader<Timed>,
}

impl Conn {
    fn exchange(
        &mut self,
        request: &[u8],
        response: &mut Vec<u8>,
        max_frame: usize,
        deadline: Option<Instant>,
        spin: Duration,
    ) -> Result<(), PoolError> {
        self.reader.get_mut().deadline = deadline;
        write_frame_blocking(self.reader.get_mut(), request)?;
        if !spin.is_zero() {
            self.await_response(spin);
        }
        read_frame_blocking(&mut self.reader, max_frame, response)?;
        Ok(())
    }

    /// Non-blocking peek of one byte: `Ok(true)` if data (or the end of the
    /// stream) is there, `Ok(false)` if nothing is yet.
    fn peek_ready(&self) -> io::Result<bool> {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        match SockRef::from(self.reader.get_ref().stream.tcp())
            .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Polls for the response for at most `spin`, yielding the CPU between
    /// polls (so a server on the same CPU gets it), then returns; the
    /// blocking read that follows finds the data or sleeps for it.
    fn await_response(&self, spin: Duration) {
        if !self.reader.buffer().is_empty() {
            return;
        }
        let Some(_licence) = metabridge_spin::SpinLicence::take() else {
            return;
        };
        let start = Instant::now();
        loop {
            match self.peek_ready() {
                Ok(false) if start.elapsed() < spin => std::thread::yield_now(),
                _ => break,
            }
        }
    }

    /// Whether the server still has this connection open, judged by one
    /// non-blocking peek (a single system call): nothing to read means
    /// alive; an end of stream, unexpected data or an error means it must
    /// not be reused.
    fn looks_alive(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        matches!(self.peek_ready(), Ok(false))
    }
}

/// What a pooled connection's bytes travel on: the socket, or TLS over it.
enum Wire {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::ClientStream>),
}

impl Wire {
    /// The socket under it (for its timeouts, and to peek at it).
    fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(s) => s,
            #[cfg(feature = "tls")]
            Wire::Tls(t) => &t.sock,
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Wire::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Wire::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Wire::Tls(t) => t.flush(),
        }
    }
}

/// A connection whose reads and writes stop at a per-call deadline.
///
/// The deadline is enforced with `SO_RCVTIMEO`/`SO_SNDTIMEO`, which are only
/// changed when the time left falls below seven eighths of the value
/// currently set (or rises above it), so a typical call adds no syscalls.
struct Timed {
    stream: Wire,
    deadline: Option<Instant>,
    /// The socket's current read timeout, as last set by us.
    read_timeout: Option<Duration>,
    /// The socket's current write timeout, as last set by us.
    write_timeout: Option<Duration>,
}

/// Whether a socket timeout currently set to `current` should be changed
/// given `left` until the deadline.
fn should_reset(current: Option<Duration>, left: Duration) -> bool {
    match current {
        None => true,
        Some(current) => left > current || left < current - current / 8,
    }
}

impl Timed {
    fn time_left(&self) -> io::Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(io::ErrorKind::TimedOut.into())
                } else {
                    Ok(Some(left))
                }
            }
        }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = self.time_left()? {
            if should_reset(self.read_timeout, left) {
                self.stream.tcp().set_read_timeout(Some(left))?;
                self.read_timeout = Some(left);
            }
        }
        self.stream.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.time_left()? {
            if should_reset(self.write_timeout, left) {
                self.stream.tcp().set_write_timeout(Some(left))?;
                self.write_timeout = Some(left);
            }
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_reset_policy() {
        let s = Duration::from_secs(1);
        assert!(should_reset(None, s));
        assert!(!should_reset(Some(s), s));
        assert!(!should_reset(Some(s), Duration::from_millis(900)));
        assert!(should_reset(Some(s), Duration::from_millis(800)));
        assert!(should_reset(Some(Duration::from_millis(10)), s));
    }

    #[test]
    fn pool_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Pool>();
    }

    #[test]
    fn error_mapping() {
        let e: PoolError = io::Error::from(io::ErrorKind::WouldBlock).into();
        assert!(matches!(e, PoolError::Timeout));
        let e: PoolError = FrameError::Io(io::ErrorKind::ConnectionReset.into()).into();
        assert!(matches!(e, PoolError::Io(_)));
        let e: PoolError = FrameError::Closed.into();
        assert!(matches!(e, PoolError::Frame(FrameError::Closed)));
    }
}
