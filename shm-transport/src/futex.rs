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

/// Wakes every sleeper on `word` (in practice at most one).
#[cfg(not(loom))]
pub(crate) fn wake(word: &AtomicU64) {
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
