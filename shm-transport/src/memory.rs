//! The bytes of a ring, as the ring code sees them.
//!
//! In production a ring's data area is a range of a shared mapping, reached
//! through a raw pointer. Under `cfg(loom)` it is an array of atomic words
//! accessed with `Relaxed` ordering: loom then lets a reader see stale bytes
//! unless the ring's Acquire/Release pairs really order them, so the model
//! checks the publication protocol and not just the counters.
//!
//! Offsets are always multiples of 8 and ranges always lie inside the area:
//! the ring validates every length a peer wrote before it gets here, and
//! these methods assert it again, so a bug of ours panics instead of
//! touching memory outside the mapping.

#[cfg(not(loom))]
pub(crate) use raw::Region;

#[cfg(loom)]
pub(crate) use model::Region;

#[cfg(not(loom))]
mod raw {
    use std::ptr::NonNull;

    /// A data area inside a mapping that outlives this value.
    pub(crate) struct Region {
        base: NonNull<u8>,
        len: usize,
    }

    // SAFETY: a Region is a pointer into a shared mapping kept alive by the
    // owner of the ring (an Arc of the mapping held by the same struct).
    // Which bytes each thread may touch is decided by the SPSC protocol, not
    // by the type: moving the handle to another thread changes nothing.
    unsafe impl Send for Region {}
    // SAFETY: as above; `&Region` only reads the pointer and length.
    unsafe impl Sync for Region {}

    impl Region {
        /// # Safety
        /// `base..base+len` must stay mapped, readable and writable for the
        /// life of the Region, and be 8-byte aligned.
        pub(crate) unsafe fn new(base: NonNull<u8>, len: usize) -> Region {
            debug_assert_eq!(base.as_ptr() as usize % 8, 0);
            Region { base, len }
        }

        #[inline(always)]
        fn check(&self, offset: usize, len: usize) {
            assert!(
                offset <= self.len && len <= self.len - offset,
                "ring access out of bounds: {offset}+{len} > {}",
                self.len
            );
        }

        /// Reads the 8-byte frame header at `offset`.
        #[inline]
        pub(crate) fn read_u64(&self, offset: usize) -> u64 {
            self.check(offset, 8);
            // SAFETY: in bounds (checked above) and 8-aligned (offsets are
            // multiples of 8 from an 8-aligned base). A volatile read: the
            // peer process may be writing memory near this, and we want one
            // load whose value we then validate, never a re-read.
            unsafe { std::ptr::read_volatile(self.base.as_ptr().add(offset) as *const u64) }
        }

        /// Writes an 8-byte frame header at `offset`.
        #[inline]
        pub(crate) fn write_u64(&self, offset: usize, value: u64) {
            self.check(offset, 8);
            // SAFETY: in bounds and aligned as in `read_u64`. The producer
            // owns the free part of the ring, where this lands.
            unsafe { std::ptr::write_volatile(self.base.as_ptr().add(offset) as *mut u64, value) }
        }

        /// Copies `src` into the area at `offset`.
        #[inline]
        pub(crate) fn write(&self, offset: usize, src: &[u8]) {
            self.check(offset, src.len());
            // SAFETY: destination in bounds (checked); `src` is ordinary
            // memory of this process, so it cannot overlap the mapping's
            // free region that the producer alone writes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    self.base.as_ptr().add(offset),
                    src.len(),
                )
            }
        }

        /// Appends the `len` bytes at `offset` to `dst` (one copy, no
        /// zero-filling first).
        #[inline]
        pub(crate) fn append_to(&self, offset: usize, len: usize, dst: &mut Vec<u8>) {
            self.check(offset, len);
            dst.reserve(len);
            let start = dst.len();
            // SAFETY: source in bounds (checked). It is a published frame,
            // which a correct producer does not write until we release it;
            // a misbehaving one can only change which bytes we copy, since
            // no reference to the shared bytes is ever made (raw bytes have
            // no invalid values, and the copy is validated afterwards as
            // untrusted). The destination is the spare capacity of our own
            // vector, `len` bytes of which `reserve` guaranteed. After the
            // copy those bytes are initialised, so the length may grow.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.base.as_ptr().add(offset),
                    dst.as_mut_ptr().add(start),
                    len,
                );
                dst.set_len(start + len);
            }
        }
    }
}

#[cfg(loom)]
mod model {
    use loom::sync::atomic::{AtomicU64, Ordering::Relaxed};

    /// Heap words standing in for shared memory, each a loom atomic.
    #[derive(Clone)]
    pub(crate) struct Region {
        words: std::sync::Arc<[AtomicU64]>,
    }

    impl Region {
        pub(crate) fn new_model(len: usize) -> Region {
            Region {
                words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
            }
        }

        pub(crate) fn read_u64(&self, offset: usize) -> u64 {
            self.words[offset / 8].load(Relaxed)
        }

        pub(crate) fn write_u64(&self, offset: usize, value: u64) {
            self.words[offset / 8].store(value, Relaxed)
        }

        pub(crate) fn write(&self, offset: usize, src: &[u8]) {
            for (i, chunk) in src.chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                self.write_u64(offset + i * 8, u64::from_le_bytes(w));
            }
        }

        pub(crate) fn append_to(&self, offset: usize, len: usize, dst: &mut Vec<u8>) {
            let start = dst.len();
            dst.resize(start + len, 0);
            self.read(offset, &mut dst[start..]);
        }

        pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
            for (i, chunk) in dst.chunks_mut(8).enumerate() {
                let w = self.read_u64(offset + i * 8).to_le_bytes();
                chunk.copy_from_slice(&w[..chunk.len()]);
            }
        }
    }
}
