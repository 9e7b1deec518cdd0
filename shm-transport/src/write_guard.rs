//! The write guard: how a side keeps its own payload pool unwritable in
//! its own process except while a placement copies into it.
//!
//! A block of our pool that the peer holds lent is read in place there
//! (see `lend`), so no stray write of ours may reach it. Our pool is
//! therefore unwritable outside [`WriteGuard::write`], by one of two
//! means, chosen once per process:
//! - **A protection key** (x86 PKU, Linux `pkey_alloc`): every pool this
//!   process owns is tagged with one key, and each thread's PKRU register
//!   denies writes through it (the kernel's default for a key denies all
//!   access in every thread but the one that allocated it, which denies
//!   writes). A placement lifts the denial in its own thread only, for
//!   its copy, and puts it back: two register writes, no system call and
//!   no TLB flush, and the other threads of the process stay denied
//!   throughout.
//! - **`mprotect`** where there are no protection keys (another CPU, an
//!   older kernel, every key taken, or `METABRIDGE_POOL_GUARD=mprotect`):
//!   the pool is mapped read-only and a placement makes the pages it
//!   writes writable for its copy. This costs two system calls and a TLB
//!   shootdown on every CPU the process runs on per placement
//!   (BENCHMARKS.md names the cost), and during the copy other threads
//!   could write those pages too.
//!
//! Either way a stray write into the pool faults its writer, and the
//! pages the peer holds are never in a placement's window (the writer
//! places around them).

use crate::mapping::{Access, SharedMapping};
use std::sync::OnceLock;

/// The environment variable that picks `mprotect` even where protection
/// keys work (`METABRIDGE_POOL_GUARD=mprotect`), to compare the two.
pub const POOL_GUARD_ENV: &str = "METABRIDGE_POOL_GUARD";

/// How this process guards its own pools; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteGuard {
    /// Pools tagged with this protection key; writes allowed per thread.
    Key(u32),
    /// Pools read-only, made writable page range by page range.
    Protect,
}

impl WriteGuard {
    /// The guard of this process: a protection key, allocated the first
    /// time, where the CPU and kernel have them and the environment does
    /// not ask for `mprotect`.
    pub fn of_process() -> WriteGuard {
        static GUARD: OnceLock<WriteGuard> = OnceLock::new();
        *GUARD.get_or_init(|| {
            let forced = std::env::var(POOL_GUARD_ENV).is_ok_and(|v| v == "mprotect");
            let guard = match forced {
                true => WriteGuard::Protect,
                false => pkru::allocate_key().map_or(WriteGuard::Protect, WriteGuard::Key),
            };
            tracing::debug!(?guard, "payload pools guarded");
            guard
        })
    }

    /// Makes `len` bytes at `offset` of `map` (a pool of ours, page
    /// aligned) unwritable outside [`write`](Self::write): tagged with
    /// the key, or read-only.
    pub(crate) fn seal(
        &self,
        map: &SharedMapping,
        offset: usize,
        len: usize,
    ) -> std::io::Result<()> {
        match *self {
            WriteGuard::Key(key) => map.protect_with_key(offset, len, key),
            WriteGuard::Protect => map.protect(offset, len, Access::ReadOnly),
        }
    }

    /// Runs `copy`, which writes only inside the page range `window` of
    /// `map` (a pool of ours sealed by [`seal`](Self::seal)), with writes
    /// to it allowed; an error if they could not be allowed (then `copy`
    /// has not run).
    pub(crate) fn write<R>(
        &self,
        map: &SharedMapping,
        window: std::ops::Range<usize>,
        copy: impl FnOnce() -> R,
    ) -> std::io::Result<R> {
        match *self {
            WriteGuard::Key(key) => {
                let _open = pkru::WritesAllowed::open(key);
                Ok(copy())
            }
            WriteGuard::Protect => {
                let len = window.end.saturating_sub(window.start);
                map.protect(window.start, len, Access::ReadWrite)?;
                let out = copy();
                if let Err(e) = map.protect(window.start, len, Access::ReadOnly) {
                    tracing::warn!(error = %e, "payload pool pages left writable");
                }
                Ok(out)
            }
        }
    }
}

/// The protection-key register and system calls (x86-64 only).
#[cfg(target_arch = "x86_64")]
mod pkru {
    /// `PKEY_DISABLE_WRITE`: the key's initial rights in the allocating
    /// thread.
    const DISABLE_WRITE: libc::c_long = 2;

    /// A fresh protection key for this process, if the CPU and kernel
    /// have them and one is free.
    pub(super) fn allocate_key() -> Option<u32> {
        // SAFETY: `pkey_alloc(flags, rights)` takes two integers and
        // touches no memory of ours; it fails cleanly (ENOSYS, EINVAL,
        // ENOSPC) where keys are missing or taken.
        let key = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0 as libc::c_long, DISABLE_WRITE) };
        u32::try_from(key).ok().filter(|k| (1..16).contains(k))
    }

    /// PKRU's two bits for `key`: access disabled, write disabled.
    fn bits(key: u32) -> u32 {
        0b11 << (2 * key)
    }

    fn read() -> u32 {
        let value: u32;
        // SAFETY: RDPKRU (with ECX = 0) reads this thread's PKRU into EAX
        // and zeroes EDX; it touches no memory. It exists: a key was
        // allocated, which the kernel does only where the CPU has PKU and
        // the OS enabled it.
        unsafe {
            std::arch::asm!("rdpkru", in("ecx") 0, out("eax") value, out("edx") _,
                options(nomem, nostack, preserves_flags));
        }
        value
    }

    fn write(value: u32) {
        // SAFETY: WRPKRU (with ECX = EDX = 0) sets this thread's PKRU from
        // EAX; it changes which pages this thread may touch, so it is not
        // `nomem`: the compiler keeps memory accesses on their side of it.
        // Every value written is either the thread's own earlier value or
        // that value with one key's write and access allowed.
        unsafe {
            std::arch::asm!("wrpkru", in("eax") value, in("ecx") 0, in("edx") 0,
                options(nostack, preserves_flags));
        }
    }

    /// Writes through `key` allowed in this thread until dropped (also on
    /// unwinding), then this thread's earlier rights back.
    pub(super) struct WritesAllowed {
        saved: u32,
    }

    impl WritesAllowed {
        pub(super) fn open(key: u32) -> WritesAllowed {
            let saved = read();
            write(saved & !bits(key));
            WritesAllowed { saved }
        }
    }

    impl Drop for WritesAllowed {
        fn drop(&mut self) {
            write(self.saved);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod pkru {
    pub(super) fn allocate_key() -> Option<u32> {
        None
    }

    pub(super) struct WritesAllowed;

    impl WritesAllowed {
        pub(super) fn open(_key: u32) -> WritesAllowed {
            unreachable!("no protection key is allocated off x86-64")
        }
    }
}
