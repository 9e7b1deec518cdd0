//! Sleeping on a word of shared memory, and waking whoever sleeps there.
//!
//! The words live in segments that several processes map, so these are
//! *shared* futexes (no `FUTEX_PRIVATE_FLAG`): the kernel keys them by the
//! physical page, and a wake from one process reaches a sleeper in another.
//!
//! Every futex word of this crate is the low half of an `AtomicU64` whose
//! bits also carry a position counter. The kernel compares only 32 bits,
//! which is enough: between the moment a side reads the word and the moment
//! it sleeps, the peer can advance the counter by at most one ring capacity
//! (less than 2^32), so a changed word never looks unchanged.
//!
//! Under `cfg(loom)` the kernel is replaced by a model with the same
//! contract (check-and-sleep is atomic with respect to wake), built from
//! loom's mutex and condition variable, and sleeps have no timeout: a lost
//! wakeup then shows as a deadlock that loom reports.

use crate::sync::AtomicU64;
use std::time::Duration;

#[cfg(not(target_endian = "little"))]
compile_error!("futex words are the low half of a u64: little-endian targets only");

/// Sleeps while the low 32 bits of `word` equal those of `expected`, for at
/// most `timeout`. Returns on a wake, a timeout, a signal, or at once if the
/// word already differs; the caller re-checks its condition in every case.
#[cfg(not(loom))]
pub(crate) fn wait(word: &AtomicU64, expected: u64, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned AtomicU64 for the duration of the
    // call (we hold a reference); on little-endian its address is also the
    // address of its low 32-bit half, which is what FUTEX_WAIT reads, and
    // an aligned u64 is aligned for u32. The timespec outlives the call.
    // FUTEX_WAIT only reads the word and sleeps; it writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU64 as *const u32,
            libc::FUTEX_WAIT,
            expected as u32,
            ts_ptr,
        );
    }
}

/// Wakes every sleeper on `word` (in practice at most one); public as
/// `wake_all`, for a word of the caller's own slept on with [`wait_any`].
#[cfg(not(loom))]
pub fn wake(word: &AtomicU64) {
    // SAFETY: as in `wait`, the pointer is the valid, aligned low half of a
    // live AtomicU64. FUTEX_WAKE touches no user memory at all; it only
    // looks up sleepers keyed by this address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *const AtomicU64 as *const u32,
            libc::FUTEX_WAKE,
            i32::MAX,
        );
    }
}

/// A word to sleep on with [`wait_any`], and the value it must still hold
/// (its low 32 bits) for the sleep to begin.
#[derive(Clone, Copy)]
pub struct WakeWord<'a> {
    pub(crate) word: &'a AtomicU64,
    pub(crate) expected: u64,
}

impl<'a> WakeWord<'a> {
    /// `word`, to be slept on while it holds `expected`.
    pub fn new(word: &'a AtomicU64, expected: u64) -> WakeWord<'a> {
        WakeWord { word, expected }
    }
}

/// Most words one [`wait_any`] sleeps on (the kernel's limit).
pub const WAIT_ANY_MAX: usize = 128;

/// Sleeps until one of `words` no longer holds its expected value (or is
/// woken), or until `deadline`: `futex_waitv` (Linux 5.16), one system
/// call for all of them. Returns on a wake, a timeout, a signal, or at once
/// if a word already differs; the caller re-checks in every case. Only the
/// first [`WAIT_ANY_MAX`] words are watched. Where the kernel lacks
/// `futex_waitv`, it sleeps on the first word for at most 1 ms (the caller
/// then polls the others that often).
#[cfg(not(loom))]
pub fn wait_any(words: &[WakeWord<'_>], deadline: Option<std::time::Instant>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static MISSING: AtomicBool = AtomicBool::new(false);
    #[repr(C)]
    struct FutexWaitv {
        val: u64,
        uaddr: u64,
        flags: u32,
        reserved: u32,
    }
    /// `FUTEX2_SIZE_U32`: a 32-bit word, shared between processes.
    const SIZE_U32: u32 = 0x02;
    let words = &words[..words.len().min(WAIT_ANY_MAX)];
    if words.is_empty() {
        if let Some(d) = deadline {
            std::thread::sleep(d.saturating_duration_since(std::time::Instant::now()));
        }
        return;
    }
    let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
    // Relaxed: a cache of what the kernel answered; a race only repeats the probe.
    if !MISSING.load(Ordering::Relaxed) {
        let waiters: Vec<FutexWaitv> = words
            .iter()
            .map(|w| FutexWaitv {
                val: w.expected as u32 as u64,
                uaddr: w.word as *const AtomicU64 as u64,
                flags: SIZE_U32,
                reserved: 0,
            })
            .collect();
        // The timeout is absolute, on CLOCK_MONOTONIC.
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec, which we own.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let at = left.map(|d| {
            let nanos = now.tv_nsec as u64 + d.subsec_nanos() as u64;
            libc::timespec {
                tv_sec: now
                    .tv_sec
                    .saturating_add(d.as_secs().min(i64::MAX as u64 / 2) as libc::time_t)
                    + (nanos / 1_000_000_000) as libc::time_t,
                tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
            }
        });
        let at_ptr = at
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `waiters` is an array of `words.len()` (at most 128)
        // futex_waitv entries, each the address of the aligned low half of
        // a live AtomicU64 (little-endian), which FUTEX_WAIT semantics only
        // read; the timespec outlives the call. The kernel writes no memory
        // of ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex_waitv,
                waiters.as_ptr(),
                waiters.len() as libc::c_uint,
                0 as libc::c_uint,
                at_ptr,
                libc::CLOCK_MONOTONIC,
            )
        };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
            return;
        }
        MISSING.store(true, Ordering::Relaxed);
    }
    let slice = Duration::from_millis(1);
    wait(
        words[0].word,
        words[0].expected,
        Some(left.map_or(slice, |l| l.min(slice))),
    );
}

#[cfg(loom)]
mod model {
    use loom::sync::{Condvar, Mutex};
    loom::lazy_static! {
        pub(super) static ref KERNEL: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }
}

/// Model of FUTEX_WAIT: the check of the word and going to sleep happen
/// under the "kernel" lock, as the real kernel does under its hash-bucket
/// lock, so a wake that follows a change of the word cannot slip between.
#[cfg(loom)]
pub(crate) fn wait(word: &AtomicU64, expected: u64, _timeout: Option<Duration>) {
    use crate::sync::Ordering;
    let (lock, cv) = &*model::KERNEL;
    let guard = lock.lock().unwrap();
    if word.load(Ordering::SeqCst) as u32 == expected as u32 {
        drop(cv.wait(guard).unwrap());
    }
}

/// Model of FUTEX_WAKE.
#[cfg(loom)]
pub(crate) fn wake(_word: &AtomicU64) {
    let (lock, cv) = &*model::KERNEL;
    let _guard = lock.lock().unwrap();
    cv.notify_all();
}
