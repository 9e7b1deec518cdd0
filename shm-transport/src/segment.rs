//! Channel segments: create, open and validate them; clean up named ones.
//!
//! A segment holds a channel's header, two ring control blocks and two data
//! areas (the layout is in the `header` module). The runtime's segments are
//! sealed memfds ([`Segment::create_memfd`], [`Segment::open_fd`]): no name,
//! reached only through the descriptor the creator passes over a Unix
//! socket, and sealed against any change of size, so the peer can never
//! make our accesses fault. A named segment is a file in a tmpfs directory
//! (`/dev/shm` by default) created with `O_EXCL` and mode 0600, for
//! processes that trust each other: anyone who can open it can truncate it.
//!
//! The creator writes the whole header before it stores the magic number
//! (Release); an opener that loads the magic (Acquire) sees a complete
//! header. Once the opener of a named segment has attached it unlinks the
//! name: both sides hold the mapping, nobody else needs the name, and the
//! kernel frees the memory when the last mapping goes, even if both
//! processes are SIGKILLed. Only a segment whose creator died before anyone
//! opened it can be left behind; [`gc`] finds and removes those, and so does
//! a `create` that trips over one.

use crate::error::{Error, Result};
use crate::header::{
    pool_offset, segment_len, SegmentHeader, SideInfo, CONTROL_OFFSET, HEADER_LEN, LAYOUT_VERSION,
    MAX_CAPACITY, MAX_POOL, MIN_CAPACITY, PAGE, SEGMENT_MAGIC,
};
use crate::liveness::ProcessIdentity;
use crate::mapping::{Access, SharedMapping};
use crate::ring::RingControl;
use crate::write_guard::WriteGuard;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

/// Prefix of every segment file name.
pub const FILE_PREFIX: &str = "metabridge.";
/// A segment with no valid header is only removed by [`gc`] once it is this
/// old: a younger one may be in the middle of its creation.
const UNFINISHED_GRACE: Duration = Duration::from_secs(10);

/// Checks that a name is safe as a file name component.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "segment name {name:?} must be 1 to 200 characters of [A-Za-z0-9._-], not starting with '.'"
        )))
    }
}

fn check_capacities(capacity: [usize; 2]) -> Result<()> {
    for c in capacity {
        if !c.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&c) {
            return Err(Error::Config(format!(
                "ring capacity {c} must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}]"
            )));
        }
    }
    Ok(())
}

/// The path of segment `name` in `dir`.
pub fn segment_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{FILE_PREFIX}{name}"))
}

/// A mapped channel segment.
pub(crate) struct Segment {
    map: SharedMapping,
    /// Which side we are: 0 created it, 1 opened it.
    pub(crate) side: usize,
    /// The file of a named segment (`None` for a memfd, which has no name).
    path: Option<PathBuf>,
    /// Ring capacities as written (creator) or validated (opener); never
    /// re-read from the shared header, where the peer could change them.
    capacity: [usize; 2],
    /// Pool sizes, the same way (0: no pool).
    pool: [usize; 2],
    /// Our own descriptor of a memfd segment, to reserve and give back
    /// pool pages with (`None` for a named segment, which has no pool).
    fd: Option<OwnedFd>,
    /// How our own pool stays unwritable outside a placement.
    guard: WriteGuard,
}

impl Segment {
    /// Creates segment `name` with the given ring capacities.
    pub(crate) fn create(dir: &Path, name: &str, capacity: [usize; 2]) -> Result<Segment> {
        validate_name(name)?;
        check_capacities(capacity)?;
        let path = segment_path(dir, name);
        let total = HEADER_LEN + capacity[0] + capacity[1];
        let file = match create_exclusive(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_stale(&path) => {
                tracing::debug!(?path, "removing a stale segment left by a dead process");
                let _ = fs::remove_file(&path);
                create_exclusive(&path)?
            }
            Err(e) => return Err(e.into()),
        };
        let built = (|| -> Result<Segment> {
            file.set_len(total as u64)?;
            crate::platform::reserve(&file, total, &path.display().to_string(), Some(dir))?;
            let map = SharedMapping::trusted_file(file.as_fd(), total, Access::ReadWrite)?;
            map.populate(0, total)?;
            let seg = Segment {
                map,
                side: 0,
                path: Some(path.clone()),
                capacity,
                pool: [0; 2],
                fd: None,
                guard: WriteGuard::Protect, // a named segment has no pool
            };
            seg.write_header(capacity, [0; 2], total);
            Ok(seg)
        })();
        if built.is_err() {
            let _ = fs::remove_file(&path);
        }
        built
    }

    /// Creates an anonymous segment: a sealed memfd (see
    /// [`platform`](crate::platform)), returned with its descriptor, which
    /// the caller hands to the peer (over a Unix socket) and then closes.
    /// Each side gets a payload pool of `pool` bytes (rounded up to a
    /// page; 0 for none), whose pages are reserved only as they come into
    /// use (the rings' are reserved and mapped now).
    pub(crate) fn create_memfd(capacity: [usize; 2], pool: usize) -> Result<(Segment, OwnedFd)> {
        check_capacities(capacity)?;
        if pool > MAX_POOL {
            return Err(Error::Config(format!(
                "payload pool of {pool} bytes is over the {MAX_POOL} accepted"
            )));
        }
        let pool = [pool.next_multiple_of(PAGE); 2];
        let rings = HEADER_LEN + capacity[0] + capacity[1];
        let total = segment_len(capacity, pool);
        let fd = crate::platform::sealed_memfd_reserving(
            c"metabridge-channel",
            total,
            rings,
            "a channel segment",
        )?;
        let map = SharedMapping::sealed(fd.as_fd(), total, Access::ReadWrite)?;
        map.populate(0, rings)?;
        let seg = Segment {
            map,
            side: 0,
            path: None,
            capacity,
            pool,
            fd: Some(fd.try_clone()?),
            guard: WriteGuard::of_process(),
        };
        seg.write_header(capacity, pool, total);
        seg.protect_pools()?;
        Ok((seg, fd))
    }

    /// Opens an anonymous segment from the descriptor its creator sent,
    /// after checking it is sealed against resizing, and takes its second
    /// side. `what` names it in errors.
    pub(crate) fn open_fd(fd: BorrowedFd<'_>, what: &str) -> Result<Segment> {
        let len = crate::platform::check_sealed(fd, HEADER_LEN as u64, what)?;
        // Sealed: the length can no longer change, so the checks below
        // hold for the life of the mapping.
        let mut seg = Segment {
            map: SharedMapping::sealed(fd, HEADER_LEN, Access::ReadWrite)?,
            side: 1,
            path: None,
            capacity: [0; 2],
            pool: [0; 2],
            fd: None,
            guard: WriteGuard::of_process(),
        };
        let (capacity, pool, total) = seg.validate(what)?;
        if len < total {
            return Err(Error::Truncated {
                name: what.into(),
                len,
                needed: total,
            });
        }
        seg.map = SharedMapping::sealed(fd, total as usize, Access::ReadWrite)?;
        // The rings only: the pools' pages are mapped as they come into use.
        seg.map
            .populate(0, HEADER_LEN + capacity[0] + capacity[1])?;
        seg.capacity = capacity;
        seg.pool = pool;
        seg.protect_pools()?;
        seg.fd = Some(fd.try_clone_to_owned()?);
        seg.claim(what)?;
        Ok(seg)
    }

    /// Writes a new segment's header, the magic last.
    fn write_header(&self, capacity: [usize; 2], pool: [usize; 2], total: usize) {
        let me = ProcessIdentity::current();
        let h = self.header();
        // Relaxed: published by the Release store of the magic below.
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.header_len.store(HEADER_LEN as u32, Ordering::Relaxed);
        h.capacity[0].store(capacity[0] as u64, Ordering::Relaxed);
        h.capacity[1].store(capacity[1] as u64, Ordering::Relaxed);
        h.total_len.store(total as u64, Ordering::Relaxed);
        h.pool_len[0].store(pool[0] as u64, Ordering::Relaxed);
        h.pool_len[1].store(pool[1] as u64, Ordering::Relaxed);
        let side = &h.sides[0];
        side.claimed.store(1, Ordering::Relaxed);
        side.start_time.store(me.start_time, Ordering::Relaxed);
        side.pid.store(me.pid as u64, Ordering::Relaxed);
        // Release: pairs with the Acquire load of the magic in `validate`;
        // the header fields above are visible to whoever sees it.
        h.magic.store(SEGMENT_MAGIC, Ordering::Release);
    }

    /// Takes the second side of a validated segment.
    fn claim(&self, name: &str) -> Result<()> {
        let side = &self.header().sides[1];
        if side
            .claimed
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return Err(Error::AlreadyAttached { name: name.into() });
        }
        let me = ProcessIdentity::current();
        side.start_time.store(me.start_time, Ordering::Relaxed);
        // Release: a peer that loads our pid (Acquire, in `identity`) sees
        // our start time too.
        side.pid.store(me.pid as u64, Ordering::Release);
        Ok(())
    }

    /// Opens segment `name`, validates it and takes its second side.
    pub(crate) fn open(dir: &Path, name: &str) -> Result<Segment> {
        validate_name(name)?;
        let path = segment_path(dir, name);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        if len < HEADER_LEN as u64 {
            return Err(Error::Truncated {
                name: name.into(),
                len,
                needed: HEADER_LEN as u64,
            });
        }
        let map = SharedMapping::trusted_file(file.as_fd(), len as usize, Access::ReadWrite)?;
        let mut seg = Segment {
            map,
            side: 1,
            path: Some(path.clone()),
            capacity: [0; 2],
            pool: [0; 2],
            fd: None,
            guard: WriteGuard::Protect, // a named segment has no pool
        };
        let (capacity, pool, total) = seg.validate(name)?;
        if len < total {
            return Err(Error::Truncated {
                name: name.into(),
                len,
                needed: total,
            });
        }
        if pool != [0; 2] {
            return Err(Error::Corrupt(format!(
                "segment {name:?}: a named segment with payload pools {pool:?}"
            )));
        }
        seg.map.populate(0, total as usize)?;
        seg.capacity = capacity;
        seg.claim(name)?;
        // Both sides hold the mapping now: the name has done its job.
        let _ = fs::remove_file(&path);
        Ok(seg)
    }

    /// Checks the header of a segment someone else wrote.
    fn validate(&self, name: &str) -> Result<([usize; 2], [usize; 2], u64)> {
        let h = self.header();
        // Acquire: pairs with the Release store of the magic in `create`.
        let magic = h.magic.load(Ordering::Acquire);
        if magic != SEGMENT_MAGIC {
            return Err(Error::BadMagic { name: name.into() });
        }
        // Relaxed: ordered by the Acquire load of the magic above. Each field
        // is loaded once; only the loaded copies are validated and used.
        let version = h.version.load(Ordering::Relaxed);
        let header_len = h.header_len.load(Ordering::Relaxed);
        let cap = [
            h.capacity[0].load(Ordering::Relaxed),
            h.capacity[1].load(Ordering::Relaxed),
        ];
        let total = h.total_len.load(Ordering::Relaxed);
        let pool = [
            h.pool_len[0].load(Ordering::Relaxed),
            h.pool_len[1].load(Ordering::Relaxed),
        ];
        if version != LAYOUT_VERSION {
            return Err(Error::VersionMismatch {
                name: name.into(),
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        let cap_ok = |c: u64| {
            c.is_power_of_two() && (MIN_CAPACITY as u64..=MAX_CAPACITY as u64).contains(&c)
        };
        if header_len as usize != HEADER_LEN || !cap_ok(cap[0]) || !cap_ok(cap[1]) {
            return Err(Error::Corrupt(format!(
                "segment {name:?}: header length {header_len}, capacities {cap:?}"
            )));
        }
        if pool
            .iter()
            .any(|&p| p > MAX_POOL as u64 || p % PAGE as u64 != 0)
        {
            return Err(Error::Corrupt(format!(
                "segment {name:?}: payload pools of {pool:?} bytes"
            )));
        }
        let (cap, pool) = (
            [cap[0] as usize, cap[1] as usize],
            [pool[0] as usize, pool[1] as usize],
        );
        let expected = segment_len(cap, pool) as u64;
        if total != expected {
            return Err(Error::Corrupt(format!(
                "segment {name:?}: total length {total}, expected {expected}"
            )));
        }
        // The rings' starting positions, which the opener adopts: within
        // range and consistent (no sum of ours may ever overflow).
        for (i, c) in cap.iter().enumerate() {
            let ctrl = self.control(i);
            let tail = ctrl.tail.load(Ordering::Acquire) & !crate::ring::SIGNALS;
            let head = ctrl.head.load(Ordering::Acquire) & !crate::ring::SIGNALS;
            if tail > crate::ring::MAX_START_POSITION || head > tail || tail - head > *c as u64 {
                return Err(Error::Corrupt(format!(
                    "segment {name:?}: ring {i} starts at head {head}, tail {tail}"
                )));
            }
        }
        Ok((cap, pool, total))
    }

    pub(crate) fn header(&self) -> &SegmentHeader {
        self.map.view(0)
    }

    /// Capacity of ring `i`, as validated.
    pub(crate) fn capacity(&self, i: usize) -> usize {
        self.capacity[i]
    }

    /// The control block of ring `i`.
    pub(crate) fn control(&self, i: usize) -> &RingControl {
        self.map.view(CONTROL_OFFSET[i])
    }

    /// Pointer to the data area of ring `i` (its capacity's bytes, inside
    /// the mapping: the mapping checks it).
    pub(crate) fn data(&self, i: usize) -> std::ptr::NonNull<u8> {
        let offset = HEADER_LEN + if i == 0 { 0 } else { self.capacity(0) };
        self.map.range_ptr(offset, self.capacity(i))
    }

    /// Bytes of side `i`'s payload pool (0: none).
    pub(crate) fn pool_len(&self, i: usize) -> usize {
        self.pool[i]
    }

    /// Offset of side `i`'s payload pool in the segment.
    pub(crate) fn pool_start(&self, i: usize) -> usize {
        pool_offset(self.capacity) + if i == 0 { 0 } else { self.pool[0] }
    }

    /// The mapping, for the pools' copies in and out.
    pub(crate) fn mapping(&self) -> &SharedMapping {
        &self.map
    }

    /// Reserves the pages of `len` bytes at `offset` of side `i`'s pool,
    /// so that a lack of memory is [`Error::NoSpace`] now rather than a
    /// SIGBUS later (map them in [`write_own_pool`](Self::write_own_pool),
    /// where they are writable).
    pub(crate) fn reserve_pool(&self, i: usize, offset: usize, len: usize) -> Result<()> {
        let fd = self
            .fd
            .as_ref()
            .ok_or_else(|| Error::Config("a named segment has no payload pool".into()))?;
        let at = self.pool_start(i) + offset;
        crate::platform::reserve_range(fd.as_fd(), at, len, "a channel's payload pool")?;
        Ok(())
    }

    /// Maps the pages of `len` bytes at `offset` of side `i`'s pool now,
    /// for a reader (pages the writer reserved; the rest read as zeros).
    pub(crate) fn populate_pool(&self, i: usize, offset: usize, len: usize) -> Result<()> {
        self.map.populate_read(self.pool_start(i) + offset, len)?;
        Ok(())
    }

    /// Copies `bytes` to `offset` of our own pool, whose page range
    /// `window` (containing them) is opened for writing for the copy only
    /// (see `write_guard`); `populate` first maps that many fresh bytes
    /// from `offset` on, so that the copy takes no fault.
    pub(crate) fn write_own_pool(
        &self,
        window: std::ops::Range<usize>,
        offset: usize,
        bytes: &[u8],
        populate: Option<std::ops::Range<usize>>,
    ) -> Result<()> {
        let start = self.pool_start(self.side);
        let window = start + window.start..start + window.end;
        self.guard.write(&self.map, window, || {
            if let Some(fresh) = populate {
                // A failure only leaves the pages to fault on first touch.
                let _ = self.map.populate(start + fresh.start, fresh.len());
            }
            self.map.write_bytes(start + offset, bytes);
        })?;
        Ok(())
    }

    /// Makes the peer's pool read-only in our mapping for good, and our
    /// own unwritable outside a placement's copy (see `write_guard`).
    fn protect_pools(&self) -> Result<()> {
        let (own, peer) = (self.side, 1 - self.side);
        if self.pool[peer] > 0 {
            self.map
                .protect(self.pool_start(peer), self.pool[peer], Access::ReadOnly)?;
        }
        if self.pool[own] > 0 {
            self.guard
                .seal(&self.map, self.pool_start(own), self.pool[own])?;
        }
        Ok(())
    }

    /// Gives the pages of `len` bytes at `offset` of side `i`'s pool back.
    pub(crate) fn release_pool(&self, i: usize, offset: usize, len: usize) -> Result<()> {
        if let Some(fd) = &self.fd {
            crate::platform::release_range(fd.as_fd(), self.pool_start(i) + offset, len)?;
        }
        Ok(())
    }

    /// The identity a side published, once it has attached.
    pub(crate) fn identity(&self, side: usize) -> Option<ProcessIdentity> {
        let s = &self.header().sides[side];
        // Acquire: pairs with the Release store of the pid in `open`.
        let pid = s.pid.load(Ordering::Acquire);
        if pid == 0 {
            return None;
        }
        Some(ProcessIdentity {
            pid: pid as u32,
            start_time: s.start_time.load(Ordering::Relaxed),
        })
    }

    /// True once the second side has taken the segment.
    pub(crate) fn opened(&self) -> bool {
        self.header().sides[1].claimed.load(Ordering::Acquire) != 0
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // A creator whose segment nobody opened removes the name itself
        // (an opener already removed it otherwise).
        if self.side == 0 && !self.opened() {
            if let Some(path) = &self.path {
                let _ = fs::remove_file(path);
            }
        }
    }
}

fn create_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// True if the segment file at `path` belongs to no live process: its
/// creator died before anyone opened it, or it was never finished and is
/// older than a grace period.
fn is_stale(path: &Path) -> bool {
    // O_NOFOLLOW: a symlink planted in the directory is not followed.
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    let old = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age >= UNFINISHED_GRACE);
    // Read with pread, never a mapping: the file may be truncated by its
    // writer while we look (a short read, not a SIGBUS).
    let mut head = vec![0u8; std::mem::size_of::<SegmentHeader>()];
    let got = crate::platform::read_at(&file, &mut head, 0).unwrap_or(0);
    if got < 8 {
        return old;
    }
    let word = |off: usize| {
        head.get(off..off + 8)
            .filter(|_| off + 8 <= got)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    // Anything but a segment has no creator we can check: it goes once it
    // is old.
    if word(0) != Some(SEGMENT_MAGIC) {
        return old;
    }
    // The creator's side: side 0.
    let side = std::mem::offset_of!(SegmentHeader, sides);
    let pid_off = side + std::mem::offset_of!(SideInfo, pid);
    let start_off = side + std::mem::offset_of!(SideInfo, start_time);
    match (word(pid_off), word(start_off)) {
        (Some(pid), Some(start)) if pid != 0 && pid <= u32::MAX as u64 => ProcessIdentity {
            pid: pid as u32,
            start_time: start,
        }
        .is_dead(),
        _ => old,
    }
}

/// Removes every segment in `dir` left behind by dead processes; returns
/// how many it removed. Segments of live processes, and files that are not
/// MetaBridge segments, are left alone.
///
/// ```
/// let dir = std::env::temp_dir();
/// let removed = metabridge_shm::gc(&dir).unwrap();
/// assert!(removed < usize::MAX);
/// ```
pub fn gc(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(FILE_PREFIX) {
            continue;
        }
        let path = entry.path();
        if is_stale(&path) && fs::remove_file(&path).is_ok() {
            tracing::debug!(?path, "gc removed a stale segment");
            removed += 1;
        }
    }
    Ok(removed)
}
