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
//! A doorbell set is a small segment of its own that a service creates:
//! either anonymous, a sealed memfd handed to each client over the control
//! socket ([`DoorbellSet::create_memfd`], [`DoorbellSet::from_fd`]; what the
//! runtime uses, since a client can then never truncate it under the
//! service), or a named file (`metabridge.<name>`, mode 0600) opened by
//! name, for processes that trust each other.

use crate::error::{Error, Result};
use crate::liveness::ProcessIdentity;
use crate::segment::{segment_path, validate_name};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{self, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// "MBDOOR01" as a little-endian u64.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"MBDOOR01");
const VERSION: u64 = 1;
pub(crate) const OWNER_PID_OFFSET: usize = 16;
pub(crate) const OWNER_START_OFFSET: usize = 24;
pub(crate) const HEADER_BYTES: usize = 32;
/// Offset of the first bell; each bell has a 128-byte line of its own.
const BELLS_OFFSET: usize = 128;
const BELL_STRIDE: usize = 128;
/// Most bells one set may hold.
pub const MAX_BELLS: usize = 1024;

struct Mapping {
    map: MmapRaw,
    /// The file of a named set, removed by its owner on drop.
    path: Option<PathBuf>,
    owner: bool,
    /// The sealed memfd of an anonymous set, kept by its creator to hand
    /// to each client.
    fd: Option<OwnedFd>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let (true, Some(path)) = (self.owner, &self.path) {
            let _ = fs::remove_file(path);
        }
    }
}

/// A set of doorbells in one shared segment.
///
/// ```
/// use metabridge_shm::DoorbellSet;
/// let dir = std::env::temp_dir();
/// let name = format!("doc-bells-{}", std::process::id());
/// let bells = DoorbellSet::create(&dir, &name, 2).unwrap();
/// let remote = DoorbellSet::open(&dir, &name).unwrap();
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

// SAFETY: the mapping is shared memory touched only through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl DoorbellSet {
    /// Creates a set of `count` doorbells named `name` in `dir`; the name is
    /// removed when the set is dropped.
    pub fn create(dir: &Path, name: &str, count: usize) -> Result<DoorbellSet> {
        validate_name(name)?;
        if count == 0 || count > MAX_BELLS {
            return Err(Error::Config(format!(
                "doorbell count {count} not in 1..={MAX_BELLS}"
            )));
        }
        let path = segment_path(dir, name);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        let file = match open() {
            Ok(f) => f,
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && crate::segment::is_stale(&path) =>
            {
                let _ = fs::remove_file(&path);
                open()?
            }
            Err(e) => return Err(e.into()),
        };
        let len = BELLS_OFFSET + count * BELL_STRIDE;
        let built = (|| -> Result<MmapRaw> {
            file.set_len(len as u64)?;
            crate::platform::reserve(&file, len, &path.display().to_string(), Some(dir))?;
            Ok(MmapOptions::new().len(len).map_raw(&file)?)
        })();
        let map = match built {
            Ok(map) => map,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let inner = Arc::new(Mapping {
            map,
            path: Some(path),
            owner: true,
            fd: None,
        });
        Ok(Self::init(inner, count))
    }

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
        let len = BELLS_OFFSET + count * BELL_STRIDE;
        let fd = crate::platform::sealed_memfd(c"metabridge-doorbells", len, "a doorbell set")?;
        let map = MmapOptions::new().len(len).map_raw(fd.as_raw_fd())?;
        let inner = Arc::new(Mapping {
            map,
            path: None,
            owner: true,
            fd: Some(fd),
        });
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
        let map_len = (len as usize).min(BELLS_OFFSET + MAX_BELLS * BELL_STRIDE);
        let map = MmapOptions::new().len(map_len).map_raw(fd.as_raw_fd())?;
        let set = DoorbellSet {
            inner: Arc::new(Mapping {
                map,
                path: None,
                owner: false,
                fd: None,
            }),
            count: 0,
        };
        set.validate(what, map_len as u64)
    }

    /// Writes a new set's header, the magic last.
    fn init(inner: Arc<Mapping>, count: usize) -> DoorbellSet {
        let me = ProcessIdentity::current();
        let set = DoorbellSet { inner, count };
        set.word_at(8)
            .store(VERSION | (count as u64) << 32, Ordering::Relaxed);
        set.word_at(OWNER_PID_OFFSET)
            .store(me.pid as u64, Ordering::Relaxed);
        set.word_at(OWNER_START_OFFSET)
            .store(me.start_time, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `validate`.
        set.word_at(0).store(MAGIC, Ordering::Release);
        set
    }

    /// Opens the doorbell set `name` in `dir`, validating its header.
    pub fn open(dir: &Path, name: &str) -> Result<DoorbellSet> {
        validate_name(name)?;
        let path = segment_path(dir, name);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        if len < BELLS_OFFSET as u64 {
            return Err(Error::Truncated {
                name: name.into(),
                len,
                needed: BELLS_OFFSET as u64,
            });
        }
        let map = MmapOptions::new().len(len as usize).map_raw(&file)?;
        let set = DoorbellSet {
            inner: Arc::new(Mapping {
                map,
                path: Some(path),
                owner: false,
                fd: None,
            }),
            count: 0,
        };
        set.validate(name, len)
    }

    /// Checks the header of a set someone else wrote (`len` bytes mapped).
    fn validate(self, name: &str, len: u64) -> Result<DoorbellSet> {
        // Acquire: pairs with the Release store of the magic in `init`.
        if self.word_at(0).load(Ordering::Acquire) != MAGIC {
            return Err(Error::BadMagic { name: name.into() });
        }
        let meta = self.word_at(8).load(Ordering::Relaxed);
        if meta & 0xffff_ffff != VERSION {
            return Err(Error::VersionMismatch {
                name: name.into(),
                found: meta as u32,
                expected: VERSION as u32,
            });
        }
        let count = (meta >> 32) as usize;
        if count == 0 || count > MAX_BELLS {
            return Err(Error::Corrupt(format!(
                "doorbell set {name:?} claims {count} bells"
            )));
        }
        let needed = (BELLS_OFFSET + count * BELL_STRIDE) as u64;
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
        assert!(offset + 8 <= self.inner.map.len() && offset % 8 == 0);
        // SAFETY: in bounds and aligned (asserted; the mapping is
        // page-aligned); shared memory read and written only atomically.
        unsafe { &*(self.inner.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    /// Number of bells in the set.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if the set has no bells (never, for a set made by `create`).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Doorbell `i`, or `None` if out of range.
    pub fn bell(&self, i: usize) -> Option<Doorbell> {
        if i >= self.count {
            return None;
        }
        let word = self.word_at(BELLS_OFFSET + i * BELL_STRIDE) as *const AtomicU64;
        Some(Doorbell {
            _keep: self.inner.clone(),
            word,
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
    _keep: Arc<Mapping>,
    word: *const AtomicU64,
}

// SAFETY: `word` points into the mapping kept alive by `_keep`; it is only
// accessed atomically.
unsafe impl Send for Doorbell {}
// SAFETY: as above.
unsafe impl Sync for Doorbell {}

impl Doorbell {
    fn word(&self) -> &AtomicU64 {
        // SAFETY: see the Send impl: valid and aligned while `_keep` lives.
        unsafe { &*self.word }
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
