//! Per-peer accounting of a server's connections: how many each IP address
//! has open, which are idle (waiting for their next request), and shedding
//! the oldest idle ones when a limit is reached.
//!
//! An idle connection costs the server a socket and a task but serves no
//! one; a client that opens many and leaves them idle must not lock other
//! clients out. So when a new connection would exceed a limit, the oldest
//! idle connection (of the same peer for the per-peer limits, of anyone for
//! the server-wide one) is told to close, and the new one takes its place.
//! Only when nothing is idle is a new connection refused.
//!
//! All the bookkeeping is under one mutex, taken twice per request (idle,
//! then busy again) for a few hundred nanoseconds at most.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// What a connection's task is told through its [`Member`].
#[derive(Default)]
struct Signal {
    /// Set, under the [`Peers`] mutex, when the connection was shed: its
    /// counts were already given back, and it must close.
    shed: AtomicBool,
    /// Wakes the connection's idle wait when it is shed (a notification
    /// sent before the wait starts is kept, so none is lost).
    wake: Notify,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its peer already has this many connections open, none of them idle.
    PerPeer(usize),
    /// The server has its maximum of connections open, none of them idle.
    Server(usize),
}

#[derive(Default)]
struct PerIp {
    open: usize,
    /// Sequence numbers (keys of [`Inner::idle`]) of this peer's idle
    /// connections, oldest first.
    idle: BTreeSet<u64>,
}

struct IdleEntry {
    ip: IpAddr,
    signal: Arc<Signal>,
}

#[derive(Default)]
struct Inner {
    by_ip: HashMap<IpAddr, PerIp>,
    /// Every idle connection by the sequence number it got when it became
    /// idle: the first entry is the one idle the longest.
    idle: BTreeMap<u64, IdleEntry>,
    next_seq: u64,
}

impl Inner {
    /// Sheds the idle connection `seq`: gives back its counts and tells it
    /// to close.
    fn shed(&mut self, seq: u64) -> bool {
        let Some(entry) = self.idle.remove(&seq) else {
            return false;
        };
        if let Some(per) = self.by_ip.get_mut(&entry.ip) {
            per.idle.remove(&seq);
            per.open = per.open.saturating_sub(1);
            if per.open == 0 {
                self.by_ip.remove(&entry.ip);
            }
        }
        // Relaxed: written and read under the `Peers` mutex.
        entry.signal.shed.store(true, Relaxed);
        entry.signal.wake.notify_one();
        true
    }

    fn shed_oldest_of(&mut self, ip: IpAddr) -> bool {
        let oldest = self
            .by_ip
            .get(&ip)
            .and_then(|per| per.idle.first().copied());
        oldest.is_some_and(|seq| self.shed(seq))
    }

    fn shed_oldest(&mut self) -> bool {
        let oldest = self.idle.first_key_value().map(|(&seq, _)| seq);
        oldest.is_some_and(|seq| self.shed(seq))
    }
}

/// The connection accounting of one server.
pub(crate) struct Peers {
    inner: Mutex<Inner>,
    max_per_ip: usize,
    max_idle_per_ip: usize,
}

/// Whether admitting a connection shed an idle one (whose server-wide slot
/// the new connection may then wait for).
pub(crate) struct Admitted {
    pub(crate) member: Member,
    pub(crate) shed_one: bool,
}

impl Peers {
    pub(crate) fn new(max_per_ip: usize, max_idle_per_ip: usize) -> Arc<Peers> {
        Arc::new(Peers {
            inner: Mutex::new(Inner::default()),
            max_per_ip,
            max_idle_per_ip,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The bookkeeping is consistent between statements: a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `ip`, shedding the oldest idle
    /// connection of that peer if it is at its limit, or the oldest idle one
    /// of the server if `server_full`. Refused if a limit is reached and
    /// there is nothing idle to shed.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        server_full: Option<usize>,
    ) -> Result<Admitted, Refused> {
        let mut inner = self.lock();
        let open = inner.by_ip.get(&ip).map_or(0, |per| per.open);
        let mut shed_one = false;
        if open >= self.max_per_ip {
            if !inner.shed_oldest_of(ip) {
                return Err(Refused::PerPeer(self.max_per_ip));
            }
            shed_one = true;
        }
        if let Some(max) = server_full {
            // A connection shed above frees a server-wide slot as well.
            if !shed_one && !inner.shed_oldest() {
                return Err(Refused::Server(max));
            }
            shed_one = true;
        }
        inner.by_ip.entry(ip).or_default().open += 1;
        drop(inner);
        let mut member = Member {
            peers: Arc::clone(self),
            ip,
            signal: Arc::new(Signal::default()),
            idle_seq: None,
        };
        // Idle until its first request begins (possibly never).
        member.idle();
        Ok(Admitted { member, shed_one })
    }

    /// Sheds the connection idle the longest, if any (when the process is
    /// out of file descriptors, say). Whether one was shed.
    pub(crate) fn shed_oldest_idle(&self) -> bool {
        self.lock().shed_oldest()
    }

    /// Number of idle connections (for tests and logs).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }
}

/// One admitted connection's membership; gives its counts back on drop.
pub(crate) struct Member {
    peers: Arc<Peers>,
    ip: IpAddr,
    signal: Arc<Signal>,
    /// Its key in the idle table while it is idle.
    idle_seq: Option<u64>,
}

impl Member {
    /// Marks the connection idle (waiting for its next request). If its
    /// peer then has more idle connections than allowed, the oldest of them
    /// is shed (this one, if the limit is zero).
    pub(crate) fn idle(&mut self) {
        // Relaxed: once set, `shed` stays set; a shed this load misses is
        // seen by the next `busy`.
        if self.idle_seq.is_some() || self.signal.shed.load(Relaxed) {
            return;
        }
        let peers = Arc::clone(&self.peers);
        let mut inner = peers.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.idle.insert(
            seq,
            IdleEntry {
                ip: self.ip,
                signal: Arc::clone(&self.signal),
            },
        );
        let per = inner.by_ip.entry(self.ip).or_default();
        per.idle.insert(seq);
        let over = per.idle.len() > peers.max_idle_per_ip;
        self.idle_seq = Some(seq);
        if over {
            inner.shed_oldest_of(self.ip);
        }
    }

    /// Marks the connection busy (a request began). False if it was shed
    /// meanwhile: it must then close without serving.
    pub(crate) fn busy(&mut self) -> bool {
        if self.idle_seq.is_none() {
            // Not in the idle table, so no one can shed it: no lock needed.
            // Relaxed: only this thread sets it from here on, or it was set
            // under the mutex, which this thread has taken since.
            return !self.signal.shed.load(Relaxed);
        }
        let peers = Arc::clone(&self.peers);
        let mut inner = peers.lock();
        // Relaxed: under the mutex.
        if self.signal.shed.load(Relaxed) {
            return false;
        }
        if let Some(seq) = self.idle_seq.take() {
            inner.idle.remove(&seq);
            if let Some(per) = inner.by_ip.get_mut(&self.ip) {
                per.idle.remove(&seq);
            }
        }
        true
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
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut inner = self.peers.lock();
        // Relaxed: under the mutex.
        if self.signal.shed.load(Relaxed) {
            return; // shedding gave the counts back already
        }
        let idle_seq = self.idle_seq.take();
        if let Some(seq) = idle_seq {
            inner.idle.remove(&seq);
        }
        if let Some(per) = inner.by_ip.get_mut(&self.ip) {
            if let Some(seq) = idle_seq {
                per.idle.remove(&seq);
            }
            per.open = per.open.saturating_sub(1);
            if per.open == 0 {
                inner.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    /// Admits a connection and marks it busy (as a request began).
    fn busy_member(peers: &Arc<Peers>, ip: IpAddr) -> Member {
        let mut member = peers.admit(ip, None).unwrap().member;
        assert!(member.busy());
        member
    }

    #[test]
    fn per_peer_limit_sheds_that_peers_oldest_idle_or_refuses() {
        let peers = Peers::new(2, 8);
        let mut a1 = busy_member(&peers, A);
        let mut a2 = busy_member(&peers, A);
        let _b = busy_member(&peers, B);
        assert_eq!(peers.admit(A, None).err(), Some(Refused::PerPeer(2)));
        a2.idle();
        a1.idle();
        let mut a3 = peers.admit(A, None).unwrap();
        assert!(a3.shed_one);
        assert!(a3.member.busy());
        assert!(!a2.busy(), "the oldest idle connection of A was shed");
        assert!(a1.busy());
        drop(a2); // gives nothing back twice
        assert_eq!(peers.admit(A, None).err(), Some(Refused::PerPeer(2)));
        drop(a1);
        assert!(!peers.admit(A, None).unwrap().shed_one);
    }

    #[test]
    fn a_new_connection_is_idle_until_its_first_request() {
        let peers = Peers::new(64, 64);
        let _a = peers.admit(A, None).unwrap().member;
        assert_eq!(peers.idle_count(), 1);
        assert!(peers.admit(B, Some(1)).unwrap().shed_one);
    }

    #[test]
    fn a_full_server_sheds_its_oldest_idle_connection() {
        let peers = Peers::new(64, 64);
        let mut a = busy_member(&peers, A);
        let mut b = busy_member(&peers, B);
        assert_eq!(peers.admit(B, Some(2)).err(), Some(Refused::Server(2)));
        b.idle();
        a.idle();
        let mut c = peers.admit(B, Some(2)).unwrap();
        assert!(c.shed_one);
        assert!(c.member.busy());
        assert!(!b.busy());
        assert!(a.busy());
        assert_eq!(peers.idle_count(), 0);
        assert!(!peers.shed_oldest_idle(), "nothing idle to shed");
        a.idle();
        assert!(peers.shed_oldest_idle());
        assert!(!a.busy());
    }

    #[test]
    fn idle_limit_per_peer_sheds_the_oldest() {
        let peers = Peers::new(64, 1);
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
}
