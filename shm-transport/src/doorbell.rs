//! Doorbells: one futex word on which a thread sleeps for many rings.
//!
//! A service serves many channels and must not keep a spinning thread per
//! channel. Its worker instead sleeps on one doorbell word: before sleeping
//! it reads the doorbell's count, then arms every ring it serves with the
//! `DOORBELL` bit (see [`Receiver::arm_doorbell`](crate::Receiver::arm_doorbell)),
//! then sleeps while the count is unchanged. A producer whose publishing
//! swap returns the `DOORBELL` bit rings the bell: count + 1, then
//! FUTEX_WAKE. The count was read before the arming CAS, the ring happens
//! after the swap that saw the armed bit, so the sleeper's FUTEX_WAIT sees a
//! changed count or is woken: the wakeup cannot be lost.
//!
//! A busy worker never sleeps, so its clients never ring: the bell costs a
//! syscall only when a request finds the worker asleep.
//!
//! A doorbell set is a small sealed memfd of its own that a service
//! creates ([`DoorbellSet::create_memfd`]) and hands to each client over the
//! control socket ([`DoorbellSet::from_fd`]): sealed against any change of
//! size, so a client can never truncate it under the service. Its layout is
//! in the `header` module.

use crate::error::{Error, Result};
use crate::header::{
    doorbells_len, BELLS_OFFSET, DOORBELL_MAGIC, DOORBELL_META_OFFSET, DOORBELL_VERSION, MAX_BELLS,
    OWNER_PID_OFFSET, OWNER_START_OFFSET,
};
use crate::liveness::ProcessIdentity;
use crate::mapping::{Access, SharedMapping};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Mapping {
    map: SharedMapping,
    /// The sealed memfd, kept by the set's creator to hand to each client
    /// (`None` in a client, which needs it no more once mapped).
    fd: Option<OwnedFd>,
}

/// A set of doorbells in one shared segment.
///
/// ```
/// use metabridge_shm::DoorbellSet;
/// let bells = DoorbellSet::create_memfd(2).unwrap();
/// let remote = DoorbellSet::from_fd(bells.fd().unwrap()).unwrap(); // usually another process
/// let bell = bells.bell(1).unwrap();
/// let seen = bell.count();
/// remote.bell(1).unwrap().ring();
/// assert_ne!(bell.count(), seen);
/// bell.wait(seen, std::time::Duration::from_millis(10)); // returns at once
/// ```
pub struct DoorbellSet {
    inner: Arc<Mapping>,
    count: usize,
}

impl DoorbellSet {
    /// Creates an anonymous set of `count` doorbells: a sealed memfd,
    /// handed to clients with [`fd`](Self::fd) over a Unix socket.
    ///
    /// ```
    /// use metabridge_shm::DoorbellSet;
    /// let bells = DoorbellSet::create_memfd(2).unwrap();
    /// let remote = DoorbellSet::from_fd(bells.fd().unwrap()).unwrap(); // usually another process
    /// let seen = bells.bell(0).unwrap().count();
    /// remote.bell(0).unwrap().ring();
    /// assert_ne!(bells.bell(0).unwrap().count(), seen);
    /// ```
    pub fn create_memfd(count: usize) -> Result<DoorbellSet> {
        if count == 0 || count > MAX_BELLS {
            return Err(Error::Config(format!(
                "doorbell count {count} not in 1..={MAX_BELLS}"
            )));
        }
        let len = doorbells_len(count);
        let fd = crate::platform::sealed_memfd(c"metabridge-doorbells", len, "a doorbell set")?;
        let map = SharedMapping::sealed(fd.as_fd(), len, Access::ReadWrite)?;
        map.populate(0, len)?; // rung on every call: no fault on the way
        let inner = Arc::new(Mapping { map, fd: Some(fd) });
        Ok(Self::init(inner, count))
    }

    /// The descriptor of an anonymous set (see [`create_memfd`](Self::create_memfd)).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Maps an anonymous set from the descriptor its creator sent, after
    /// checking it is sealed against resizing (so the creator cannot make
    /// our accesses fault) and validating its header.
    pub fn from_fd(fd: BorrowedFd<'_>) -> Result<DoorbellSet> {
        let what = "the doorbell set";
        let len = crate::platform::check_sealed(fd, BELLS_OFFSET as u64, what)?;
        let map_len = (len as usize).min(doorbells_len(MAX_BELLS));
        let map = SharedMapping::sealed(fd, map_len, Access::ReadWrite)?;
        map.populate(0, map_len)?;
        let set = DoorbellSet {
            inner: Arc::new(Mapping { map, fd: None }),
            count: 0,
        };
        set.validate(what, map_len as u64)
    }

    /// Writes a new set's header, the magic last.
    fn init(inner: Arc<Mapping>, count: usize) -> DoorbellSet {
        let me = ProcessIdentity::current();
        let set = DoorbellSet { inner, count };
        set.word_at(DOORBELL_META_OFFSET)
            .store(DOORBELL_VERSION | (count as u64) << 32, Ordering::Relaxed);
        set.word_at(OWNER_PID_OFFSET)
            .store(me.pid as u64, Ordering::Relaxed);
        set.word_at(OWNER_START_OFFSET)
            .store(me.start_time, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `validate`.
        set.word_at(0).store(DOORBELL_MAGIC, Ordering::Release);
        set
    }

    /// Checks the header of a set someone else wrote (`len` bytes mapped).
    fn validate(self, name: &str, len: u64) -> Result<DoorbellSet> {
        // Acquire: pairs with the Release store of the magic in `init`.
        if self.word_at(0).load(Ordering::Acquire) != DOORBELL_MAGIC {
            return Err(Error::BadMagic { name: name.into() });
        }
        let meta = self.word_at(DOORBELL_META_OFFSET).load(Ordering::Relaxed);
        if meta & 0xffff_ffff != DOORBELL_VERSION {
            return Err(Error::VersionMismatch {
                name: name.into(),
                found: meta as u32,
                expected: DOORBELL_VERSION as u32,
            });
        }
        let count = (meta >> 32) as usize;
        if count == 0 || count > MAX_BELLS {
            return Err(Error::Corrupt(format!(
                "doorbell set {name:?} claims {count} bells"
            )));
        }
        let needed = doorbells_len(count) as u64;
        if len < needed {
            return Err(Error::Truncated {
                name: name.into(),
                len,
                needed,
            });
        }
        Ok(DoorbellSet { count, ..self })
    }

    fn word_at(&self, offset: usize) -> &AtomicU64 {
        self.inner.map.view(offset)
    }

    /// Number of bells in the set.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if the set has no bells (never, for a set that was created or
    /// validated).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Doorbell `i`, or `None` if out of range.
    pub fn bell(&self, i: usize) -> Option<Doorbell> {
        if i >= self.count {
            return None;
        }
        Some(Doorbell {
            set: self.inner.clone(),
            offset: doorbells_len(i),
        })
    }

    /// The process that created the set, as it recorded itself.
    pub fn owner(&self) -> ProcessIdentity {
        ProcessIdentity {
            pid: self.word_at(OWNER_PID_OFFSET).load(Ordering::Relaxed) as u32,
            start_time: self.word_at(OWNER_START_OFFSET).load(Ordering::Relaxed),
        }
    }
}

/// One doorbell: a futex word a sleeper waits on and producers ring.
#[derive(Clone)]
pub struct Doorbell {
    set: Arc<Mapping>,
    /// Where its word is in the set's mapping (in bounds: checked when the
    /// bell was handed out, and by the mapping on each access).
    offset: usize,
}

impl Doorbell {
    fn word(&self) -> &AtomicU64 {
        self.set.map.view(self.offset)
    }

    /// How many times the bell was rung: read it before arming rings, and
    /// pass it to [`wait`](Self::wait).
    pub fn count(&self) -> u64 {
        // Acquire: pairs with the Release of `ring`.
        self.word().load(Ordering::Acquire)
    }

    /// Rings: bumps the count and wakes the sleeper, if any.
    pub fn ring(&self) {
        // Release: what the ringer published before is visible to the
        // sleeper that sees the new count.
        self.word().fetch_add(1, Ordering::Release);
        crate::futex::wake(self.word());
    }

    /// Sleeps while the count still equals `seen`, for at most `timeout`.
    /// May return early (a signal, a spurious wake): callers re-check.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        crate::futex::wait(self.word(), seen, Some(timeout));
    }
}
