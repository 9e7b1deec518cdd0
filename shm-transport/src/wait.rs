//! How a side waits: spin while it pays, then sleep on a futex.
//!
//! A waiter goes through at most two phases, like a small state machine:
//!
//! 1. **Spin.** Poll the ring with a `pause` between polls. Waking from a
//!    futex sleep takes a system call on each side and a trip through the
//!    scheduler, orders of magnitude more than a poll, so spinning wins
//!    whenever the answer comes soon *and* the peer can run meanwhile. It
//!    cannot when both sides share one CPU: then every spin steals the time
//!    the peer needs to produce the answer. So the
//!    default ([`WaitPolicy::Adaptive`]) spins only while the peer last
//!    published a CPU other than ours; when it shares ours, it yields the
//!    CPU instead (the peer, just handed work, is runnable and answers at
//!    once, with no futex sleep on either side), for the same budget.
//! 2. **Sleep.** Announce the sleep on the ring word (see `ring`'s module
//!    docs for why no wakeup can be lost), then FUTEX_WAIT in slices of the
//!    liveness interval. Between slices, check that the peer process still
//!    lives, so that a peer killed by SIGKILL yields [`Error::PeerGone`]
//!    instead of a hang.
//!
//! A caller may also wait in many short waits one after another (an
//! interruptible wait asks its interrupt check between slices no longer
//! than the liveness interval): each wait alone would end at its own
//! deadline before its first check came due. So each side keeps a
//! [`LivenessClock`] across its waits, and a wait that reaches its
//! deadline checks the peer first if a whole interval has passed since
//! the side last did: a dead peer is [`Error::PeerGone`], not a timeout,
//! whatever the slices. (A wait that gets its data checks nothing more:
//! the clock is read only on the way to a timeout or a sleep.)
//!
//! The clock is read only every [`CLOCK_EVERY`] polls: a poll is a few
//! nanoseconds, a clock read tens.

use crate::error::{Error, Result};
use crate::sync::{spin_hint, AtomicU64};
use std::time::{Duration, Instant};

/// How long a waiting side spins before it sleeps.
///
/// ```
/// use metabridge_shm::WaitPolicy;
/// use std::time::Duration;
/// assert_eq!(WaitPolicy::default(), WaitPolicy::Adaptive(Duration::from_micros(50)));
/// let _lowest_latency = WaitPolicy::BusyPoll; // burns a core while waiting
/// let _lowest_cpu = WaitPolicy::Sleep;        // every wait is a futex sleep
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Never sleep: poll until the data comes (the liveness of the peer is
    /// still checked). The lowest latency, and a core kept busy.
    BusyPoll,
    /// Sleep at once: no CPU used while waiting, every wait pays a wakeup.
    Sleep,
    /// Spin for this long, then sleep, wherever the peer runs.
    Spin(Duration),
    /// Spin for at most this long while the peer runs on another CPU than
    /// ours (as each side publishes in the segment); when it shares ours,
    /// give the CPU to it (`sched_yield`) for at most this long instead of
    /// spinning. Then sleep. The default, with 50 µs.
    Adaptive(Duration),
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy::Adaptive(Duration::from_micros(50))
    }
}

/// Polls between two reads of the clock.
pub(crate) const CLOCK_EVERY: u32 = 64;
/// Yields between two reads of the clock (a yield is a system call).
pub(crate) const YIELD_CLOCK_EVERY: u32 = 4;

/// Gives the CPU to another runnable thread, if any (a model yield under
/// loom).
fn yield_cpu() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// How long a blocking operation may take.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    /// As long as it takes.
    Never,
    /// Until this instant.
    At(Instant),
    /// This long from the first wait (the clock is read only if the
    /// operation has to wait at all).
    After(Duration),
}

impl Limit {
    /// The deadline, if any, for an operation that starts waiting at `start`.
    pub(crate) fn resolve(self, start: Instant) -> Option<Instant> {
        match self {
            Limit::Never => None,
            Limit::At(t) => Some(t),
            Limit::After(d) => start.checked_add(d),
        }
    }
}

/// What one attempt of a blocking operation found.
pub(crate) enum Step<'w, T> {
    /// Done: the value.
    Done(T),
    /// Not yet: sleep on `word` while it still equals `observed`, after
    /// setting `bit` on it (the announcement the waker looks for).
    Pending { word: &'w AtomicU64, observed: u64 },
}

/// The CPUs and liveness of the two sides of a channel, as the wait loop
/// needs them. Implemented by the segment; absent under loom.
pub(crate) trait Peer {
    /// Publishes the CPU we run on, for the peer's adaptive spinning.
    fn publish_cpu(&self, cpu: u32);
    /// The CPU the peer last published, if any.
    fn peer_cpu(&self) -> Option<u32>;
    /// `Err(PeerGone)` if the peer attached and has since died.
    fn check_alive(&self) -> Result<()>;
}

/// The CPU this thread runs on now (`u32::MAX` if unknown).
///
/// ```
/// assert!(metabridge_shm::current_cpu() < 4096);
/// ```
pub fn current_cpu() -> u32 {
    nix::sched::sched_getcpu().map_or(u32::MAX, |cpu| cpu as u32)
}

/// When one side of a channel last checked that its peer lives, kept
/// across that side's waits (see the module docs: a run of waits shorter
/// than the liveness interval still checks once per interval).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LivenessClock(Option<Instant>);

impl LivenessClock {
    /// Whether a check is due at `now`: none was made yet, or the last one
    /// is at least `interval` old.
    fn due(&self, now: Instant, interval: Duration) -> bool {
        match self.0 {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= interval,
        }
    }
}

/// Settings of the wait loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WaitSettings {
    pub(crate) policy: WaitPolicy,
    pub(crate) liveness_interval: Duration,
}

/// Runs `attempt` until it is done, spinning then sleeping per the policy.
///
/// `bit` is the signal bit a pending attempt's word must carry before we
/// sleep on it (WAITING). `clock` is the waiting side's liveness clock.
pub(crate) fn block<'w, T>(
    settings: &WaitSettings,
    peer: &dyn Peer,
    clock: &mut LivenessClock,
    limit: Limit,
    bit: u64,
    mut attempt: impl FnMut() -> Result<Step<'w, T>>,
) -> Result<T> {
    // Fast path: no clock, no CPU lookup when the data is already there.
    if let Step::Done(v) = attempt()? {
        return Ok(v);
    }
    let start = Instant::now();
    // Resolved from the clock read we need anyway.
    let deadline = limit.resolve(start);
    let mut spin_slot: Option<metabridge_spin::SpinLicence> = None;
    // How long to keep trying before sleeping, and how: with `pause`
    // between polls when the peer has a CPU of its own, or by giving our
    // CPU to the peer (sched_yield) when it shares ours. After a send, the
    // peer is runnable; yielding lets it run at once and answer without
    // either side going through a futex sleep and wakeup.
    let (spin_for, yielding) = match settings.policy {
        WaitPolicy::BusyPoll => (Duration::MAX, false),
        WaitPolicy::Sleep => (Duration::ZERO, false),
        WaitPolicy::Spin(d) => (d, false),
        WaitPolicy::Adaptive(d) => {
            let me = current_cpu();
            peer.publish_cpu(me);
            match peer.peer_cpu() {
                Some(p) if p == me => (d, true),
                // Spinning pays only while spinners leave the other CPUs to
                // the threads doing the work: with more waiters than CPUs
                // (32 client threads on 2 vCPUs, say), the extra ones give
                // their CPU away instead of burning it.
                _ => match metabridge_spin::SpinLicence::take() {
                    Some(slot) => {
                        spin_slot = Some(slot);
                        (d, false)
                    }
                    None => (d, true),
                },
            }
        }
    };
    let mut next_check = start + settings.liveness_interval;
    let expired = |now: Instant| deadline.is_some_and(|d| now >= d);

    // Phase 1: spin (or yield).
    let mut polls: u32 = 0;
    let clock_every = if yielding {
        YIELD_CLOCK_EVERY
    } else {
        CLOCK_EVERY
    };
    // The spin budget counts from the last progress we saw: while the peer
    // keeps moving the word we wait on (frames of a large message going
    // through, space being freed), it is working for us, and sleeping now
    // would only add a wakeup to every frame.
    let mut spin_start = start;
    let mut last_seen: Option<u64> = None;
    if !spin_for.is_zero() {
        loop {
            if yielding {
                yield_cpu();
            } else {
                spin_hint();
            }
            let seen = match attempt()? {
                Step::Done(v) => return Ok(v),
                Step::Pending { observed, .. } => observed,
            };
            polls = polls.wrapping_add(1);
            if polls % clock_every != 0 {
                continue;
            }
            let now = Instant::now();
            if last_seen.is_some_and(|l| l != seen) {
                spin_start = now;
            }
            last_seen = Some(seen);
            if expired(now) {
                return timed_out(settings, peer, clock, now, &mut attempt);
            }
            if now >= next_check {
                clock.0 = Some(now);
                if let Err(gone) = peer.check_alive() {
                    return last_attempt(gone, &mut attempt);
                }
                next_check = now + settings.liveness_interval;
            }
            if now.duration_since(spin_start) >= spin_for {
                break;
            }
        }
    }

    drop(spin_slot);

    // Phase 2: sleep, in slices of the liveness interval.
    loop {
        let (word, observed) = match attempt()? {
            Step::Done(v) => return Ok(v),
            Step::Pending { word, observed } => (word, observed),
        };
        if !crate::ring::announce(word, observed, bit) {
            continue; // the word moved: data or a close arrived; look again
        }
        let now = Instant::now();
        if expired(now) {
            return timed_out(settings, peer, clock, now, &mut attempt);
        }
        if now >= next_check {
            clock.0 = Some(now);
            if let Err(gone) = peer.check_alive() {
                return last_attempt(gone, &mut attempt);
            }
            next_check = now + settings.liveness_interval;
        }
        let mut slice = next_check.saturating_duration_since(now);
        if let Some(d) = deadline {
            slice = slice.min(d.saturating_duration_since(now));
        }
        crate::futex::wait(word, observed | bit, Some(slice));
    }
}

/// A wait that reached its deadline at `now`: [`Error::Timeout`], unless a
/// liveness check is due on `clock` and finds the peer gone (then as
/// [`last_attempt`]). A caller waiting in slices shorter than the liveness
/// interval gets its peer checked here, once per interval.
fn timed_out<'w, T>(
    settings: &WaitSettings,
    peer: &dyn Peer,
    clock: &mut LivenessClock,
    now: Instant,
    attempt: &mut impl FnMut() -> Result<Step<'w, T>>,
) -> Result<T> {
    if clock.due(now, settings.liveness_interval) {
        clock.0 = Some(now);
        if let Err(gone) = peer.check_alive() {
            return last_attempt(gone, attempt);
        }
    }
    Err(Error::Timeout)
}

/// The peer is gone, but what it published before it died (frames, room,
/// a clean close) may have landed after our last look: one more attempt, so
/// that those win over `gone`.
fn last_attempt<'w, T>(
    gone: Error,
    attempt: &mut impl FnMut() -> Result<Step<'w, T>>,
) -> Result<T> {
    match attempt()? {
        Step::Done(v) => Ok(v),
        Step::Pending { .. } => Err(gone),
    }
}
