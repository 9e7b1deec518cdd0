//! The reply waiter: one thread per shared-memory pool that waits for the
//! replies of its async calls, so that an async call in flight costs a
//! future, not a thread.
//!
//! An async call sends its request on the runtime's thread, spins there
//! briefly (a quick reply never leaves it), then hands its channel to the
//! waiter ([`ReplyWaiter::wait`]) and yields. The waiter arms every
//! pending channel's reply ring (the service then wakes its futex word on
//! its next send) and sleeps on all of them at once, and on its own bell
//! for new arrivals, with one `futex_waitv` (`metabridge_shm::wait_any`).
//! When a ring has a frame, the waiter hands the channel back through the
//! call's [`Slot`] and wakes its task, which takes the reply and decodes it
//! on its own thread.
//!
//! Invariants:
//! - **A channel is owned by one side at a time**: the call's future, the
//!   waiter's list, or the slot between them; never two.
//! - **A late reply never reaches another call.** A call dropped while its
//!   channel waits here is marked [`Slot::Cancelled`] and rings the bell:
//!   the waiter closes the channel (dropping it), which is also how the
//!   service learns the caller is gone (it drops an `async` endpoint's
//!   future; a sync endpoint's reply finds the channel closed). The pool
//!   stopped counting the channel when the call was dropped, so a new call
//!   opens another instead of waiting for it.
//! - **Every wait has an end**: the call's deadline (a timeout), the peer's
//!   death (checked each liveness interval), or the pool closing.

use super::ShmConn;
use crate::error::{Error, PeerGone, Result, TimedOut};
use metabridge_shm::{wait_any, WakeWord, WAIT_ANY_MAX};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

/// How often the waiter checks that the service of a pending call lives.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(500);

/// Where a waiting call's channel comes back (shared by the call's future
/// and the waiter).
pub(crate) enum Slot {
    /// The channel is with the waiter; wake this task when it has a frame.
    Waiting(Waker),
    /// A frame is there: the channel, back for the call to take.
    Ready(Box<ShmConn>),
    /// The wait failed (timeout, the service died, the pool closed); the
    /// channel was dropped (its state is unknown).
    Failed(Error),
    /// The call was dropped: the waiter closes the channel.
    Cancelled,
}

/// A slot, shared.
pub(crate) type SharedSlot = Arc<Mutex<Slot>>;

/// One channel waiting for its reply.
struct Pending {
    conn: Box<ShmConn>,
    slot: SharedSlot,
    deadline: Instant,
    timeout: Duration,
}

/// The waiter of one pool; see the module docs.
pub(crate) struct ReplyWaiter {
    /// Channels handed over since the thread last looked.
    inbox: Mutex<Vec<Pending>>,
    /// Rung (incremented, then woken) for each arrival and on stop.
    bell: AtomicU64,
    stopped: AtomicBool,
}

impl ReplyWaiter {
    /// Starts the waiter's thread.
    pub(crate) fn start() -> Result<Arc<ReplyWaiter>> {
        let waiter = Arc::new(ReplyWaiter {
            inbox: Mutex::new(Vec::new()),
            bell: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let w = waiter.clone();
        std::thread::Builder::new()
            .name("metabridge-replies".into())
            .spawn(move || w.run())?;
        Ok(waiter)
    }

    /// Hands `conn` (its request sent) over until it has a frame or
    /// `deadline` passes; the answer comes in the returned slot.
    pub(crate) fn wait(
        &self,
        conn: Box<ShmConn>,
        waker: Waker,
        deadline: Instant,
        timeout: Duration,
    ) -> SharedSlot {
        let slot = Arc::new(Mutex::new(Slot::Waiting(waker)));
        let pending = Pending {
            conn,
            slot: slot.clone(),
            deadline,
            timeout,
        };
        lock(&self.inbox).push(pending);
        self.ring();
        slot
    }

    /// Ends the thread: pending calls fail with `ClientClosed`.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.ring();
    }

    /// Wakes the thread to look at its channels (a call was cancelled).
    pub(crate) fn ring(&self) {
        // Release: pairs with the Acquire load in `run`, so that the
        // waiter sees what was pushed before the bell moved.
        self.bell.fetch_add(1, Ordering::Release);
        wake_word(&self.bell);
    }

    fn run(self: Arc<Self>) {
        let mut pending: Vec<Pending> = Vec::new();
        let mut next_check = Instant::now() + LIVENESS_INTERVAL;
        loop {
            // Acquire: pairs with the Release increment in `ring`.
            let rung = self.bell.load(Ordering::Acquire);
            pending.append(&mut lock(&self.inbox));
            if self.stopped.load(Ordering::Acquire) {
                for p in pending.drain(..) {
                    fail(&p.slot, Error::PeerGone(PeerGone::ClientClosed));
                }
                return;
            }
            let now = Instant::now();
            let check = now >= next_check;
            if check {
                next_check = now + LIVENESS_INTERVAL;
            }
            let mut i = 0;
            while i < pending.len() {
                match self.judge(&mut pending[i], now, check) {
                    Verdict::Keep => i += 1,
                    verdict => {
                        let p = pending.swap_remove(i);
                        if let Some(back) = self.apply(p, verdict) {
                            pending.push(back);
                        }
                    }
                }
            }
            let mut nearest = next_check;
            let mut words: Vec<WakeWord<'_>> = Vec::with_capacity(pending.len() + 1);
            words.push(WakeWord::new(&self.bell, rung));
            let mut look_again = false;
            let idle = pending.is_empty();
            for p in pending.iter_mut() {
                nearest = nearest.min(p.deadline);
                match p.conn.channel.halves().1.arm_wakeup() {
                    Ok(Some(word)) if words.len() < WAIT_ANY_MAX => words.push(word),
                    // A frame came (or the ring closed) while arming, or
                    // more channels than one wait holds: look again soon.
                    _ => look_again = true,
                }
            }
            if look_again {
                nearest = nearest.min(Instant::now() + Duration::from_micros(50));
            }
            if idle {
                wait_any(&words, None);
            } else {
                wait_any(&words, Some(nearest));
            }
        }
    }

    /// What becomes of one pending channel now.
    fn judge(&self, p: &mut Pending, now: Instant, check_peer: bool) -> Verdict {
        if matches!(*lock(&p.slot), Slot::Cancelled) {
            return Verdict::Close;
        }
        let rx = p.conn.channel.halves().1;
        match rx.ready() {
            Ok(true) => Verdict::Deliver,
            Ok(false) if now >= p.deadline => {
                Verdict::Fail(Error::Timeout(TimedOut::ShmReply { after: p.timeout }))
            }
            Ok(false) if check_peer => match rx.check_peer() {
                Ok(()) => Verdict::Keep,
                Err(e) => Verdict::Fail(e.into()),
            },
            Ok(false) => Verdict::Keep,
            // Closed with nothing left: the service went away.
            Err(e) => Verdict::Fail(e.into()),
        }
    }

    /// Carries out `verdict` for `p`, which has left the list; returns it
    /// if it must go back (its call was dropped meanwhile, its reply not
    /// yet whole).
    fn apply(&self, p: Pending, verdict: Verdict) -> Option<Pending> {
        match verdict {
            Verdict::Keep => Some(p),
            Verdict::Close => None,
            Verdict::Deliver | Verdict::Fail(_) => {
                let mut slot = lock(&p.slot);
                match std::mem::replace(&mut *slot, Slot::Cancelled) {
                    Slot::Waiting(waker) => {
                        *slot = match verdict {
                            Verdict::Fail(e) => Slot::Failed(e),
                            _ => Slot::Ready(p.conn),
                        };
                        drop(slot);
                        waker.wake();
                        None
                    }
                    // Dropped since `judge`: close the channel.
                    _ => None,
                }
            }
        }
    }
}

/// What becomes of a pending channel (see [`ReplyWaiter::judge`]).
enum Verdict {
    /// Still waiting.
    Keep,
    /// A frame is there: back to the call.
    Deliver,
    /// The wait failed: tell the call, drop the channel.
    Fail(Error),
    /// The call was dropped: close the channel.
    Close,
}

fn fail(slot: &SharedSlot, e: Error) {
    let mut s = lock(slot);
    if let Slot::Waiting(w) = std::mem::replace(&mut *s, Slot::Failed(e)) {
        drop(s);
        w.wake();
    }
}

fn wake_word(word: &AtomicU64) {
    metabridge_shm::wake_all(word);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
