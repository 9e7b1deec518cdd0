//! The operating-system calls behind shared memory, in one place.
//!
//! Everything else in the crate speaks of segments, rings and bells; this
//! module speaks of file descriptors: sealed memfds, reserving their pages,
//! checking what a peer handed us, reading files without mapping them.
//! It uses nix's safe wrappers where they exist, so it needs no `unsafe`.
//!
//! Why sealed memfds: a segment that is a plain file can be truncated by any
//! process that can open it, and touching a page past the new end of a
//! mapping raises SIGBUS, which kills the process. A memfd sealed with
//! `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` can never change size again,
//! by anyone, so a mapping of it can never fault; and it has no name, so it
//! is reached only through the descriptor its creator passes over a Unix
//! socket (the design Wayland and iceoryx2 use). Its pages are reserved at
//! creation (`posix_fallocate`), so a full memory filesystem is a clear
//! error at creation instead of a SIGBUS on first touch.
//!
//! A memfd's inode has mode 0777, so a descriptor handed out read-only is
//! no protection by itself: its holder can open `/proc/self/fd/N` again
//! read-write. Memory that one process writes and others only read (the
//! runtime's live counters) is therefore also sealed with
//! `F_SEAL_FUTURE_WRITE` once its writer has mapped it, and readers
//! refuse it without that seal.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The seals every shared segment must carry before a peer maps it.
pub(crate) fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// The seals that make a segment read-only for everyone who did not map
/// it writable before they were set: `F_SEAL_FUTURE_WRITE` (Linux 5.1)
/// refuses `write`, new writable shared mappings, `mprotect` of a
/// read-only one to writable, and hole punching, whatever the mode of the
/// descriptor; the creator's earlier mapping keeps writing.
pub(crate) fn write_seals() -> SealFlag {
    SealFlag::F_SEAL_FUTURE_WRITE
}

/// Creates a memfd of exactly `len` bytes, its pages reserved, sealed
/// against any change of size. `what` names it in errors.
pub(crate) fn sealed_memfd(name: &CStr, len: usize, what: &str) -> Result<OwnedFd> {
    sealed_memfd_reserving(name, len, len, what)
}

/// Like [`sealed_memfd`], with only the first `reserved` of its `len`
/// bytes reserved now: the rest (a channel's payload pools) is reserved
/// range by range as it comes into use ([`reserve_range`]).
pub(crate) fn sealed_memfd_reserving(
    name: &CStr,
    len: usize,
    reserved: usize,
    what: &str,
) -> Result<OwnedFd> {
    let fd = sized_memfd(name, len, reserved, what)?;
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(required_seals()))?;
    Ok(fd)
}

/// A memfd of `len` bytes whose first `reserved` are reserved, open to
/// every seal.
fn sized_memfd(name: &CStr, len: usize, reserved: usize, what: &str) -> Result<OwnedFd> {
    let fd = memfd_create(
        name,
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )?;
    let file = File::from(fd);
    file.set_len(len as u64)?;
    reserve(&file, reserved, what, None)?;
    Ok(OwnedFd::from(file))
}

/// Reserves the pages of `len` bytes at `offset` of a memfd (already sized
/// and sealed: reserving inside its size changes no size). ENOSPC or
/// ENOMEM (a full memory cgroup) is [`Error::NoSpace`].
pub(crate) fn reserve_range(
    fd: BorrowedFd<'_>,
    offset: usize,
    len: usize,
    what: &str,
) -> Result<()> {
    loop {
        match nix::fcntl::posix_fallocate(fd.as_raw_fd(), offset as libc::off_t, len as libc::off_t)
        {
            Ok(()) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(Errno::ENOSPC) | Err(Errno::ENOMEM) => {
                return Err(Error::NoSpace {
                    what: what.to_owned(),
                    needed: len as u64,
                    available: None,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Gives the pages of `len` bytes at `offset` of a memfd back to the
/// kernel (a hole reads as zeros; the size stays).
pub(crate) fn release_range(fd: BorrowedFd<'_>, offset: usize, len: usize) -> Result<()> {
    use nix::fcntl::FallocateFlags;
    nix::fcntl::fallocate(
        fd.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as libc::off_t,
        len as libc::off_t,
    )?;
    Ok(())
}

/// Like [`sealed_memfd`], but without `F_SEAL_SEAL` yet: its creator maps
/// it, then calls [`seal_future_writes`], which adds the final seals.
/// (Once `F_SEAL_SEAL` is set, no seal can be added: `EPERM`.)
pub(crate) fn size_sealed_memfd(name: &CStr, len: usize, what: &str) -> Result<OwnedFd> {
    let fd = sized_memfd(name, len, len, what)?;
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW),
    )?;
    Ok(fd)
}

/// Seals a memfd of [`size_sealed_memfd`] against future writes, and
/// against any further seal: from here on only mappings made writable
/// before this call can change its bytes.
pub(crate) fn seal_future_writes(fd: BorrowedFd<'_>) -> Result<()> {
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_ADD_SEALS(write_seals() | SealFlag::F_SEAL_SEAL),
    )?;
    Ok(())
}

/// The seals of `fd`; none for a file that cannot carry seals.
fn seals(fd: BorrowedFd<'_>) -> Result<SealFlag> {
    match fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS) {
        Ok(bits) => Ok(SealFlag::from_bits_truncate(bits)),
        // EINVAL: not a file that supports seals (a socket, a disk file).
        Err(Errno::EINVAL) => Ok(SealFlag::empty()),
        Err(e) => Err(e.into()),
    }
}

/// Reserves the pages of `file` up to `len` bytes so that no later touch of
/// a mapping of it can fail for lack of memory. ENOSPC becomes
/// [`Error::NoSpace`] with the size and, for a file in `dir`, the space left.
pub(crate) fn reserve(file: &File, len: usize, what: &str, dir: Option<&Path>) -> Result<()> {
    use std::os::fd::AsFd;
    reserve_range(file.as_fd(), 0, len, what).map_err(|e| match e {
        Error::NoSpace { what, needed, .. } => Error::NoSpace {
            what,
            needed,
            available: dir.and_then(space_left),
        },
        other => other,
    })
}

/// Bytes free for an unprivileged writer in the filesystem of `dir`.
pub(crate) fn space_left(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Checks that `fd` is a sealed memfd of at least `min_len` bytes that can
/// never shrink (nor grow): only then may it be mapped without a SIGBUS
/// risk. Returns its length.
pub(crate) fn check_sealed(fd: BorrowedFd<'_>, min_len: u64, what: &str) -> Result<u64> {
    if !seals(fd)?.contains(required_seals()) {
        return Err(Error::Unsealed {
            what: what.to_owned(),
        });
    }
    let len = nix::sys::stat::fstat(fd.as_raw_fd())?.st_size as u64;
    if len < min_len {
        return Err(Error::Truncated {
            name: what.to_owned(),
            len,
            needed: min_len,
        });
    }
    Ok(len)
}

/// Checks, as [`check_sealed`] does, that `fd` is a sealed memfd of at
/// least `min_len` bytes, and also that it is sealed against writes
/// ([`write_seals`], or the stronger `F_SEAL_WRITE`): what a reader then
/// maps cannot be changed through any descriptor opened later, such as
/// `/proc/<pid>/fd/N` reopened read-write. Returns its length.
pub(crate) fn check_write_sealed(fd: BorrowedFd<'_>, min_len: u64, what: &str) -> Result<u64> {
    let len = check_sealed(fd, min_len, what)?;
    let seals = seals(fd)?;
    if !seals.intersects(write_seals() | SealFlag::F_SEAL_WRITE) {
        return Err(Error::WriteUnsealed {
            what: what.to_owned(),
        });
    }
    Ok(len)
}

/// Reads up to `buf.len()` bytes at `offset` with `pread`: a file that
/// shrinks meanwhile gives a short read, never a SIGBUS. Returns the bytes
/// read (fewer at the end of the file).
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Refuses (`InvalidInput`) a descriptor that is not sealed against
/// shrinking or holds fewer than `len` bytes: a mapping of it could fault.
pub(crate) fn check_unshrinkable(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<()> {
    let seals = SealFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)?);
    let size = nix::sys::stat::fstat(fd.as_raw_fd())?.st_size;
    if !seals.contains(SealFlag::F_SEAL_SHRINK) || size < len as i64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a memfd sealed against shrinking of the expected size",
        ));
    }
    Ok(())
}
