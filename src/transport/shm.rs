//! The shared-memory transport's client side: channels (a sealed memfd
//! segment each, handed to the service over its control socket) opened
//! as calls overlap, and reused without a lock by one caller at a time.
//! Async calls ([`ShmPool::round_trip_async`]) wait for their channel as
//! tasks, and for their reply through the pool's reply waiter (`replies`).

mod replies;

use super::{interrupted_wait, CallTransport, Limits, INTERRUPT_SLICE};
use crate::error::{Error, PeerGone, Result, TimedOut};
use crate::out_of_line::{with_inbound, with_outbound};
use crate::resolve::ServiceAddress;
use crossbeam_utils::atomic::AtomicCell;
use metabridge_shm::{Channel, ChannelConfig, DoorbellSet, PoolReader, PoolWriter, ReusedBuffer};
use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Poll, Waker};
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
    closed: AtomicBool,
    /// The waiter of async calls' replies, started by the first one.
    replies: OnceLock<Arc<replies::ReplyWaiter>>,
    /// An async call is opening a channel (one at a time: each is opened
    /// off the runtime's workers, and one at a time costs one thread).
    opening: AtomicBool,
}

/// The idle channels, and who waits for one: threads (counted; they wait
/// on `returned`) and async calls (their wakers, in order of arrival).
struct Idle {
    // Boxed on purpose: a channel moves between this list and the
    // lock-free `hot` slot (one pointer wide) without reallocating.
    #[allow(clippy::vec_box)]
    conns: Vec<Box<ShmConn>>,
    waiters: usize,
    tasks: VecDeque<(u64, Waker)>,
    next_task: u64,
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
                tasks: VecDeque::new(),
                next_task: 0,
            }),
            returned: Condvar::new(),
            open: AtomicUsize::new(0),
            max,
            closed: AtomicBool::new(false),
            replies: OnceLock::new(),
            opening: AtomicBool::new(false),
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
        timeout: Duration,
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<R> {
        let mut conn = self.acquire(timeout)?;
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
                    let deadline = Instant::now() + timeout;
                    tx.send_until(buf, deadline).map(|()| Some(deadline))
                }
                Err(e) => Err(e),
            }
        } else {
            let deadline = Instant::now() + timeout;
            tx.send_until(buf, deadline).map(|()| Some(deadline))
        };
        let mut interrupted = false;
        let carried = match (sent, interrupt) {
            (Ok(None), None) => rx.recv_timeout(timeout).map(decode),
            (Ok(Some(deadline)), None) => rx.recv_until(deadline).map(decode),
            (Ok(deadline), Some(interrupt)) => {
                let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout);
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
                    metabridge_shm::Error::Timeout => {
                        Error::Timeout(TimedOut::ShmReply { after: timeout })
                    }
                    other => other.into(),
                })
            }
        }
    }

    fn open_channels(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn abort_calls(&self) -> usize {
        // A local service's death is seen by the channel's own checks; a
        // call waiting on a live one is not ended from outside.
        0
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut drained: Vec<Box<ShmConn>> =
            std::mem::take(&mut self.idle.lock().unwrap_or_else(|p| p.into_inner()).conns);
        drained.extend(self.hot.take());
        self.open.fetch_sub(drained.len(), Ordering::AcqRel);
        drop(drained);
        if let Some(replies) = self.replies.get() {
            replies.stop();
        }
        let tasks = std::mem::take(&mut self.idle.lock().unwrap_or_else(|p| p.into_inner()).tasks);
        self.waiting.fetch_sub(tasks.len(), Ordering::SeqCst);
        tasks.into_iter().for_each(|(_, w)| w.wake());
        self.returned.notify_all();
    }
}

impl ShmPool {
    /// A channel for a blocking call, waited for within `timeout`.
    pub(super) fn acquire(&self, timeout: Duration) -> Result<Box<ShmConn>> {
        if let Some(conn) = self.hot.take() {
            return Ok(conn); // the common case: no lock, no clock read
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + timeout;
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

    /// Wakes one waiting caller, if any: a thread and the first waiting
    /// async call (whichever takes the channel first has it; the other
    /// waits again). (A condition variable's notify is a system call even
    /// with nobody waiting: skip it on the hot path.)
    fn wake_waiter(&self, mut idle: std::sync::MutexGuard<'_, Idle>) {
        let waiting = idle.waiters > 0;
        let task = idle.tasks.pop_front();
        if task.is_some() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        drop(idle);
        if waiting {
            self.returned.notify_one();
        }
        if let Some((_, waker)) = task {
            waker.wake();
        }
    }

    /// A channel for an async call, without blocking: one idle, or leave
    /// to open one, or `Busy` with
    /// `task` (its id and waker) queued to be woken by a release. A call
    /// already queued as `queued` is updated in place.
    fn try_acquire(&self, waker: &Waker, queued: &mut Option<u64>) -> Result<Acquired> {
        if let Some(conn) = self.hot.take() {
            return Ok(Acquired::Conn(conn));
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::PeerGone(PeerGone::ClientClosed));
        }
        if let Some(conn) = idle.conns.pop().or_else(|| self.hot.take()) {
            return Ok(Acquired::Conn(conn));
        }
        let open = self.open.load(Ordering::Acquire);
        if open < self.max {
            // Relaxed: read and written under the `idle` lock.
            if !self.opening.swap(true, Ordering::Relaxed) {
                self.open.store(open + 1, Ordering::Release);
                return Ok(Acquired::Open);
            }
        }
        match queued.and_then(|id| idle.tasks.iter_mut().find(|(i, _)| *i == id)) {
            Some((_, w)) => w.clone_from(waker),
            None => {
                let id = idle.next_task;
                idle.next_task += 1;
                idle.tasks.push_back((id, waker.clone()));
                // SeqCst: as for a waiting thread in `acquire`, so that a
                // release goes through the lock and wakes us.
                self.waiting.fetch_add(1, Ordering::SeqCst);
                *queued = Some(id);
            }
        }
        // A release between our look and the registration put its channel
        // in `hot`: take it now.
        if let Some(conn) = self.hot.take() {
            Self::dequeue(&mut idle, queued, &self.waiting);
            return Ok(Acquired::Conn(conn));
        }
        Ok(Acquired::Busy)
    }

    /// Removes a queued async call (it got a channel, or was dropped).
    /// Returns whether it was still queued (not yet woken).
    fn dequeue(idle: &mut Idle, queued: &mut Option<u64>, waiting: &AtomicUsize) -> bool {
        let Some(id) = queued.take() else {
            return false;
        };
        match idle.tasks.iter().position(|(i, _)| *i == id) {
            Some(at) => {
                idle.tasks.remove(at);
                waiting.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Waits, as a task, for a channel until `deadline`.
    async fn acquire_async(&self, deadline: Instant) -> Result<Box<ShmConn>> {
        let mut wait = AcquireWait {
            pool: self,
            queued: None,
        };
        let acquired = tokio::time::timeout_at(
            deadline.into(),
            std::future::poll_fn(|cx| match self.try_acquire(cx.waker(), &mut wait.queued) {
                Ok(Acquired::Busy) => Poll::Pending,
                other => Poll::Ready(other),
            }),
        )
        .await;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        Self::dequeue(&mut idle, &mut wait.queued, &self.waiting);
        drop(idle);
        match acquired {
            Err(_) => Err(Error::Timeout(TimedOut::FreeChannel)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Acquired::Conn(conn))) => Ok(conn),
            // Creating and mapping a segment takes a millisecond or so:
            // off the runtime's workers, one channel at a time.
            Ok(Ok(_)) => {
                let opened = off_worker(|| self.open_channel(deadline));
                let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                self.opening.store(false, Ordering::Relaxed);
                if opened.is_err() {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                }
                // The next queued call may open another.
                self.wake_waiter(idle);
                opened
            }
        }
    }

    /// The reply waiter, started on first use (under the `idle` lock, so
    /// that calls racing to be first start one thread, not several).
    fn replies(&self) -> Result<&Arc<replies::ReplyWaiter>> {
        if let Some(r) = self.replies.get() {
            return Ok(r);
        }
        let _one = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.replies.get() {
            return Ok(r);
        }
        let started = replies::ReplyWaiter::start()?;
        Ok(self.replies.get_or_init(|| started))
    }

    /// Gives up a channel whose state is unknown (a failed or abandoned
    /// call): it is no longer counted, so another can be opened.
    fn retire(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.wake_waiter(self.idle.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Carries one request and its reply from async code, within the
    /// call's timeout: the channel is waited for as a task; the request is
    /// encoded and sent on this thread (off the runtime's workers when
    /// `large`: on tokio's blocking pool); a quick reply is spun for here, a slow
    /// one waited for by the pool's reply waiter while the task yields.
    /// Dropping the future cancels the call: its channel leaves the pool's
    /// count at once and is closed (its late reply read by no one).
    pub(crate) async fn round_trip_async<R>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()> + Send + 'static,
        decode: impl FnOnce(&[u8]) -> Result<R>,
        large: bool,
        timeout: Duration,
    ) -> Result<R> {
        let deadline = Instant::now() + timeout;
        let conn = self.acquire_async(deadline).await?;
        let mut held = Held {
            pool: self,
            conn: Some(conn),
            away: false,
        };
        let sent = if large {
            // Copying megabytes into the pool: on the blocking pool, so the
            // runtime's workers keep running other tasks; and only a few at
            // once (see `large_sends`).
            let _turn = large_sends()
                .acquire()
                .await
                .map_err(|_| Error::PeerGone(PeerGone::ClientClosed))?;
            let mut conn = held.conn.take().expect("a held channel");
            held.away = true;
            let (conn, sent) = tokio::task::spawn_blocking(move || {
                let sent = send_request(&mut conn, encode, deadline, timeout);
                (conn, sent)
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
            held.away = false;
            held.conn = Some(conn);
            sent
        } else {
            send_request(
                held.conn.as_mut().expect("a held channel"),
                encode,
                deadline,
                timeout,
            )
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Unsent(e)) => {
                held.finish();
                return Err(e);
            }
            Err(SendError::Sent(e)) => return Err(e),
        }
        let mut decode = Some(decode);
        // Spin only for a small call's first look: a large request's reply
        // takes at least the service's copy, and a channel the waiter hands
        // back has a frame already.
        let mut spin = !large;
        loop {
            let reply = match std::mem::take(&mut spin) {
                true => held.spin_for_reply(&mut decode)?,
                false => held.take_reply(&mut decode)?,
            };
            if let Some(result) = reply {
                held.finish();
                return result;
            }
            let conn = held.conn.take().expect("a held channel");
            let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
            let slot = self.replies()?.wait(conn, waker, deadline, timeout);
            let mut wait = ReplyWait {
                pool: self,
                slot: Some(slot),
            };
            held.conn = Some(std::future::poll_fn(|cx| wait.poll(cx.waker())).await?);
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

impl Drop for ShmPool {
    fn drop(&mut self) {
        if let Some(replies) = self.replies.get() {
            replies.stop();
        }
    }
}

/// What [`ShmPool::try_acquire`] found.
enum Acquired {
    Conn(Box<ShmConn>),
    /// Room to open a channel (counted already).
    Open,
    Busy,
}

/// An async call queued for a channel: leaves the queue when dropped (and
/// passes on a wake it got but will not use).
struct AcquireWait<'p> {
    pool: &'p ShmPool,
    queued: Option<u64>,
}

impl Drop for AcquireWait<'_> {
    fn drop(&mut self) {
        if self.queued.is_none() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        if !ShmPool::dequeue(&mut idle, &mut self.queued, &self.pool.waiting) {
            // Woken for a channel we will not take: wake the next one.
            self.pool.wake_waiter(idle);
        }
    }
}

/// The channel of an async call in progress. Dropped with the channel
/// still in it, or away on a blocking thread (an error, or the call
/// abandoned), the channel is retired; [`finish`](Held::finish) puts it
/// back in the pool.
struct Held<'p> {
    pool: &'p ShmPool,
    conn: Option<Box<ShmConn>>,
    /// The channel is on a blocking thread, sending: if the call is
    /// dropped meanwhile, that thread drops it when done.
    away: bool,
}

/// Why a request did not go out whole.
enum SendError {
    /// It never left (an argument that does not encode): the channel is
    /// as it was.
    Unsent(Error),
    /// It may be partly out: the channel's state is unknown.
    Sent(Error),
}

/// Encodes a request into `conn`'s buffer (large byte strings into its
/// pool) and sends it, by `deadline`.
fn send_request(
    conn: &mut ShmConn,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    deadline: Instant,
    timeout: Duration,
) -> std::result::Result<(), SendError> {
    let ShmConn {
        channel,
        buf,
        writer,
        ..
    } = conn;
    buf.clear();
    let (encoded, placed) = with_outbound(writer, || encode(buf));
    encoded.map_err(SendError::Unsent)?;
    let (tx, _) = channel.halves();
    if placed {
        tx.refer_to_pool();
    }
    let buf = &**buf;
    let sent = match tx.try_send(buf) {
        Err(metabridge_shm::Error::Full) => tx.send_until(buf, deadline),
        other => other,
    };
    sent.map_err(|e| {
        SendError::Sent(match e {
            metabridge_shm::Error::Timeout => Error::Timeout(TimedOut::ShmReply { after: timeout }),
            other => other.into(),
        })
    })
}

impl Held<'_> {
    /// Looks for the reply for a few microseconds (most replies come that
    /// fast); `Some` with the decoded result once it is whole.
    fn spin_for_reply<R>(
        &mut self,
        decode: &mut Option<impl FnOnce(&[u8]) -> Result<R>>,
    ) -> Result<Option<Result<R>>> {
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            if let Some(r) = self.take_reply(decode)? {
                return Ok(Some(r));
            }
            polls += 1;
            if polls % 64 == 0 && start.elapsed() >= ASYNC_SPIN {
                return Ok(None);
            }
            std::hint::spin_loop();
        }
    }

    /// The reply, decoded, if it is whole now.
    fn take_reply<R>(
        &mut self,
        decode: &mut Option<impl FnOnce(&[u8]) -> Result<R>>,
    ) -> Result<Option<Result<R>>> {
        let conn = self.conn.as_mut().expect("a held channel");
        let reader = conn.reader.as_ref();
        let rx = conn.channel.halves().1;
        match rx.try_recv()? {
            Some(reply) => {
                let decode = decode.take().expect("decoded once");
                let pooled = reply.refers_to_pool();
                Ok(Some(with_inbound(reader.filter(|_| pooled), || {
                    decode(&reply)
                })))
            }
            None => Ok(None),
        }
    }

    /// The call is done: its channel goes back to the pool.
    fn finish(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.buf.settle(self.pool.config.keep_buffer);
            self.pool.release(conn);
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn);
            self.pool.retire();
        } else if self.away {
            self.pool.retire();
        }
    }
}

/// A call waiting for the reply waiter to hand its channel back. Dropped
/// before that, it cancels the call (see `replies`).
struct ReplyWait<'p> {
    pool: &'p ShmPool,
    slot: Option<replies::SharedSlot>,
}

impl ReplyWait<'_> {
    fn poll(&mut self, waker: &Waker) -> Poll<Result<Box<ShmConn>>> {
        let Some(slot) = &self.slot else {
            return Poll::Ready(Err(Error::PeerGone(PeerGone::ClientClosed)));
        };
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *s, replies::Slot::Cancelled) {
            replies::Slot::Ready(conn) => {
                drop(s);
                self.slot = None;
                Poll::Ready(Ok(conn))
            }
            replies::Slot::Failed(e) => {
                drop(s);
                self.slot = None;
                self.pool.retire();
                Poll::Ready(Err(e))
            }
            replies::Slot::Waiting(mut w) => {
                w.clone_from(waker);
                *s = replies::Slot::Waiting(w);
                Poll::Pending
            }
            replies::Slot::Cancelled => unreachable!("only this call cancels its slot"),
        }
    }
}

impl Drop for ReplyWait<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *s, replies::Slot::Cancelled) {
            // With the waiter: it closes the channel (the service then
            // drops an `async` endpoint's future); the pool stops counting
            // it now, so a new call opens another.
            replies::Slot::Waiting(_) => {
                drop(s);
                self.pool.retire();
                if let Some(replies) = self.pool.replies.get() {
                    replies.ring();
                }
            }
            // Handed back, never taken: its reply is there but unread.
            replies::Slot::Ready(conn) => {
                drop(s);
                drop(conn);
                self.pool.retire();
            }
            replies::Slot::Failed(_) => {
                drop(s);
                self.pool.retire();
            }
            replies::Slot::Cancelled => {}
        }
    }
}

/// The turns of large async requests to be copied into their pools: as
/// many at once as there are CPUs. A copy is bound by memory bandwidth,
/// which that many copiers fill; each one more only adds a runnable
/// thread, and with dozens of them the scheduler makes the runtime's own
/// workers wait tens of milliseconds for a CPU (a timer due now fires
/// late). One set for the process: its clients share the CPUs.
fn large_sends() -> &'static tokio::sync::Semaphore {
    static TURNS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    TURNS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cpus)
    })
}

/// How long an async call spins on its own thread for the reply before
/// it hands the channel to the reply waiter and yields.
const ASYNC_SPIN: Duration = Duration::from_micros(20);

/// Runs `f` off the async runtime's worker threads when the runtime can
/// spare the thread (`block_in_place`, multi-threaded tokio runtimes
/// only), else here.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
