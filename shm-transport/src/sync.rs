//! Atomics and futex words, swapped for loom's models under `cfg(loom)`.
//!
//! Everything lock-free in this crate names its atomics through this module,
//! so that `RUSTFLAGS="--cfg loom" cargo test --release -p metabridge-shm --lib loom`
//! model-checks the very code that ships.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

/// A hint to the CPU that we are in a spin loop (a real `pause` in
/// production; a yield point under loom, so the model can switch threads).
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
