//! The spin licence: one process-wide budget of threads that may spin (or
//! poll) while they wait, shared by every transport.
//!
//! Waiting by spinning pays only while the spinners leave CPUs to the
//! threads that do the work: a shared-memory reader spinning on its ring
//! and a TCP client polling its socket compete for the same CPUs, so they
//! draw on one budget. At most `CPUs − 1` threads of the process (at least
//! one) hold a licence at a time; a thread refused one waits another way
//! (yields its CPU, or blocks in the kernel).
//!
//! Invariants:
//! - `HOLDERS` counts the licences alive plus, transiently, a thread in
//!   [`SpinLicence::take`] that is about to give back the one it could not
//!   have; so more than [`max_spinners`] licences never exist at once;
//! - a licence is given back exactly once, when it is dropped.
//!
//! The counter publishes nothing (no data is handed over through it), so
//! every access is `Relaxed`.
//!
//! ```
//! use metabridge_spin::{max_spinners, SpinLicence};
//! let held: Vec<SpinLicence> = std::iter::from_fn(SpinLicence::take).take(1000).collect();
//! assert_eq!(held.len(), max_spinners());
//! assert!(SpinLicence::take().is_none());
//! drop(held);
//! assert!(SpinLicence::take().is_some());
//! ```
#![deny(missing_docs, unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

/// Licences held now (see the crate's invariants).
static HOLDERS: AtomicUsize = AtomicUsize::new(0);

/// How many licences may exist at once: the CPUs this process may use,
/// less one, and at least one.
pub fn max_spinners() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
    })
}

/// The right to spin or poll while waiting; given back on drop.
#[derive(Debug)]
#[must_use = "the licence is given back when dropped"]
pub struct SpinLicence(());

impl SpinLicence {
    /// A licence, if fewer than [`max_spinners`] threads hold one now.
    #[inline]
    pub fn take() -> Option<SpinLicence> {
        if HOLDERS.fetch_add(1, Relaxed) < max_spinners() {
            Some(SpinLicence(()))
        } else {
            HOLDERS.fetch_sub(1, Relaxed);
            None
        }
    }
}

impl Drop for SpinLicence {
    #[inline]
    fn drop(&mut self) {
        HOLDERS.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};

    /// Threads that take and drop licences in a loop never hold more than
    /// the budget at once (counted by the holders themselves), and every
    /// licence comes back.
    #[test]
    fn the_budget_is_never_exceeded_and_every_licence_comes_back() {
        let threads = 8 * max_spinners().max(2);
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (holding, most, start) = (holding.clone(), most.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut granted = 0u32;
                    for _ in 0..20_000 {
                        if let Some(licence) = SpinLicence::take() {
                            granted += 1;
                            let now = holding.fetch_add(1, Relaxed) + 1;
                            most.fetch_max(now, Relaxed);
                            std::hint::spin_loop();
                            holding.fetch_sub(1, Relaxed);
                            drop(licence);
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(granted > 0, "no thread ever got a licence");
        assert!(
            most.load(Relaxed) <= max_spinners(),
            "{} licences were held at once, the budget is {}",
            most.load(Relaxed),
            max_spinners()
        );
        let all: Vec<SpinLicence> = std::iter::from_fn(SpinLicence::take).take(10_000).collect();
        assert_eq!(all.len(), max_spinners(), "a licence was lost or leaked");
    }
}
