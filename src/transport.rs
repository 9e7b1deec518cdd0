//! The one seam where shared memory and TCP meet: a round trip of one
//! request envelope, whichever carries it.

use crate::error::{Error, Result};
use crate::registry::Entry;
use crate::server::HANDSHAKE_V1;
use crossbeam_utils::atomic::AtomicCell;
use metabridge_shm::{Channel, ChannelConfig, DoorbellSet};
use metabridge_tcp::{Pool, PoolConfig, PoolError};
use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A client's transport.
pub(crate) enum Transport {
    Shm(ShmPool),
    Tcp(Pool),
}

impl Transport {
    pub(crate) fn tcp(addr: &str, max: usize, timeout: Duration) -> Result<Transport> {
        let sock = addr.to_socket_addrs()?.next().ok_or_else(|| {
            Error::Io(std::io::Error::other(format!(
                "{addr} resolves to no address"
            )))
        })?;
        // On loopback an answer comes sooner than a blocked thread is woken
        // (about 20 µs on a VM): poll a little before blocking.
        let spin = if sock.ip().is_loopback() {
            Duration::from_micros(50)
        } else {
            Duration::ZERO
        };
        let config = PoolConfig {
            max_connections: max,
            connect_timeout: timeout.min(Duration::from_secs(5)),
            call_timeout: Some(timeout),
            spin,
            ..PoolConfig::default()
        };
        let pool = Pool::connect(sock, config).map_err(pool_error)?;
        Ok(Transport::Tcp(pool))
    }

    /// Encodes a request with `encode`, carries it, and decodes the
    /// response bytes with `decode` (in place, for shared memory).
    pub(crate) fn round_trip<R>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
        decode: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<R> {
        match self {
            Transport::Shm(pool) => pool.round_trip(encode, decode),
            Transport::Tcp(pool) => {
                let mut request = Vec::with_capacity(128);
                encode(&mut request)?;
                let mut response = Vec::with_capacity(128);
                pool.call(&request, &mut response).map_err(pool_error)?;
                decode(&response)
            }
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Transport::Shm(_) => "shm",
            Transport::Tcp(_) => "tcp",
        }
    }

    pub(crate) fn open_channels(&self) -> usize {
        match self {
            Transport::Shm(p) => p.open.load(Ordering::Relaxed),
            Transport::Tcp(p) => p.open_connections(),
        }
    }

    pub(crate) fn close(&self) {
        match self {
            Transport::Shm(p) => p.close(),
            Transport::Tcp(p) => p.close(),
        }
    }
}

fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Io(io) => Error::Io(io),
        PoolError::Timeout => Error::Timeout("TCP call".into()),
        PoolError::Closed => Error::PeerGone("the client was closed".into()),
        PoolError::Frame(f) => Error::Protocol(f.to_string()),
    }
}

/// One shared-memory channel with its request buffer.
struct ShmConn {
    channel: Channel,
    buf: Vec<u8>,
}

/// Channels to one service, opened only when that many calls run at once.
pub(crate) struct ShmPool {
    socket: PathBuf,
    shm_dir: PathBuf,
    doorbells: DoorbellSet,
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

static SEGMENT_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ShmPool {
    /// Checks that the service's shared memory can be mapped (its
    /// doorbells open); channels come later.
    pub(crate) fn new(entry: &Entry, max: usize, timeout: Duration) -> Result<ShmPool> {
        let shm_dir = PathBuf::from(&entry.shm_dir);
        let doorbells = DoorbellSet::open(&shm_dir, &entry.doorbells)?;
        Ok(ShmPool {
            socket: PathBuf::from(&entry.control_socket),
            shm_dir,
            doorbells,
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
        })
    }

    fn round_trip<R>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
        decode: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<R> {
        let mut conn = self.acquire()?;
        conn.buf.clear();
        if let Err(e) = encode(&mut conn.buf) {
            self.release(conn);
            return Err(e);
        }
        let carried = match conn.channel.send(&conn.buf) {
            Ok(()) => conn
                .channel
                .recv_timeout(self.timeout)
                .map(|reply| decode(&reply)),
            Err(e) => Err(e),
        };
        match carried {
            Ok(result) => {
                self.release(conn);
                result
            }
            Err(e) => {
                // The channel's state is unknown (a reply may still come):
                // never reuse it.
                drop(conn);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.wake_waiter(self.idle.lock().unwrap_or_else(|p| p.into_inner()));
                Err(e.into())
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
                return self.open_channel().inspect_err(|_| {
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

    /// Creates a segment and asks the service to open it.
    fn open_channel(&self) -> Result<Box<ShmConn>> {
        let n = SEGMENT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("ch-{}-{n}-{nanos:x}", std::process::id());
        let config = ChannelConfig {
            dir: self.shm_dir.clone(),
            ..ChannelConfig::default()
        };
        let mut channel = Channel::create(&name, &config)?;
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(self.timeout.min(Duration::from_secs(5))))?;
        let mut hello = vec![HANDSHAKE_V1];
        hello.extend_from_slice(&(name.len() as u16).to_le_bytes());
        hello.extend_from_slice(name.as_bytes());
        stream.write_all(&hello)?;
        let mut status = [0u8; 3];
        stream.read_exact(&mut status)?;
        let arg = u16::from_le_bytes([status[1], status[2]]);
        if status[0] != 0 {
            let mut msg = vec![0u8; arg as usize];
            let _ = stream.read_exact(&mut msg);
            return Err(Error::Protocol(format!(
                "the service refused the channel: {}",
                String::from_utf8_lossy(&msg)
            )));
        }
        let bell = self.doorbells.bell(arg as usize).ok_or_else(|| {
            Error::Protocol(format!(
                "the service named doorbell {arg}, which does not exist"
            ))
        })?;
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
