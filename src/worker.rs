//! Service workers: the threads that answer shared-memory channels, and
//! the supervisor that keeps a slow call from stalling anyone else.
//!
//! A worker serves many channels: it polls each for a request, answers,
//! and when a pass finds nothing for its spin budget it arms every channel
//! with the doorbell bit and sleeps on its doorbell. An idle service thus
//! uses no CPU, and a busy one answers without a syscall.
//!
//! **Async endpoints** do not hold the worker: their future is spawned on
//! the service's tokio runtime, the channel is marked as waiting, and the
//! worker goes on serving the others. When the future completes, its reply
//! lands in the channel's slot and the channel's doorbell rings; whichever
//! worker owns the channel then writes the reply. N slow async calls take
//! about the time of one.
//!
//! **Slow sync endpoints** run on the worker's thread (a thread handoff per
//! call would cost a thread wakeup, more than a small call itself). So
//! that one does not stall the other channels of its worker, a worker
//! keeps its channels in a [`Core`] that the supervisor may take while the
//! worker is inside a call, as Go's
//! runtime takes the P of a thread blocked in a system call: before a call
//! the worker moves the channel it serves out of the core and marks the
//! core `IN_CALL`; after it, it marks it `RUNNING` again with a CAS. A
//! supervisor thread that sees a core stay `IN_CALL` through the same call
//! for [`STUCK_AFTER`] — blocked, or using the CPU all that time; a worker
//! merely waiting for a CPU under load is left alone — CASes it to `STEALING`, moves the remaining channels
//! to a new worker thread that sleeps on the same doorbell, and marks the
//! core `STOLEN`. The stuck worker, once its call returns, finds its core
//! emptied and carries on with the one channel it kept. Extra workers are
//! bounded by `ServiceConfig::max_extra_workers`; past the bound, channels
//! wait for their worker as before. The cost on the call path is one store
//! and one uncontended CAS on a line the worker owns.

use crate::dispatch::{finish_async, outgoing_reply, CallCache, Dispatch, Outcome};
use crate::envelope;
use crate::error::Result;
use crate::out_of_line::{with_inbound, with_outbound};
use metabridge_shm::{Channel, Doorbell, PoolReader, PoolWriter, ReusedBuffer};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a worker polls its channels before sleeping.
const WORKER_SPIN: Duration = Duration::from_micros(50);
/// A sleeping worker wakes this often to check stop requests and peers.
const WORKER_TICK: Duration = Duration::from_millis(100);
/// How long a reply may wait for its client to read it (plus
/// [`REPLY_PATIENCE_PER_16_MIB`]): it waits in the channel, costing no
/// worker time, while the worker serves its other channels. Past it the
/// channel is closed.
const REPLY_PATIENCE: Duration = Duration::from_secs(60);
const REPLY_PATIENCE_PER_16_MIB: Duration = Duration::from_secs(1);
/// A worker keeps its request and reply buffers up to this size between
/// calls (within the process's `RETAINED_CAP`), so that back-to-back large
/// calls do not fault on fresh pages every time; a larger one is freed
/// after its call, and all are given back after a tick with no call.
const BUFFER_BUDGET: usize = metabridge_shm::CHANNEL_BUDGET;
/// A call running this long (at least; up to twice) makes the supervisor
/// move the other channels of its worker to a new worker.
pub(crate) const STUCK_AFTER: Duration = Duration::from_millis(20);

/// Core states.
const RUNNING: u8 = 0;
const IN_CALL: u8 = 1;
const STEALING: u8 = 2;
const STOLEN: u8 = 3;

/// The service's count of open channels, against `ServiceConfig::max_channels`.
pub(crate) struct ChannelCount {
    pub(crate) open: AtomicUsize,
    pub(crate) max: usize,
}

/// A channel holding one unit of [`ChannelCount`], given back on drop.
pub(crate) struct Counted {
    pub(crate) channel: Channel,
    pub(crate) count: Arc<ChannelCount>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let before = self.count.open.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(
            target: "metabridge::service",
            "client disconnected: shared-memory channel closed ({} open)",
            before.saturating_sub(1)
        );
    }
}

/// New channels handed from the acceptor to a worker.
pub(crate) struct Inbox {
    pub(crate) pending: AtomicBool,
    pub(crate) channels: Mutex<Vec<Counted>>,
    pub(crate) bell: Doorbell,
}

/// The reply of an async call, filled in by the task that ran it.
type ReplySlot = Arc<Mutex<Option<Vec<u8>>>>;

/// An async call in progress on a channel.
struct Awaiting {
    /// Its reply comes here.
    slot: ReplySlot,
    /// The endpoint's task: aborted (its future dropped) when the channel
    /// goes, so a client that gave up or died cancels its call.
    task: tokio::task::AbortHandle,
}

/// A reply the client's ring had no room for yet: the rest goes out as
/// the client reads (its reads ring our doorbell), while the worker serves
/// its other channels.
struct Outgoing {
    reply: ReusedBuffer,
    /// Bytes of `reply` already in the ring.
    sent: usize,
    /// Past this the channel is closed (see [`REPLY_PATIENCE`]).
    deadline: Instant,
}

/// A channel served by a worker, with what the dispatcher remembers of its
/// last call.
pub(crate) struct Conn {
    counted: Counted,
    cache: CallCache,
    /// The doorbell its client rings (and its async replies ring).
    bell: Doorbell,
    /// An async call in progress.
    awaiting: Option<Awaiting>,
    /// A reply still being sent.
    outgoing: Option<Outgoing>,
    /// Where this channel's replies place large byte strings, and where
    /// its requests' are read from (see `out_of_line`).
    writer: Option<PoolWriter>,
    reader: Option<PoolReader>,
    /// The last reply referred to our pool and the client has not sent a
    /// request since, so it may still be reading it: the pool's pages are
    /// not given back meanwhile.
    pool_lent: bool,
}

impl Conn {
    /// Waits for something other than a new request (an async reply, or
    /// room for the rest of one): its request ring is not read meanwhile.
    fn busy(&self) -> bool {
        self.awaiting.is_some() || self.outgoing.is_some()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(call) = &self.awaiting {
            call.task.abort();
        }
    }
}

/// A worker's channels (boxed: one moves in and out of the list around
/// every call, a pointer-sized move), which the supervisor may take while
/// the worker is inside a call (see the module docs).
#[allow(clippy::vec_box)]
type Conns = Vec<Box<Conn>>;

/// A worker's channels and the state that says who may touch them.
pub(crate) struct Core {
    /// Where its new channels arrive (shared with any worker that rescues
    /// this one, so that new channels do not wait behind a stuck call).
    inbox: Arc<Inbox>,
    state: AtomicU8,
    /// The worker's thread id, to read its state and CPU time in /proc.
    tid: std::sync::atomic::AtomicI32,
    /// Sync calls started: the supervisor tells one long call from many.
    calls: AtomicU64,
    #[allow(clippy::vec_box)]
    conns: UnsafeCell<Conns>,
}

// SAFETY: `conns` is touched only by the party the state protocol names:
// the worker while the state is RUNNING (or after it saw STOLEN and set
// RUNNING again), the supervisor between its successful CAS to STEALING and
// its Release store of STOLEN. The Acquire/Release pairs on `state` order
// their accesses.
// Exempt from the crate's `deny(unsafe_code)`, as are the three accesses
// to `conns` below: the worker's channels sit in an `UnsafeCell` guarded by
// the state protocol, so that a call takes no lock.
#[allow(unsafe_code)]
unsafe impl Sync for Core {}

impl Core {
    #[allow(clippy::vec_box)]
    fn new(inbox: Arc<Inbox>, conns: Conns) -> Arc<Core> {
        Arc::new(Core {
            inbox,
            state: AtomicU8::new(RUNNING),
            tid: std::sync::atomic::AtomicI32::new(0),
            calls: AtomicU64::new(0),
            conns: UnsafeCell::new(conns),
        })
    }
}

/// Everything the workers of one service share.
pub(crate) struct Pool {
    pub(crate) dispatch: Arc<dyn Dispatch>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) stop: Arc<AtomicBool>,
    /// Every worker's core, for the supervisor; and their threads.
    workers: Mutex<Vec<(Arc<Core>, std::thread::JoinHandle<()>)>>,
    extra: AtomicUsize,
    max_extra: usize,
    /// Workers started in place of dead ones (for their thread names).
    replaced: AtomicUsize,
    /// `ServiceConfig::max_message`: a larger result becomes an error reply.
    max_message: usize,
    /// The live counters (they count error replies here).
    counters: Option<Arc<crate::stats::Counters>>,
}

impl Pool {
    pub(crate) fn new(
        dispatch: Arc<dyn Dispatch>,
        runtime: tokio::runtime::Handle,
        max_extra: usize,
        max_message: usize,
        counters: Option<Arc<crate::stats::Counters>>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            dispatch,
            runtime,
            stop: Arc::new(AtomicBool::new(false)),
            workers: Mutex::new(Vec::new()),
            extra: AtomicUsize::new(0),
            max_extra,
            replaced: AtomicUsize::new(0),
            max_message,
            counters,
        })
    }

    /// Starts a worker on `inbox` with `conns` already in its core.
    pub(crate) fn start(
        self: &Arc<Self>,
        inbox: Arc<Inbox>,
        conns: Conns,
        label: &str,
    ) -> std::io::Result<()> {
        let core = Core::new(inbox.clone(), conns);
        let worker = Worker {
            inbox,
            pool: self.clone(),
            core: core.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("metabridge-worker-{label}"))
            .spawn(move || worker.run())?;
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((core, thread));
        Ok(())
    }

    /// Asks every worker to finish what is queued and stop.
    pub(crate) fn request_stop(&self, inboxes: &[Arc<Inbox>]) {
        self.stop.store(true, Ordering::SeqCst);
        for inbox in inboxes {
            inbox.bell.ring();
        }
    }

    /// Waits for the workers until `deadline`; the indices of those still
    /// running a call then (abandoned).
    pub(crate) fn join_until(&self, deadline: Instant) -> Vec<usize> {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        let mut stuck = Vec::new();
        for (k, (_, t)) in workers.into_iter().enumerate() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                stuck.push(k);
            }
        }
        stuck
    }

    /// The supervisor: every [`STUCK_AFTER`], moves the channels of a
    /// worker stuck in one call to a new worker. Runs until stop.
    pub(crate) fn supervise(self: Arc<Self>) {
        // Per core: the call count and the worker's CPU time when it was
        // first seen in that call.
        let mut seen: Vec<Option<(u64, u64)>> = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            // (A futex wait, not nanosleep: tests that count the threads
            // sleeping in endpoints by their wait channel do not see us.)
            std::thread::park_timeout(STUCK_AFTER);
            self.replace_dead_workers();
            let cores: Vec<Arc<Core>> = self
                .workers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(c, _)| c.clone())
                .collect();
            seen.resize(cores.len(), None);
            for (k, core) in cores.iter().enumerate() {
                let calls = core.calls.load(Ordering::Relaxed);
                if core.state.load(Ordering::Relaxed) != IN_CALL {
                    seen[k] = None;
                    continue;
                }
                let tid = core.tid.load(Ordering::Relaxed);
                let now = thread_state(tid);
                match seen[k] {
                    Some((c, cpu_then)) if c == calls => {
                        // The same call as a tick ago. A thread merely
                        // waiting for a CPU (runnable, little CPU time
                        // used) is not stuck: under load that is normal,
                        // and moving its channels would only add threads.
                        let stuck = match now {
                            Some((state, cpu)) => {
                                state != b'R'
                                    || cpu.saturating_sub(cpu_then) >= STUCK_AFTER.as_nanos() as u64
                            }
                            None => false,
                        };
                        if stuck {
                            seen[k] = None;
                            self.rescue(core);
                        }
                    }
                    _ => seen[k] = Some((calls, now.map_or(0, |(_, cpu)| cpu))),
                }
            }
        }
    }

    /// Starts a new worker for each one whose thread ended without a stop
    /// request (a panic outside any endpoint: user code runs under
    /// `catch_unwind`, so this is a last resort), with the channels it
    /// left. A service left with no worker at all stops, rather than stay
    /// registered and never answer.
    // Exempt from the crate's `deny(unsafe_code)`: the worker's `UnsafeCell`
    // core is a hot-path piece (no lock per call); see the SAFETY comments.
    #[allow(unsafe_code)]
    fn replace_dead_workers(self: &Arc<Self>) {
        let dead: Vec<(Arc<Core>, std::thread::JoinHandle<()>)> = {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            let (dead, live) = std::mem::take(&mut *workers)
                .into_iter()
                .partition(|(_, t)| t.is_finished());
            *workers = live;
            dead
        };
        if self.stop.load(Ordering::SeqCst) {
            return; // they finished because they were asked to
        }
        for (core, thread) in dead {
            let why = match thread.join() {
                Err(p) => crate::dispatch::panic_message(&*p),
                Ok(()) => "it returned".into(),
            };
            // SAFETY: the thread that owned `conns` has ended, and the
            // supervisor (this thread) is the only other party that touches
            // them, between its own CAS to STEALING and store of STOLEN,
            // which `rescue` completes before returning.
            let conns = std::mem::take(unsafe { &mut *core.conns.get() });
            let n = self.replaced.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                target: "metabridge::service",
                "a worker died ({why}); a new one takes its {} channel(s)",
                conns.len()
            );
            if let Err(e) = self.start(core.inbox.clone(), conns, &format!("replacement-{n}")) {
                tracing::error!(target: "metabridge::service", "cannot replace a dead worker: {e}");
                if self
                    .workers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                {
                    tracing::error!(target: "metabridge::service", "no worker left: stopping");
                    crate::lifecycle::request_stop();
                }
            }
        }
    }

    /// Moves the channels of a stuck worker's core to a new worker.
    // Exempt from the crate's `deny(unsafe_code)`: the worker's `UnsafeCell`
    // core is a hot-path piece (no lock per call); see the SAFETY comments.
    #[allow(unsafe_code)]
    fn rescue(self: &Arc<Self>, core: &Core) {
        if self.extra.load(Ordering::Relaxed) >= self.max_extra {
            return;
        }
        // Acquire: pairs with the worker's Release store of IN_CALL, after
        // which it no longer touches `conns`.
        if core
            .state
            .compare_exchange(IN_CALL, STEALING, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return; // the call just returned
        }
        // SAFETY: STEALING is ours (the CAS above): the worker waits for
        // STOLEN before it touches `conns` again.
        let conns = std::mem::take(unsafe { &mut *core.conns.get() });
        // The new worker takes the stuck one's inbox and doorbell too: the
        // clients of these channels ring that bell, and new channels sent
        // to that worker must not wait behind the call.
        let n = self.extra.fetch_add(1, Ordering::Relaxed);
        let moved = conns.len();
        match self.start(core.inbox.clone(), conns, &format!("extra-{n}")) {
            Ok(()) => tracing::debug!(
                "a call held a worker; moved its {moved} other channel(s) to a new worker"
            ),
            Err(e) => tracing::warn!("cannot start an extra worker: {e}"),
        }
        // Release: the worker that sees STOLEN sees `conns` emptied.
        core.state.store(STOLEN, Ordering::Release);
    }
}

/// A thread of this process: its state letter (R running or runnable, S
/// sleeping, D in the kernel, ...) and the CPU time it has used, in ns.
fn thread_state(tid: i32) -> Option<(u8, u64)> {
    if tid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = *stat.get(stat.rfind(')')? + 2..)?.as_bytes().first()?;
    let sched = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let cpu = sched.split_whitespace().next()?.parse().ok()?;
    Some((state, cpu))
}

/// One worker thread.
struct Worker {
    inbox: Arc<Inbox>,
    pool: Arc<Pool>,
    core: Arc<Core>,
}

impl Worker {
    fn run(self) {
        self.core
            .tid
            .store(crate::platform::thread_id(), Ordering::Relaxed);
        let mut req = ReusedBuffer::new();
        let mut out = ReusedBuffer::new();
        // Whether a call was served since the last tick's check.
        let mut busy_since_check = true;
        let mut idle_since: Option<Instant> = None;
        let mut polls = 0u32;
        let mut last_check = Instant::now();
        let mut peer_elsewhere = false;
        let mut peer_here = false;
        loop {
            let seen = self.inbox.bell.count();
            if self.inbox.pending.load(Ordering::Relaxed)
                && self.inbox.pending.swap(false, Ordering::Acquire)
            {
                let mut list = self
                    .inbox
                    .channels
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let bell = self.inbox.bell.clone();
                self.conns().extend(list.drain(..).map(|counted| {
                    Box::new(Conn {
                        writer: counted.channel.pool_writer(),
                        reader: counted.channel.pool_reader(),
                        counted,
                        cache: CallCache::default(),
                        bell: bell.clone(),
                        awaiting: None,
                        outgoing: None,
                        pool_lent: false,
                    })
                }));
            }
            let mut worked = false;
            let mut awaiting = false;
            let mut i = 0;
            while i < self.conns().len() {
                match self.serve_at(i, &mut req, &mut out) {
                    Ok(Served::Nothing) => i += 1,
                    Ok(Served::Awaiting) => {
                        awaiting = true;
                        i += 1
                    }
                    Ok(Served::Answered) => {
                        worked = true;
                        i += 1
                    }
                    Ok(Served::Stolen) => {
                        worked = true;
                        break; // the others went to another worker
                    }
                    Err(_) => {
                        self.conns().swap_remove(i);
                    }
                }
            }
            if worked {
                idle_since = None;
                busy_since_check = true;
                continue;
            }
            if self.pool.stop.load(Ordering::SeqCst) && !awaiting {
                return; // the pass above answered everything already queued
            }
            // Spin for a while, but only while a client runs on another
            // CPU: spinning on the CPU it needs only delays it. (Where we
            // and the clients run is looked up once per idle period.)
            let now_idle = *idle_since.get_or_insert_with(|| {
                let me = metabridge_shm::current_cpu();
                let conns = self.conns();
                peer_elsewhere = conns
                    .iter()
                    .any(|c| c.counted.channel.peer_cpu().is_some_and(|p| p != me));
                peer_here = conns
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
            // Arm every channel, then sleep on the doorbell. (A channel
            // with a reply still going out was armed for room when its
            // send stopped; one awaiting an async reply is armed too, so
            // that its client closing it wakes us to cancel the call.)
            let mut armed = true;
            for c in self.conns().iter_mut() {
                if c.outgoing.is_some() {
                    continue;
                }
                match c.counted.channel.halves().1.arm_doorbell() {
                    Ok(true) => {}
                    // A frame sent while its call runs waits for the call.
                    Ok(false) if c.awaiting.is_some() => {}
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
                if !std::mem::take(&mut busy_since_check) {
                    // A tick without a call: large buffers go back.
                    req.give_back();
                    out.give_back();
                    for c in self.conns().iter_mut() {
                        let (tx, rx) = c.counted.channel.halves();
                        rx.give_back_buffer();
                        if !c.pool_lent {
                            tx.give_back_pool();
                        }
                    }
                }
                // A channel whose client died is reclaimed whatever its
                // call is doing (an async one is cancelled on drop), and
                // one whose reply waited past its patience is closed.
                self.conns().retain(|c| {
                    c.counted.channel.check_peer().is_ok()
                        && !matches!(&c.outgoing, Some(o) if last_check >= o.deadline)
                });
            }
        }
    }

    /// This worker's channels.
    // Exempt from the crate's `deny(unsafe_code)`: the worker's `UnsafeCell`
    // core is a hot-path piece (no lock per call); see the SAFETY comments.
    #[allow(unsafe_code, clippy::mut_from_ref, clippy::vec_box)]
    fn conns(&self) -> &mut Conns {
        // SAFETY: the core is RUNNING whenever the worker is outside
        // `serve_at`'s call window (it restores RUNNING before returning),
        // so the worker owns `conns`; each borrow ends before the next.
        unsafe { &mut *self.core.conns.get() }
    }

    /// Serves channel `i`: its async reply if it came, else one request
    /// (received into `req`, answered from `out`).
    fn serve_at(&self, i: usize, req: &mut ReusedBuffer, out: &mut ReusedBuffer) -> Result<Served> {
        let conn = &mut self.conns()[i];
        if conn.busy() {
            return self.serve_busy(conn, out);
        }
        let outcome = match conn.counted.channel.halves().1.try_recv_into(req) {
            Ok(true) => {
                // The call window: this channel leaves the core, which the
                // supervisor may then take (see the module docs).
                let mut mine = self.conns().swap_remove(i);
                // Only this thread writes the count: no read-modify-write.
                let calls = self.core.calls.load(Ordering::Relaxed);
                self.core.calls.store(calls + 1, Ordering::Relaxed);
                // Release: pairs with the supervisor's Acquire CAS; our
                // last access to `conns` (swap_remove) happens before.
                self.core.state.store(IN_CALL, Ordering::Release);
                // The request's large byte strings are read from the
                // client's pool, the reply's placed in ours.
                mine.pool_lent = false;
                let refers = mine.counted.channel.refers_to_pool();
                let reader = mine.reader.as_ref().filter(|_| refers);
                let (outcome, placed) = with_outbound(&mut mine.writer, || {
                    with_inbound(reader, || {
                        self.pool.dispatch.begin_cached(req, out, &mut mine.cache)
                    })
                });
                if placed {
                    mine.counted.channel.halves().0.refer_to_pool();
                    mine.pool_lent = true;
                }
                let stolen = self.leave_call();
                let conns = self.conns();
                conns.push(mine);
                let last = conns.len() - 1;
                let at = i.min(last);
                conns.swap(at, last);
                req.settle(BUFFER_BUDGET);
                let served = self.finish(at, outcome, out);
                return match (served, stolen) {
                    (Err(e), _) => Err(e),
                    (Ok(_), true) => Ok(Served::Stolen),
                    (Ok(s), false) => Ok(s),
                };
            }
            Ok(false) => return Ok(Served::Nothing),
            Err(metabridge_shm::Error::MessageTooLarge { len, max }) => {
                out.clear();
                envelope::encode_error(
                    out,
                    "ProtocolError",
                    &crate::Error::MessageTooLarge { len, max }.to_string(),
                );
                Outcome::Done
            }
            Err(e) => return Err(e.into()),
        };
        self.finish(i, outcome, out)
    }

    /// A channel waiting for its async reply or for room to send one:
    /// moves it on if it can, never waiting.
    fn serve_busy(&self, conn: &mut Conn, out: &mut ReusedBuffer) -> Result<Served> {
        if let Some(call) = &conn.awaiting {
            let reply = call.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Some(mut reply) = reply else {
                if conn.counted.channel.halves().1.peer_closed() {
                    // The client gave up on the call (or closed): the
                    // channel goes, and the call is cancelled with it.
                    return Err(metabridge_shm::Error::Closed.into());
                }
                return Ok(Served::Awaiting);
            };
            conn.awaiting = None;
            outgoing_reply(
                &mut reply,
                self.pool.max_message,
                self.pool.counters.as_deref(),
            );
            return send_reply(conn, &mut ReusedBuffer::from(reply));
        }
        let Some(o) = &mut conn.outgoing else {
            return Ok(Served::Nothing);
        };
        let (tx, _) = conn.counted.channel.halves();
        let before = o.sent;
        if tx.try_send_from(&o.reply, &mut o.sent)? {
            if let Some(done) = conn.outgoing.take() {
                // The worker keeps the larger of the two buffers.
                if done.reply.capacity() > out.capacity() {
                    *out = done.reply;
                    out.clear();
                    out.settle(BUFFER_BUDGET);
                }
            }
            conn.counted
                .channel
                .publish_cpu(metabridge_shm::current_cpu());
            return Ok(Served::Answered);
        }
        // Progress counts as work: the worker keeps polling (rather than
        // sleeping until the doorbell) while the client drains the ring.
        Ok(if o.sent > before {
            Served::Answered
        } else {
            Served::Awaiting
        })
    }

    /// Ends the call window; true if the supervisor took the other
    /// channels meanwhile.
    fn leave_call(&self) -> bool {
        // Acquire on failure: pairs with the supervisor's Release of
        // STOLEN (via the wait below), so we see `conns` emptied.
        match self.core.state.compare_exchange(
            IN_CALL,
            RUNNING,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => false,
            Err(_) => {
                while self.core.state.load(Ordering::Acquire) != STOLEN {
                    std::thread::yield_now();
                }
                self.core.state.store(RUNNING, Ordering::Relaxed);
                true
            }
        }
    }

    /// Writes the reply of a finished sync call, or starts an async one.
    fn finish(&self, i: usize, outcome: Outcome, out: &mut ReusedBuffer) -> Result<Served> {
        let conn = &mut self.conns()[i];
        match outcome {
            Outcome::Done => {
                outgoing_reply(out, self.pool.max_message, self.pool.counters.as_deref());
                let served = send_reply(conn, out);
                out.settle(BUFFER_BUDGET);
                served
            }
            Outcome::Pending(future) => {
                // The future runs on the runtime; this worker goes on.
                let slot: ReplySlot = Arc::new(Mutex::new(None));
                let (filled, bell) = (slot.clone(), conn.bell.clone());
                let rt = &self.pool.runtime;
                let task = rt.spawn(future);
                let abort = task.abort_handle();
                rt.spawn(async move {
                    let joined = task.await;
                    let mut reply = Vec::with_capacity(256);
                    finish_async(joined, &mut reply);
                    *filled.lock().unwrap_or_else(|p| p.into_inner()) = Some(reply);
                    bell.ring();
                });
                conn.awaiting = Some(Awaiting { slot, task: abort });
                Ok(Served::Awaiting)
            }
        }
    }
}

/// What serving one channel did.
enum Served {
    Nothing,
    Answered,
    /// Waiting for its async reply, or for room to send the rest of one.
    Awaiting,
    /// Answered, and meanwhile the other channels were moved away.
    Stolen,
}

/// Sends a reply as far as the client's ring has room, never waiting: a
/// client that reads slowly, or not at all (stopped), must not hold this
/// worker and every other channel it serves. The rest stays with the
/// channel (taken from `reply`, which is left empty) and goes out as the
/// client frees room; it waits at most [`REPLY_PATIENCE`] (+1 s per 16 MiB).
fn send_reply(conn: &mut Conn, reply: &mut ReusedBuffer) -> Result<Served> {
    let mut sent = 0;
    if conn
        .counted
        .channel
        .halves()
        .0
        .try_send_from(reply, &mut sent)?
    {
        // Tell the client where we run, for its adaptive wait.
        conn.counted
            .channel
            .publish_cpu(metabridge_shm::current_cpu());
        return Ok(Served::Answered);
    }
    let patience = REPLY_PATIENCE + REPLY_PATIENCE_PER_16_MIB * (reply.len() >> 24) as u32;
    conn.outgoing = Some(Outgoing {
        reply: std::mem::take(reply),
        sent,
        deadline: Instant::now() + patience,
    });
    Ok(Served::Answered) // the call was served; its reply is on its way
}

#[cfg(test)]
mod tests;
