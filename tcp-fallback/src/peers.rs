//! Per-peer accounting of a server's connections, and choosing which one
//! closes when a limit is reached.
//!
//! Connections are of two classes with quotas of their own:
//!
//! * *Unauthenticated* (pending): accepted by a server whose handler
//!   requires authentication, and no request on them has authenticated
//!   yet. Anyone who can reach the port can open them, so they can only
//!   ever displace each other: when a new one would exceed the quota of its
//!   address (or the server's), the oldest unauthenticated connection
//!   closes, preferring one whose task has started (has had its chance to
//!   read a request) over one just accepted. They also have a deadline to
//!   authenticate (enforced by the connection itself).
//! * *Authenticated*: every connection of a server that requires no
//!   authentication (from its accept), and the others once authenticated.
//!   When a new one would exceed a quota, the connection closed to make
//!   room is one whose request frame has been half-sent for longer than
//!   the stall threshold (oldest first), else the one idle the longest
//!   (of the same peer for the per-peer limits, of anyone for the
//!   server-wide one). Only when neither exists is the new one refused.
//!
//! An authenticated connection is never closed to make room for an
//! unauthenticated one: the two quotas are separate, and nothing but a
//! pending connection is ever shed for a pending one.
//!
//! All the bookkeeping is under one mutex, taken twice per request (idle,
//! then busy again) for a few hundred nanoseconds at most; the rest (a
//! frame that did not arrive at once, authenticating, accepting) is off the
//! path of a small request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// What a connection's task is told through its [`Member`].
#[derive(Default)]
struct Signal {
    /// Set, under the [`Peers`] mutex, when the connection was shed: its
    /// counts were already given back, and it must close.
    shed: AtomicBool,
    /// Wakes the connection's idle (or frame) wait when it is shed (a
    /// notification sent before the wait starts is kept, so none is lost).
    wake: Notify,
    /// Sent only when an unauthenticated connection is shed: its task is
    /// then stopped wherever it is (see [`Member::guard`]).
    cut: Notify,
    /// Set when the connection authenticated (see [`Member::guard`]).
    authenticated: AtomicBool,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its peer already has this many connections of its class open, none
    /// of which may make room.
    PerPeer(usize),
    /// The server has this many connections of its class open, none of
    /// which may make room.
    Server(usize),
}

/// The quotas of one server (see [`crate::ServerConfig`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Authenticated connections, server-wide.
    pub(crate) max_total: usize,
    /// Authenticated connections per address.
    pub(crate) max_per_ip: usize,
    /// Idle authenticated connections per address.
    pub(crate) max_idle_per_ip: usize,
    /// Unauthenticated connections, server-wide.
    pub(crate) max_pending_total: usize,
    /// Unauthenticated connections per address.
    pub(crate) max_pending_per_ip: usize,
    /// A frame half-sent for longer than this makes its connection the
    /// first to close when room is needed.
    pub(crate) stalled_after: Duration,
}

/// A key of [`Inner::reading`]: when the connection began waiting for the
/// rest of its frame, and a sequence number to keep keys distinct.
type ReadingKey = (Instant, u64);

#[derive(Default)]
struct PerIp {
    /// Authenticated connections.
    open: usize,
    /// Sequence numbers (keys of [`Inner::idle`]) of this peer's idle
    /// connections, oldest first.
    idle: BTreeSet<u64>,
    /// Keys of [`Inner::reading`] of this peer's connections.
    reading: BTreeSet<ReadingKey>,
    /// Keys of [`Inner::pending`] of this peer's unauthenticated
    /// connections, oldest first.
    pending: BTreeSet<u64>,
}

impl PerIp {
    fn is_empty(&self) -> bool {
        self.open == 0 && self.pending.is_empty()
    }
}

struct Entry {
    ip: IpAddr,
    signal: Arc<Signal>,
}

struct PendingEntry {
    ip: IpAddr,
    signal: Arc<Signal>,
    /// Its task has begun serving it (see [`Member::start`]).
    started: bool,
}

#[derive(Default)]
struct Inner {
    by_ip: HashMap<IpAddr, PerIp>,
    /// Every idle authenticated connection by the sequence number it got
    /// when it became idle: the first entry is the one idle the longest.
    idle: BTreeMap<u64, Entry>,
    /// Authenticated connections whose current request frame did not
    /// arrive at once, by when they began waiting for the rest.
    reading: BTreeMap<ReadingKey, Entry>,
    /// Unauthenticated connections by the sequence number of their accept.
    pending: BTreeMap<u64, PendingEntry>,
    /// Authenticated connections open.
    open: usize,
    next_seq: u64,
}

impl Inner {
    fn seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Gives back one authenticated connection of `ip` (and the peer's
    /// entry, once it has nothing left).
    fn release_open(&mut self, ip: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(per) = self.by_ip.get_mut(&ip) {
            per.open = per.open.saturating_sub(1);
            if per.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }

    fn release_pending(&mut self, seq: u64) -> Option<PendingEntry> {
        let entry = self.pending.remove(&seq)?;
        if let Some(per) = self.by_ip.get_mut(&entry.ip) {
            per.pending.remove(&seq);
            if per.is_empty() {
                self.by_ip.remove(&entry.ip);
            }
        }
        Some(entry)
    }

    /// Sheds the idle connection `seq`: gives back its counts and tells it
    /// to close.
    fn shed_idle(&mut self, seq: u64) -> bool {
        let Some(entry) = self.idle.remove(&seq) else {
            return false;
        };
        if let Some(per) = self.by_ip.get_mut(&entry.ip) {
            per.idle.remove(&seq);
        }
        self.release_open(entry.ip);
        tell(&entry.signal, false);
        true
    }

    /// Sheds the connection whose frame waits under `key`.
    fn shed_reading(&mut self, key: ReadingKey) -> bool {
        let Some(entry) = self.reading.remove(&key) else {
            return false;
        };
        if let Some(per) = self.by_ip.get_mut(&entry.ip) {
            per.reading.remove(&key);
        }
        self.release_open(entry.ip);
        tell(&entry.signal, false);
        true
    }

    fn shed_pending(&mut self, seq: u64) -> bool {
        match self.release_pending(seq) {
            Some(entry) => {
                tell(&entry.signal, true);
                true
            }
            None => false,
        }
    }

    /// Makes room for one more authenticated connection of `ip` if a
    /// quota is reached: the peer's (or the server's) connection whose
    /// frame has been half-sent the longest, if longer than the threshold,
    /// else its oldest idle one.
    fn room_for_authenticated(
        &mut self,
        limits: &Limits,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), Refused> {
        let stalled = |key: &ReadingKey| key.0 + limits.stalled_after <= now;
        let open = self.by_ip.get(&ip).map_or(0, |per| per.open);
        if open >= limits.max_per_ip {
            let per = self.by_ip.get(&ip);
            let reading = per.and_then(|per| per.reading.first().copied());
            let idle = per.and_then(|per| per.idle.first().copied());
            let shed = match (reading.filter(stalled), idle) {
                (Some(key), _) => self.shed_reading(key),
                (None, Some(seq)) => self.shed_idle(seq),
                (None, None) => false,
            };
            if !shed {
                return Err(Refused::PerPeer(limits.max_per_ip));
            }
        }
        if self.open >= limits.max_total {
            let reading = self.reading.first_key_value().map(|(&key, _)| key);
            let idle = self.idle.first_key_value().map(|(&seq, _)| seq);
            let shed = match (reading.filter(stalled), idle) {
                (Some(key), _) => self.shed_reading(key),
                (None, Some(seq)) => self.shed_idle(seq),
                (None, None) => false,
            };
            if !shed {
                return Err(Refused::Server(limits.max_total));
            }
        }
        Ok(())
    }

    /// The oldest of `seqs` whose task has started, else the oldest.
    fn oldest_pending(&self, mut seqs: impl Iterator<Item = u64>) -> Option<u64> {
        let first = seqs.next()?;
        let started = |seq: &u64| self.pending.get(seq).is_some_and(|e| e.started);
        if started(&first) {
            return Some(first);
        }
        Some(seqs.find(started).unwrap_or(first))
    }

    /// Makes room for one more unauthenticated connection of `ip` if a
    /// quota is reached, by shedding another unauthenticated one.
    fn room_for_pending(&mut self, limits: &Limits, ip: IpAddr) -> Result<(), Refused> {
        let of_ip = self.by_ip.get(&ip).map_or(0, |per| per.pending.len());
        if of_ip >= limits.max_pending_per_ip {
            let oldest = self
                .by_ip
                .get(&ip)
                .and_then(|per| self.oldest_pending(per.pending.iter().copied()));
            if !oldest.is_some_and(|seq| self.shed_pending(seq)) {
                return Err(Refused::PerPeer(limits.max_pending_per_ip));
            }
        }
        if self.pending.len() >= limits.max_pending_total {
            let oldest = self.oldest_pending(self.pending.keys().copied());
            if !oldest.is_some_and(|seq| self.shed_pending(seq)) {
                return Err(Refused::Server(limits.max_pending_total));
            }
        }
        Ok(())
    }
}

/// Tells a connection it was shed (its counts are given back already).
fn tell(signal: &Signal, pending: bool) {
    // Relaxed: written and read under the `Peers` mutex (its own task reads
    // it without the mutex only to skip work; see `Member::idle`).
    signal.shed.store(true, Relaxed);
    signal.wake.notify_one();
    if pending {
        signal.cut.notify_one();
    }
}

/// How many connections a server has, by state (see
/// [`crate::server::Monitor`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connections {
    /// Authenticated connections open (every connection, when the handler
    /// requires no authentication), busy or idle.
    pub authenticated: usize,
    /// Of those, the ones waiting for their next request.
    pub idle: usize,
    /// Of those, the ones whose request frame did not arrive at once and
    /// is still being read.
    pub reading: usize,
    /// Connections that have not authenticated yet.
    pub unauthenticated: usize,
}

/// The connection accounting of one server.
pub(crate) struct Peers {
    inner: Mutex<Inner>,
    limits: Limits,
    /// Connections of both classes, readable without the mutex.
    total: AtomicUsize,
}

impl Peers {
    pub(crate) fn new(limits: Limits) -> Arc<Peers> {
        Arc::new(Peers {
            inner: Mutex::new(Inner::default()),
            limits,
            total: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The bookkeeping is consistent between statements: a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the number of connections after a change of it.
    fn publish(&self, inner: &Inner) {
        // Relaxed: a heuristic's input (see `connections`); it orders
        // nothing.
        self.total.store(inner.open + inner.pending.len(), Relaxed);
    }

    /// Admits a new connection from `ip`, authenticated or not, shedding
    /// a connection of the same class if a quota is reached (see the
    /// module docs). Refused if a quota is reached and nothing may make
    /// room.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        authenticated: bool,
    ) -> Result<Member, Refused> {
        let mut inner = self.lock();
        let state = if authenticated {
            inner.room_for_authenticated(&self.limits, ip, Instant::now())?;
            inner.open += 1;
            inner.by_ip.entry(ip).or_default().open += 1;
            State::Authenticated {
                idle: None,
                reading: None,
            }
        } else {
            inner.room_for_pending(&self.limits, ip)?;
            let seq = inner.seq();
            let signal = Arc::new(Signal::default());
            inner.pending.insert(
                seq,
                PendingEntry {
                    ip,
                    signal: Arc::clone(&signal),
                    started: false,
                },
            );
            inner.by_ip.entry(ip).or_default().pending.insert(seq);
            self.publish(&inner);
            return Ok(Member {
                peers: Arc::clone(self),
                ip,
                signal,
                state: State::Pending(seq),
            });
        };
        self.publish(&inner);
        drop(inner);
        let mut member = Member {
            peers: Arc::clone(self),
            ip,
            signal: Arc::new(Signal::default()),
            state,
        };
        // Idle until its first request begins (possibly never).
        member.idle();
        Ok(member)
    }

    /// Sheds one connection to give its file descriptor to a connection
    /// waiting to be accepted (when the process is out of them): the
    /// oldest unauthenticated connection if the handler requires
    /// authentication (the one waiting is unauthenticated too, so it may
    /// displace no other), else a stalled or the oldest idle one. Whether
    /// one was shed.
    pub(crate) fn shed_for_descriptor(&self, requires_authentication: bool) -> bool {
        let mut inner = self.lock();
        let shed = if requires_authentication {
            let oldest = inner.oldest_pending(inner.pending.keys().copied());
            oldest.is_some_and(|seq| inner.shed_pending(seq))
        } else {
            let now = Instant::now();
            let reading = inner.reading.first_key_value().map(|(&key, _)| key);
            let idle = inner.idle.first_key_value().map(|(&seq, _)| seq);
            match (
                reading.filter(|key| key.0 + self.limits.stalled_after <= now),
                idle,
            ) {
                (Some(key), _) => inner.shed_reading(key),
                (None, Some(seq)) => inner.shed_idle(seq),
                (None, None) => false,
            }
        };
        self.publish(&inner);
        shed
    }

    /// Connections open, of both classes (read without the lock: it may
    /// be a moment out of date).
    pub(crate) fn connections(&self) -> usize {
        // Relaxed: see `publish`.
        self.total.load(Relaxed)
    }

    /// The connections by state.
    pub(crate) fn counts(&self) -> Connections {
        let inner = self.lock();
        Connections {
            authenticated: inner.open,
            idle: inner.idle.len(),
            reading: inner.reading.len(),
            unauthenticated: inner.pending.len(),
        }
    }
}

/// Where a connection stands in the accounting.
enum State {
    /// Not authenticated; its key in [`Inner::pending`].
    Pending(u64),
    Authenticated {
        /// Its key in the idle table while it is idle.
        idle: Option<u64>,
        /// Its key in the reading table while a frame that did not arrive
        /// at once is read.
        reading: Option<ReadingKey>,
    },
}

/// One admitted connection's membership; gives its counts back on drop.
pub(crate) struct Member {
    peers: Arc<Peers>,
    ip: IpAddr,
    signal: Arc<Signal>,
    state: State,
}

impl Member {
    /// Whether the connection has authenticated (or needed not).
    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated { .. })
    }

    /// Notes that the connection's task has begun serving it: an
    /// unauthenticated connection accepted but not yet read from is shed
    /// only when every other is of that kind too, so that a client is not
    /// shed before it could send its credentials.
    pub(crate) fn start(&mut self) {
        if let State::Pending(seq) = self.state {
            let mut inner = self.peers.lock();
            if let Some(entry) = inner.pending.get_mut(&seq) {
                entry.started = true;
            }
        }
    }

    /// Marks the connection idle (waiting for its next request). If its
    /// peer then has more idle connections than allowed, the oldest of them
    /// is shed (this one, if the limit is zero). Unauthenticated
    /// connections are not counted as idle: they are shed by their own
    /// rules.
    pub(crate) fn idle(&mut self) {
        // Relaxed: once set, `shed` stays set; a shed this load misses is
        // seen by the next `busy`.
        if self.signal.shed.load(Relaxed) {
            return;
        }
        let State::Authenticated { idle, reading } = &mut self.state else {
            return;
        };
        if idle.is_some() {
            return;
        }
        let peers = Arc::clone(&self.peers);
        let mut inner = peers.lock();
        if let Some(key) = reading.take() {
            inner.reading.remove(&key);
            if let Some(per) = inner.by_ip.get_mut(&self.ip) {
                per.reading.remove(&key);
            }
        }
        let seq = inner.seq();
        inner.idle.insert(
            seq,
            Entry {
                ip: self.ip,
                signal: Arc::clone(&self.signal),
            },
        );
        let per = inner.by_ip.entry(self.ip).or_default();
        per.idle.insert(seq);
        let over = per.idle.len() > peers.limits.max_idle_per_ip;
        let oldest = per.idle.first().copied();
        *idle = Some(seq);
        if over {
            if let Some(oldest) = oldest {
                inner.shed_idle(oldest);
                peers.publish(&inner);
            }
        }
    }

    /// Marks the connection busy (a request began). False if it was shed
    /// meanwhile: it must then close without serving.
    pub(crate) fn busy(&mut self) -> bool {
        let State::Authenticated { idle, .. } = &mut self.state else {
            // Relaxed: see `idle`; a shed pending connection is also cut.
            return !self.signal.shed.load(Relaxed);
        };
        let Some(seq) = *idle else {
            // Not in the idle table, so no one can shed it: no lock needed.
            // Relaxed: only this thread sets it from here on, or it was set
            // under the mutex, which this thread has taken since.
            return !self.signal.shed.load(Relaxed);
        };
        let mut inner = self.peers.lock();
        // Relaxed: under the mutex.
        if self.signal.shed.load(Relaxed) {
            return false;
        }
        *idle = None;
        inner.idle.remove(&seq);
        if let Some(per) = inner.by_ip.get_mut(&self.ip) {
            per.idle.remove(&seq);
        }
        true
    }

    /// Notes that the connection's request frame did not arrive at once
    /// and its rest has been awaited since `since`: past
    /// [`Limits::stalled_after`], the connection is the first to make room
    /// for a new one. (Unauthenticated connections may be shed anyway.)
    pub(crate) fn waiting_for_frame(&mut self, since: Instant) {
        let State::Authenticated {
            idle: None,
            reading: reading @ None,
        } = &mut self.state
        else {
            return;
        };
        let mut inner = self.peers.lock();
        // Relaxed: under the mutex.
        if self.signal.shed.load(Relaxed) {
            return;
        }
        let key = (since, inner.seq());
        inner.reading.insert(
            key,
            Entry {
                ip: self.ip,
                signal: Arc::clone(&self.signal),
            },
        );
        inner.by_ip.entry(self.ip).or_default().reading.insert(key);
        *reading = Some(key);
    }

    /// The frame noted by [`waiting_for_frame`](Self::waiting_for_frame)
    /// has arrived. False if the connection was shed meanwhile.
    pub(crate) fn frame_arrived(&mut self) -> bool {
        if let State::Authenticated { reading, .. } = &mut self.state {
            if let Some(key) = reading.take() {
                let mut inner = self.peers.lock();
                // Relaxed: under the mutex.
                if self.signal.shed.load(Relaxed) {
                    return false;
                }
                inner.reading.remove(&key);
                if let Some(per) = inner.by_ip.get_mut(&self.ip) {
                    per.reading.remove(&key);
                }
            }
        }
        // Relaxed: see `busy`.
        !self.signal.shed.load(Relaxed)
    }

    /// Moves an unauthenticated connection whose request just
    /// authenticated to the authenticated class, making room there if a
    /// quota is reached (see the module docs). False if there is no room,
    /// or if it was shed meanwhile: it must then close.
    pub(crate) fn authenticate(&mut self) -> bool {
        let State::Pending(seq) = self.state else {
            return true;
        };
        let peers = Arc::clone(&self.peers);
        let mut inner = peers.lock();
        // Relaxed: under the mutex.
        if self.signal.shed.load(Relaxed) {
            return false;
        }
        inner.release_pending(seq);
        let admitted = inner.room_for_authenticated(&peers.limits, self.ip, Instant::now());
        if admitted.is_ok() {
            inner.open += 1;
            inner.by_ip.entry(self.ip).or_default().open += 1;
            self.state = State::Authenticated {
                idle: None,
                reading: None,
            };
            // Relaxed: read by `guard`, on this connection's task.
            self.signal.authenticated.store(true, Relaxed);
        } else {
            // Counted nowhere any more: nothing to give back on drop.
            // Relaxed: under the mutex.
            self.signal.shed.store(true, Relaxed);
        }
        peers.publish(&inner);
        admitted.is_ok()
    }

    /// Completes once the connection has been shed (at once if it was
    /// already).
    pub(crate) async fn shed(&self) {
        // Relaxed suffices: a shed that this load misses has stored its
        // notification, which `notified` then returns at once.
        while !self.signal.shed.load(Relaxed) {
            self.signal.wake.notified().await;
        }
    }

    /// The guard of an unauthenticated connection: completes when the
    /// connection is shed while unauthenticated (a notification sent
    /// before it is awaited is kept), or at `deadline` unless it has
    /// authenticated by then; after authenticating, never.
    pub(crate) fn guard(&self, deadline: Instant) -> impl Future<Output = Cut> + Send + 'static {
        let signal = Arc::clone(&self.signal);
        async move {
            tokio::select! {
                biased;
                () = signal.cut.notified() => Cut::Shed,
                () = tokio::time::sleep_until(deadline) => {
                    // Relaxed: set by `authenticate`, on the task that
                    // polls this future.
                    if signal.authenticated.load(Relaxed) {
                        std::future::pending::<()>().await;
                    }
                    Cut::Deadline
                }
            }
        }
    }
}

/// How the guard of an unauthenticated connection ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Shed to make room for another unauthenticated connection.
    Shed,
    /// Not authenticated within its deadline.
    Deadline,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut inner = self.peers.lock();
        // Relaxed: under the mutex.
        if self.signal.shed.load(Relaxed) {
            return; // shedding gave the counts back already
        }
        match &mut self.state {
            State::Pending(seq) => {
                inner.release_pending(*seq);
            }
            State::Authenticated { idle, reading } => {
                if let Some(seq) = idle.take() {
                    inner.idle.remove(&seq);
                    if let Some(per) = inner.by_ip.get_mut(&self.ip) {
                        per.idle.remove(&seq);
                    }
                }
                if let Some(key) = reading.take() {
                    inner.reading.remove(&key);
                    if let Some(per) = inner.by_ip.get_mut(&self.ip) {
                        per.reading.remove(&key);
                    }
                }
                inner.release_open(self.ip);
            }
        }
        self.peers.publish(&inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn limits(max_per_ip: usize, max_idle_per_ip: usize, max_total: usize) -> Limits {
        Limits {
            max_total,
            max_per_ip,
            max_idle_per_ip,
            max_pending_total: 4,
            max_pending_per_ip: 2,
            stalled_after: Duration::from_secs(3600),
        }
    }

    /// Admits an authenticated connection and marks it busy (as a request
    /// began).
    fn busy_member(peers: &Arc<Peers>, ip: IpAddr) -> Member {
        let mut member = peers.admit(ip, true).unwrap();
        assert!(member.busy());
        member
    }

    #[test]
    fn per_peer_limit_sheds_that_peers_oldest_idle_or_refuses() {
        let peers = Peers::new(limits(2, 8, 1024));
        let mut a1 = busy_member(&peers, A);
        let mut a2 = busy_member(&peers, A);
        let _b = busy_member(&peers, B);
        assert_eq!(peers.admit(A, true).err(), Some(Refused::PerPeer(2)));
        a2.idle();
        a1.idle();
        let mut a3 = peers.admit(A, true).unwrap();
        assert!(a3.busy());
        assert!(!a2.busy(), "the oldest idle connection of A was shed");
        assert!(a1.busy());
        drop(a2); // gives nothing back twice
        assert_eq!(peers.admit(A, true).err(), Some(Refused::PerPeer(2)));
        drop(a1);
        assert!(peers.admit(A, true).is_ok());
    }

    #[test]
    fn a_new_connection_is_idle_until_its_first_request() {
        let peers = Peers::new(limits(64, 64, 1));
        let _a = peers.admit(A, true).unwrap();
        assert_eq!(peers.counts().idle, 1);
        let _b = peers.admit(B, true).unwrap();
        assert_eq!(peers.counts().authenticated, 1, "A made room for B");
    }

    #[test]
    fn a_full_server_sheds_its_oldest_idle_connection() {
        let peers = Peers::new(limits(64, 64, 2));
        let mut a = busy_member(&peers, A);
        let mut b = busy_member(&peers, B);
        assert_eq!(peers.admit(B, true).err(), Some(Refused::Server(2)));
        b.idle();
        a.idle();
        let mut c = peers.admit(B, true).unwrap();
        assert!(c.busy());
        assert!(!b.busy());
        assert!(a.busy());
        assert_eq!(peers.counts().idle, 0);
        assert!(!peers.shed_for_descriptor(false), "nothing idle to shed");
        a.idle();
        assert!(peers.shed_for_descriptor(false));
        assert!(!a.busy());
    }

    #[test]
    fn idle_limit_per_peer_sheds_the_oldest() {
        let peers = Peers::new(limits(64, 1, 1024));
        let mut a1 = busy_member(&peers, A);
        let mut a2 = busy_member(&peers, A);
        a1.idle();
        a2.idle();
        assert!(!a1.busy());
        assert!(a2.busy());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(a1.shed()); // returns: the notification was kept
    }

    #[test]
    fn unauthenticated_connections_only_ever_displace_each_other() {
        let peers = Peers::new(limits(1, 1, 1));
        let mut owner = peers.admit(A, true).unwrap();
        owner.idle();
        // Two per address, four in all, whatever the authenticated quotas.
        let mut p1 = peers.admit(A, false).unwrap();
        p1.start();
        let p2 = peers.admit(A, false).unwrap();
        let mut p3 = peers.admit(A, false).unwrap();
        assert!(!p1.busy(), "the oldest started one made room");
        assert!(p3.busy());
        drop(p2);
        let _b: Vec<Member> = (0..3).map(|_| peers.admit(B, false).unwrap()).collect();
        assert_eq!(peers.counts().unauthenticated, 3, "p3 and two of B");
        assert!(owner.busy(), "the idle authenticated connection stayed");
        // Nothing shed for the descriptor of an unauthenticated newcomer
        // but an unauthenticated connection.
        owner.idle();
        for _ in 0..3 {
            assert!(peers.shed_for_descriptor(true));
        }
        assert!(!peers.shed_for_descriptor(true));
        assert!(owner.busy());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let cut = rt.block_on(p1.guard(Instant::now() + Duration::from_secs(3600)));
        assert_eq!(cut, Cut::Shed, "the notification was kept");
    }

    #[test]
    fn authenticating_needs_room_among_the_authenticated() {
        let peers = Peers::new(limits(1, 1, 1024));
        let _owner = busy_member(&peers, A);
        let mut p = peers.admit(A, false).unwrap();
        assert!(!p.authenticate(), "no room: the busy one stays");
        assert_eq!(peers.counts().unauthenticated, 0);
        drop(p);
        assert_eq!(peers.counts().authenticated, 1);
        let mut q = peers.admit(B, false).unwrap();
        assert!(q.authenticate());
        assert!(q.is_authenticated());
        assert_eq!(peers.connections(), 2);
    }

    #[test]
    fn a_stalled_frame_makes_room_before_an_idle_connection() {
        let mut l = limits(2, 8, 1024);
        l.stalled_after = Duration::ZERO;
        let peers = Peers::new(l);
        let mut idle = busy_member(&peers, A);
        idle.idle();
        let mut stalled = busy_member(&peers, A);
        stalled.waiting_for_frame(Instant::now());
        assert_eq!(peers.counts().reading, 1);
        let _new = peers.admit(A, true).unwrap();
        assert!(!stalled.frame_arrived(), "the stalled one made room");
        assert!(idle.busy(), "the idle one stayed");
    }
}
