//! [`SharedMapping`]: the one type through which memory shared with other
//! processes is mapped and reached, for segments, doorbells and the
//! runtime's live counters (and the payload pool to come).
//!
//! Invariants, which every accessor relies on:
//! - the mapping covers `len` bytes from a page-aligned base, and stays
//!   mapped for the life of the value (it is unmapped on drop);
//! - the pages cannot fault: the descriptor was checked to be sealed
//!   against shrinking and long enough ([`SharedMapping::sealed`]), or its
//!   file belongs to processes that trust each other
//!   ([`SharedMapping::trusted_file`]: named segments);
//! - other processes may write any byte at any time, so no `&[u8]`, `&str`
//!   or `&mut` is ever formed over the mapping: bytes are copied in and
//!   out through raw pointers, and the only references handed out are to
//!   types made only of atomics ([`AtomicView`]), whose every access is
//!   atomic. The one exception is `lent_bytes` (crate-private),
//!   whose caller proves that no mapping of those bytes is writable (a
//!   lent pool block: see `lend`).

use crate::header::PAGE;
use memmap2::{MmapOptions, MmapRaw};
use nix::sys::mman::ProtFlags;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// Whether a mapping may be written through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read and written (rings, doorbells, a writer's counters).
    ReadWrite,
    /// Only read (a reader's view of the counters).
    ReadOnly,
}

/// Types that may be viewed in place in shared memory.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made only of atomic integers (and
/// arrays or structs of them): every bit pattern is valid, and every
/// access through a shared reference is atomic, so the writes of other
/// processes race with nothing non-atomic.
pub unsafe trait AtomicView {}

// SAFETY: an atomic integer, valid for every bit pattern.
unsafe impl AtomicView for AtomicU64 {}
// SAFETY: an atomic integer, valid for every bit pattern.
unsafe impl AtomicView for AtomicU32 {}
// SAFETY: `#[repr(C)]`, made only of AtomicU64, AtomicU32 and arrays and
// cache-padded structs of them (header.rs says why every field is one).
unsafe impl AtomicView for crate::header::SegmentHeader {}
// SAFETY: `#[repr(C)]`, two cache-padded AtomicU64 counters.
unsafe impl AtomicView for crate::ring::RingControl {}

/// One shared mapping of a memfd (or of a file, between trusting
/// processes); see the module docs for its invariants.
///
/// ```
/// use metabridge_shm::{mapping::{Access, SharedMapping}, memfd};
/// use std::os::fd::AsFd;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// let fd = memfd::create_for_one_writer(c"doc", 4096, "a doc segment").unwrap();
/// let a = SharedMapping::sealed(fd.as_fd(), 4096, Access::ReadWrite).unwrap();
/// let b = SharedMapping::sealed(fd.as_fd(), 4096, Access::ReadOnly).unwrap();
/// a.view::<AtomicU64>(8).store(7, Ordering::Relaxed);
/// assert_eq!(b.view::<AtomicU64>(8).load(Ordering::Relaxed), 7);
/// a.write_bytes(16, b"hi");
/// assert_eq!(b.copy_out(16..18), b"hi");
/// ```
pub struct SharedMapping {
    map: MmapRaw,
    len: usize,
    access: Access,
}

impl SharedMapping {
    /// Maps the first `len` bytes of `fd`, after checking that it is
    /// sealed against shrinking and holds at least `len` bytes (so no page
    /// of the mapping can ever fault, whatever the other holders of the
    /// descriptor do). `InvalidInput` otherwise.
    pub fn sealed(fd: BorrowedFd<'_>, len: usize, access: Access) -> std::io::Result<Self> {
        crate::platform::check_unshrinkable(fd, len)?;
        Self::map(fd, len, access)
    }

    /// Maps the first `len` bytes of a file that is not sealed: a process
    /// that can open the file can truncate it under the mapping and make
    /// our next access fault (SIGBUS). For named segments only, between
    /// processes that trust each other (tests, benchmarks, fuzz targets).
    pub fn trusted_file(fd: BorrowedFd<'_>, len: usize, access: Access) -> std::io::Result<Self> {
        Self::map(fd, len, access)
    }

    fn map(fd: BorrowedFd<'_>, len: usize, access: Access) -> std::io::Result<Self> {
        if len == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a shared mapping of 0 bytes",
            ));
        }
        let mut options = MmapOptions::new();
        options.len(len);
        let map = match access {
            Access::ReadWrite => options.map_raw(fd.as_raw_fd())?,
            Access::ReadOnly => options.map_raw_read_only(fd.as_raw_fd())?,
        };
        Ok(SharedMapping { map, len, access })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Maps every page of `len` bytes at `offset` now (`MADV_POPULATE_WRITE`,
    /// or `_READ` on a read-only mapping), so that touching them later
    /// takes no page fault: a fault costs a microsecond or more per page,
    /// on the call path. The pages must exist (reserved): populating is
    /// not how they are allocated. A kernel without these advices (before
    /// Linux 5.14) is told nothing, and the pages fault on first touch.
    pub fn populate(&self, offset: usize, len: usize) -> std::io::Result<()> {
        self.check(offset, len, 1);
        let advice = match self.access {
            Access::ReadWrite => memmap2::Advice::PopulateWrite,
            Access::ReadOnly => memmap2::Advice::PopulateRead,
        };
        match self.map.advise_range(advice, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }

    /// Maps every page of `len` bytes at `offset` now for reading
    /// (`MADV_POPULATE_READ`): for a range this side only reads, which may
    /// be [protected](Self::protect) read-only.
    pub fn populate_read(&self, offset: usize, len: usize) -> std::io::Result<()> {
        self.check(offset, len, 1);
        match self
            .map
            .advise_range(memmap2::Advice::PopulateRead, offset, len)
        {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }

    /// Makes the pages of `len` bytes at `offset` (page-aligned) writable
    /// or read-only in this process's mapping (`mprotect`): the pool
    /// pages a side only reads, and those of its own pool between its
    /// writes, so that a stray write of this process faults here instead
    /// of changing bytes a peer reads in place. Protecting a read-only
    /// mapping writable is refused.
    pub fn protect(&self, offset: usize, len: usize, access: Access) -> std::io::Result<()> {
        self.check(offset, len, PAGE);
        if access == Access::ReadWrite && self.access == Access::ReadOnly {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "a read-only mapping made writable",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let prot = match access {
            Access::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            Access::ReadOnly => ProtFlags::PROT_READ,
        };
        // SAFETY: the range is page-aligned and inside this mapping
        // (checked), which this value owns: no other code's memory changes
        // protection. No reference to these bytes exists that a fault could
        // surprise: the crate reaches them through raw pointers, and a
        // write only ever follows `protect(.., ReadWrite)` of its range.
        let base = unsafe { NonNull::new_unchecked(self.map.as_mut_ptr().add(offset).cast()) };
        // SAFETY: see above; `mprotect` changes no memory contents.
        unsafe { nix::sys::mman::mprotect(base, len, prot) }.map_err(std::io::Error::from)
    }

    /// Tags the pages of `len` bytes at `offset` (page-aligned) with
    /// protection key `key`, readable and writable as far as the page
    /// tables go (`pkey_mprotect`): each thread's rights for the key then
    /// decide (see `write_guard`).
    pub(crate) fn protect_with_key(
        &self,
        offset: usize,
        len: usize,
        key: u32,
    ) -> std::io::Result<()> {
        self.check(offset, len, PAGE);
        if self.access == Access::ReadOnly {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "a read-only mapping tagged writable",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: as in `protect`: the range is page-aligned and inside
        // this read-write mapping, which this value owns; `pkey_mprotect`
        // changes no memory contents, only which threads may write it, and
        // the crate reaches these bytes through raw pointers only.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pkey_mprotect,
                self.map.as_mut_ptr().add(offset),
                len,
                prot as libc::c_long,
                key as libc::c_long,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// The `len` bytes at `offset` in place, for a lent pool block.
    ///
    /// # Safety
    /// No process may write these bytes while the returned slice lives:
    /// the caller holds them lent (`lend`): its own mapping of them is
    /// read-only, and the peer that wrote them keeps its mapping of them
    /// unwritable and writes nowhere in them until they are released.
    pub(crate) unsafe fn lent_bytes(&self, offset: usize, len: usize) -> &[u8] {
        self.check(offset, len, 1);
        // SAFETY: in bounds (checked), mapped while `self` lives (the
        // borrow ties the slice to it), `u8` is valid for any bytes, and no
        // process writes them while the slice lives (the caller's
        // contract).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset), len) }
    }

    /// Never: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Panics unless `offset..offset + len` lies in the mapping and
    /// `offset` is a multiple of `align`: a bug of ours, never a peer's
    /// value (callers validate those first).
    #[inline(always)]
    fn check(&self, offset: usize, len: usize, align: usize) {
        assert!(
            offset <= self.len && len <= self.len - offset && offset % align == 0,
            "shared mapping access {offset}+{len} (align {align}) outside {} bytes",
            self.len
        );
    }

    /// The value of type `T` at `offset`, in place.
    #[inline]
    pub fn view<T: AtomicView>(&self, offset: usize) -> &T {
        self.check(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: in bounds and aligned (checked; the base is page-aligned),
        // mapped while `self` lives (the borrow ties the reference to it),
        // and `T` is made only of atomics (AtomicView), so every access
        // through the reference is atomic whatever other processes write.
        unsafe { &*self.map.as_ptr().add(offset).cast::<T>() }
    }

    /// `count` consecutive values of type `T` from `offset` on, in place.
    #[inline]
    pub fn view_slice<T: AtomicView>(&self, offset: usize, count: usize) -> &[T] {
        let bytes = count
            .checked_mul(size_of::<T>())
            .expect("shared mapping slice length overflows");
        self.check(offset, bytes, align_of::<T>());
        // SAFETY: as in `view`, for `count` values in bounds.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset).cast::<T>(), count) }
    }

    /// A copy of the bytes in `range`, read through a raw pointer (another
    /// process may be writing them: the copy may then mix old and new
    /// bytes, which callers validate, but no reference is formed).
    pub fn copy_out(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let len = range.end.saturating_sub(range.start);
        self.check(range.start, len, 1);
        let mut out = Vec::with_capacity(len);
        // SAFETY: the source is in bounds (checked) and mapped while `self`
        // lives; the destination has capacity `len` and does not overlap
        // the mapping; `u8` is valid for any bytes; `set_len` follows the
        // copy of exactly `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(range.start),
                out.as_mut_ptr(),
                len,
            );
            out.set_len(len);
        }
        out
    }

    /// Copies the `dst.len()` bytes at `offset` into `dst` through a raw
    /// pointer (as [`copy_out`](Self::copy_out), into a caller's buffer).
    pub fn copy_into(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len(), 1);
        // SAFETY: the source is in bounds (checked) and mapped while `self`
        // lives; `dst` is the caller's own memory, outside the mapping, of
        // exactly the length copied; `u8` is valid for any bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Copies `bytes` into the mapping at `offset` through a raw pointer.
    /// Panics on a read-only mapping (whose pages would fault).
    pub fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert_eq!(
            self.access,
            Access::ReadWrite,
            "write to a read-only mapping"
        );
        self.check(offset, bytes.len(), 1);
        // SAFETY: the destination is in bounds (checked) and mapped while
        // `self` lives; the source is our own slice, outside the mapping;
        // writing through a raw pointer forms no reference that other
        // processes' writes could invalidate.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                bytes.len(),
            )
        }
    }

    /// The address of byte `offset` of `len` in-bounds bytes, for the
    /// ring, which reaches its data area through raw pointers (and writes
    /// it: a read-write mapping only).
    pub(crate) fn range_ptr(&self, offset: usize, len: usize) -> NonNull<u8> {
        assert_eq!(
            self.access,
            Access::ReadWrite,
            "ring over a read-only mapping"
        );
        self.check(offset, len, 1);
        // SAFETY: in bounds (checked) of a mapping whose base is not null.
        unsafe { NonNull::new_unchecked(self.map.as_mut_ptr().add(offset)) }
    }
}
