//! The shared-memory transport's client side: channels (a sealed memfd
//! segment each, handed to the service over its control socket) opened
//! as calls overlap, and reused without a lock by one caller at a time.

use super::{interrupted_wait, CallTransport, Limits, INTERRUPT_SLICE};
use crate::error::{Error, PeerGone, Result, TimedOut};
use crate::out_of_line::{with_inbound, with_outbound};
use crate::resolve::ServiceAddress;
use crossbeam_utils::atomic::AtomicCell;
use metabridge_shm::{Channel, ChannelConfig, DoorbellSet, PoolReader, PoolWriter, ReusedBuffer};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One shared-memory channel with its request buffer (kept between calls
/// within the channel's budget, like its receive buffer), and the writer
/// and reader of its payload pools (see `out_of_line`).
pub(super) struct ShmConn {
    channel: Channel,
    buf: ReusedBuffer,
    writer: Option<PoolWriter>,
    reader: Option<PoolReader>,
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
    pub(super) waiting: AtomicUsize,
    idle: Mutex<Idle>,
    returned: Condvar,
    pub(super) open: AtomicUsize,
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

impl CallTransport for ShmPool {
    /// Opens the first channel to the service at once, so that a service
    /// whose shared memory we cannot use is known now (and the client can
    /// fall back to TCP); more channels come when calls overlap.
    fn open(address: &ServiceAddress, limits: &Limits, _token: Option<&str>) -> Result<ShmPool> {
        let entry = address.local_entry("shm")?;
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
        let ShmConn {
            channel,
            buf,
            writer,
            reader,
        } = &mut *conn;
        buf.clear();
        let (encoded, placed) = with_outbound(writer, || encode(buf));
        if let Err(e) = encoded {
            self.release(conn);
            return Err(e);
        }
        let (tx, rx) = channel.halves();
        if placed {
            tx.refer_to_pool();
        }
        // The reply is decoded with the service's pool lent if it refers
        // to it.
        let reader = reader.as_ref();
        let decode = |reply: metabridge_shm::Message<'_>| {
            with_inbound(reader.filter(|_| reply.refers_to_pool()), || decode(&reply))
        };
        let buf = &**buf;
        // The common case, a request that fits one frame and a ring with
        // room, sends without reading the clock; otherwise the deadline is
        // fixed now and bounds the send and the wait for the reply.
        let sent = if buf.len() <= tx.max_frame() {
            match tx.try_send(buf) {
                Ok(()) => Ok(None),
                Err(metabridge_shm::Error::Full) => {
                    let deadline = Instant::now() + self.timeout;
                    tx.send_until(buf, deadline).map(|()| Some(deadline))
                }
                Err(e) => Err(e),
            }
        } else {
            let deadline = Instant::now() + self.timeout;
            tx.send_until(buf, deadline).map(|()| Some(deadline))
        };
        let mut interrupted = false;
        let carried = match (sent, interrupt) {
            (Ok(None), None) => rx.recv_timeout(self.timeout).map(decode),
            (Ok(Some(deadline)), None) => rx.recv_until(deadline).map(decode),
            (Ok(deadline), Some(interrupt)) => {
                let deadline = deadline.unwrap_or_else(|| Instant::now() + self.timeout);
                loop {
                    let slice = deadline.min(Instant::now() + INTERRUPT_SLICE);
                    match rx.recv_until(slice) {
                        Ok(reply) => break Ok(decode(reply)),
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
                conn.buf.settle(self.config.keep_buffer);
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
                    metabridge_shm::Error::Timeout => Error::Timeout(TimedOut::ShmReply {
                        after: self.timeout,
                    }),
                    other => other.into(),
                })
            }
        }
    }

    fn open_channels(&self) -> usize {
        self.open.load(Ordering::Relaxed)
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

impl ShmPool {
    pub(super) fn acquire(&self) -> Result<Box<ShmConn>> {
        if let Some(conn) = self.hot.take() {
            return Ok(conn); // the common case: no lock, no clock read
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::PeerGone(PeerGone::ClientClosed));
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
                return Err(Error::Timeout(TimedOut::FreeChannel));
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

    pub(super) fn release(&self, conn: Box<ShmConn>) {
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
        let bell = bells
            .bell(granted.worker as usize)
            .ok_or_else(|| Error::from(crate::HandshakeError::NoSuchDoorbell(granted.worker)))?;
        // The worker's doorbell: rung for each request it may be asleep
        // for, and when we free room for a reply it could not send whole.
        channel.halves().1.set_doorbell(bell.clone());
        channel.halves().0.set_doorbell(bell);
        Ok(Box::new(ShmConn {
            writer: channel.pool_writer(),
            reader: channel.pool_reader(),
            channel,
            buf: ReusedBuffer::new(),
        }))
    }
}
