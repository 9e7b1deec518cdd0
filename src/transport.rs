//! The one seam where shared memory and TCP meet: a round trip of one
//! request envelope, whichever carries it.

use crate::envelope;
use crate::error::{Error, Result};
use crate::registry::Entry;
use crossbeam_utils::atomic::AtomicCell;
use metabridge_shm::{Channel, ChannelConfig, DoorbellSet};
use metabridge_tcp::{Pool, PoolConfig, PoolError};
use std::net::ToSocketAddrs;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A client's transport. (One per client connection, so the size of the
/// shared-memory pool inline is no concern.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Transport {
    Shm(ShmPool),
    /// A socket pool, and the largest request it may send.
    Tcp(Arc<Pool>, usize),
}

impl Transport {
    pub(crate) fn tcp(addr: &str, limits: &Limits, token: Option<&str>) -> Result<Transport> {
        let sock = addr.to_socket_addrs()?.next().ok_or_else(|| {
            Error::Io(std::io::Error::other(format!(
                "{addr} resolves to no address"
            )))
        })?;
        // On loopback an answer comes sooner than a blocked thread is woken:
        // poll a little before blocking.
        let spin = if sock.ip().is_loopback() {
            Duration::from_micros(50)
        } else {
            Duration::ZERO
        };
        // A service with a token lets a connection send large frames only
        // once it has authenticated: greet each new connection with a small
        // request carrying the token, so a first call may be of any size.
        let greeting = token.map(|t| {
            let mut hello = Vec::new();
            envelope::encode_list(
                &mut hello,
                &envelope::encode_ctor(&[0x90], &[0x80]),
                Some(t),
            );
            Arc::<[u8]>::from(hello)
        });
        let config = PoolConfig {
            max_connections: limits.channels,
            max_frame: limits.message,
            connect_timeout: limits.timeout.min(Duration::from_secs(5)),
            call_timeout: Some(limits.timeout),
            spin,
            greeting,
        };
        let pool = Pool::connect(sock, config).map_err(pool_error)?;
        Ok(Transport::Tcp(Arc::new(pool), limits.message))
    }

    /// Encodes a request with `encode`, carries it, and decodes the
    /// response bytes with `decode` (in place, for shared memory).
    /// `interrupt`, if given, is asked every [`INTERRUPT_SLICE`] while a
    /// shared-memory call waits for its reply; when it answers true the
    /// wait ends with `io::ErrorKind::Interrupted` and the channel is
    /// retired like a timed-out one (the call is never replayed, and its
    /// late reply can never reach another call). A TCP call with an
    /// interrupt check runs on a helper thread while the caller waits in
    /// slices; interrupted, the caller returns and the helper finishes the
    /// exchange alone, its reply discarded (the connection stays in order).
    pub(crate) fn round_trip<R>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
        decode: impl FnOnce(&[u8]) -> Result<R>,
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<R> {
        match self {
            Transport::Shm(pool) => pool.round_trip(encode, decode, interrupt),
            Transport::Tcp(pool, max) => {
                let mut request = Vec::with_capacity(128);
                encode(&mut request)?;
                if request.len() > *max {
                    return Err(Error::MessageTooLarge {
                        len: request.len() as u64,
                        max: *max as u64,
                    });
                }
                let mut response = Vec::with_capacity(128);
                match interrupt {
                    None => pool.call(&request, &mut response).map_err(pool_error)?,
                    Some(interrupt) => {
                        response = tcp_call_interruptibly(pool, request, interrupt)?;
                    }
                }
                decode(&response)
            }
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Transport::Shm(_) => "shm",
            Transport::Tcp(..) => "tcp",
        }
    }

    pub(crate) fn open_channels(&self) -> usize {
        match self {
            Transport::Shm(p) => p.open.load(Ordering::Relaxed),
            Transport::Tcp(p, _) => p.open_connections(),
        }
    }

    pub(crate) fn close(&self) {
        match self {
            Transport::Shm(p) => p.close(),
            Transport::Tcp(p, _) => p.close(),
        }
    }
}

/// A TCP pool's error as the client's. A connection that ends or is reset
/// under a call (the service stopped or died) is `PeerGone`, as over
/// shared memory; a refused connect stays `Io` (the service is not there:
/// the client reports it not found).
fn pool_error(e: PoolError) -> Error {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    match e {
        PoolError::Io(io)
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) =>
        {
            Error::PeerGone(format!("the TCP connection to the service was lost ({io})"))
        }
        PoolError::Frame(metabridge_tcp::FrameError::Closed) => Error::PeerGone(
            "the service closed the TCP connection without answering (it stopped or died)".into(),
        ),
        PoolError::Io(io) => Error::Io(io),
        PoolError::Timeout => Error::Timeout("TCP call".into()),
        PoolError::Closed => Error::PeerGone("the client was closed".into()),
        PoolError::Frame(metabridge_tcp::FrameError::TooLarge { declared, max }) => {
            Error::MessageTooLarge {
                len: declared,
                max: max as u64,
            }
        }
        PoolError::Frame(f) => Error::Protocol(f.to_string()),
    }
}

/// How often a shared-memory call with an interrupt check asks it.
pub(crate) const INTERRUPT_SLICE: Duration = Duration::from_millis(20);

/// The error of a call whose wait for the reply was interrupted (the
/// request went out: it is never sent again).
fn interrupted_wait() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "the wait for the reply was interrupted; the call was not replayed",
    ))
}

/// A TCP call on a helper thread, waited for in [`INTERRUPT_SLICE`]s so
/// that `interrupt` (a pending Ctrl+C in Python) can end the wait.
fn tcp_call_interruptibly(
    pool: &Arc<Pool>,
    request: Vec<u8>,
    interrupt: &dyn Fn() -> bool,
) -> Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pool = Arc::clone(pool);
    std::thread::Builder::new()
        .name("metabridge-tcp-call".into())
        .spawn(move || {
            let mut response = Vec::with_capacity(128);
            let r = pool.call(&request, &mut response).map(|()| response);
            let _ = tx.send(r);
        })?;
    loop {
        match rx.recv_timeout(INTERRUPT_SLICE) {
            Ok(r) => return r.map_err(pool_error),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupt() {
                    return Err(interrupted_wait());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::PeerGone(
                    "the TCP call's thread ended without a reply".into(),
                ))
            }
        }
    }
}

/// What a client allows itself: channels, time, message size.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) channels: usize,
    pub(crate) timeout: Duration,
    pub(crate) message: usize,
}

/// One shared-memory channel with its request buffer.
struct ShmConn {
    channel: Channel,
    buf: Vec<u8>,
}

/// Channels to one service, opened only when that many calls run at once.
pub(crate) struct ShmPool {
    socket: PathBuf,
    config: ChannelConfig,
    /// The service's doorbells, received with the first channel.
    doorbells: OnceLock<DoorbellSet>,
    /// The channel returned last: taken and put back without a lock (the
    /// common case of one caller at a time). Others wait in `idle`.
    hot: AtomicCell<Option<Box<ShmConn>>>,
    /// Callers waiting for a channel (releases then go through `idle`).
    waiting: AtomicUsize,
    idle: Mutex<Idle>,
    returned: Condvar,
    pub(crate) open: AtomicUsize,
    max: usize,
    timeout: Duration,
    closed: AtomicBool,
}

/// The idle channels, and how many callers wait for one.
struct Idle {
    // Boxed on purpose: a channel moves between this list and the
    // lock-free `hot` slot (one pointer wide) without reallocating.
    #[allow(clippy::vec_box)]
    conns: Vec<Box<ShmConn>>,
    waiters: usize,
}

impl ShmPool {
    /// Opens the first channel to the service at once, so that a service
    /// whose shared memory we cannot use is known now (and the client can
    /// fall back to TCP); more channels come when calls overlap.
    pub(crate) fn new(entry: &Entry, limits: &Limits) -> Result<ShmPool> {
        let (max, timeout) = (limits.channels, limits.timeout);
        let pool = ShmPool {
            config: ChannelConfig {
                max_message: limits.message as u64,
                ..ChannelConfig::default()
            },
            socket: PathBuf::from(&entry.control_socket),
            doorbells: OnceLock::new(),
            hot: AtomicCell::new(None),
            waiting: AtomicUsize::new(0),
            idle: Mutex::new(Idle {
                conns: Vec::with_capacity(max),
                waiters: 0,
            }),
            returned: Condvar::new(),
            open: AtomicUsize::new(0),
            max,
            timeout,
            closed: AtomicBool::new(false),
        };
        let first = pool.open_channel(Instant::now() + timeout)?;
        pool.open.store(1, Ordering::Release);
        pool.hot.store(Some(first));
        Ok(pool)
    }

    /// Carries one request and its reply, all within the call's timeout:
    /// waiting for a channel, for room in the ring, and for the reply.
    fn round_trip<R>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
        decode: impl FnOnce(&[u8]) -> Result<R>,
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<R> {
        let mut conn = self.acquire()?;
        conn.buf.clear();
        if let Err(e) = encode(&mut conn.buf) {
            self.release(conn);
            return Err(e);
        }
        let (tx, rx) = conn.channel.halves();
        // The common case, a request that fits one frame and a ring with
        // room, sends without reading the clock; otherwise the deadline is
        // fixed now and bounds the send and the wait for the reply.
        let sent = if conn.buf.len() <= tx.max_frame() {
            match tx.try_send(&conn.buf) {
                Ok(()) => Ok(None),
                Err(metabridge_shm::Error::Full) => {
                    let deadline = Instant::now() + self.timeout;
                    tx.send_until(&conn.buf, deadline).map(|()| Some(deadline))
                }
                Err(e) => Err(e),
            }
        } else {
            let deadline = Instant::now() + self.timeout;
            tx.send_until(&conn.buf, deadline).map(|()| Some(deadline))
        };
        let mut interrupted = false;
        let carried = match (sent, interrupt) {
            (Ok(None), None) => rx.recv_timeout(self.timeout).map(|reply| decode(&reply)),
            (Ok(Some(deadline)), None) => rx.recv_until(deadline).map(|reply| decode(&reply)),
            (Ok(deadline), Some(interrupt)) => {
                let deadline = deadline.unwrap_or_else(|| Instant::now() + self.timeout);
                loop {
                    let slice = deadline.min(Instant::now() + INTERRUPT_SLICE);
                    match rx.recv_until(slice) {
                        Ok(reply) => break Ok(decode(&reply)),
                        Err(metabridge_shm::Error::Timeout) if Instant::now() < deadline => {
                            if interrupt() {
                                interrupted = true;
                                break Err(metabridge_shm::Error::Timeout);
                            }
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
            (Err(e), _) => Err(e),
        };
        match carried {
            Ok(result) => {
                if conn.buf.capacity() > metabridge_shm::KEEP_BUFFER {
                    conn.buf = Vec::with_capacity(256); // after a large request
                }
                self.release(conn);
                result
            }
            Err(e) => {
                // The channel's state is unknown (a reply may still come):
                // never reuse it.
                drop(conn);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.wake_waiter(self.idle.lock().unwrap_or_else(|p| p.into_inner()));
                Err(match e {
                    _ if interrupted => interrupted_wait(),
                    metabridge_shm::Error::Timeout => Error::Timeout(format!(
                        "no reply within {:?} on a shared-memory channel",
                        self.timeout
                    )),
                    other => other.into(),
                })
            }
        }
    }

    fn acquire(&self) -> Result<Box<ShmConn>> {
        if let Some(conn) = self.hot.take() {
            return Ok(conn); // the common case: no lock, no clock read
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::PeerGone("the client was closed".into()));
            }
            if let Some(conn) = idle.conns.pop().or_else(|| self.hot.take()) {
                return Ok(conn);
            }
            let open = self.open.load(Ordering::Acquire);
            if open < self.max {
                self.open.store(open + 1, Ordering::Release);
                drop(idle);
                return self.open_channel(deadline).inspect_err(|_| {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout("waiting for a free channel".into()));
            }
            // SeqCst: a release either sees us waiting (and goes through
            // the lock, which notifies) or put its channel in `hot` before
            // this, where the look below finds it.
            idle.waiters += 1;
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if let Some(conn) = self.hot.take() {
                idle.waiters -= 1;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return Ok(conn);
            }
            // Short slices: a release racing with our registration may
            // still have chosen `hot`.
            idle = self
                .returned
                .wait_timeout(idle, left.min(Duration::from_millis(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            idle.waiters -= 1;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn release(&self, conn: Box<ShmConn>) {
        if self.closed.load(Ordering::Acquire) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let displaced = if self.waiting.load(Ordering::SeqCst) == 0 {
            match self.hot.swap(Some(conn)) {
                None => return,
                Some(other) => other,
            }
        } else {
            conn
        };
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.conns.push(displaced);
        self.wake_waiter(idle);
    }

    /// Wakes one waiting caller, if any. (A condition variable's notify is
    /// a system call even with nobody waiting: skip it on the hot path.)
    fn wake_waiter(&self, idle: std::sync::MutexGuard<'_, Idle>) {
        let waiting = idle.waiters > 0;
        drop(idle);
        if waiting {
            self.returned.notify_one();
        }
    }

    /// Creates a segment (a sealed memfd) and hands it to the service over
    /// its control socket, within `deadline`.
    fn open_channel(&self, deadline: Instant) -> Result<Box<ShmConn>> {
        let (mut channel, fd) = Channel::create_memfd(&self.config)?;
        let granted = crate::control::request_channel(&self.socket, fd.as_fd(), deadline)?;
        drop(fd); // the service has its own copy; our mapping stays
        let bells = match self.doorbells.get() {
            Some(bells) => bells,
            None => {
                let bells = DoorbellSet::from_fd(granted.doorbells.as_fd())?;
                self.doorbells.get_or_init(|| bells)
            }
        };
        let bell = bells.bell(granted.worker as usize).ok_or_else(|| {
            Error::Protocol(format!(
                "the service named doorbell {}, which does not exist",
                granted.worker
            ))
        })?;
        // The worker's doorbell: rung for each request it may be asleep
        // for, and when we free room for a reply it could not send whole.
        channel.halves().1.set_doorbell(bell.clone());
        channel.halves().0.set_doorbell(bell);
        Ok(Box::new(ShmConn {
            channel,
            buf: Vec::with_capacity(256),
        }))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut drained: Vec<Box<ShmConn>> =
            std::mem::take(&mut self.idle.lock().unwrap_or_else(|p| p.into_inner()).conns);
        drained.extend(self.hot.take());
        self.open.fetch_sub(drained.len(), Ordering::AcqRel);
        drop(drained);
        self.returned.notify_all();
    }
}

#[cfg(test)]
mod tests;
