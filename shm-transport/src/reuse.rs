//! [`ReusedBuffer`]: a message buffer that keeps its memory from one
//! message to the next, within a budget.
//!
//! The first write to each fresh page of a buffer is a page fault, and a
//! large buffer freed after its message gives its pages back to the
//! kernel, so the next large message faults on every page again (4096
//! faults for 16 MiB). A `ReusedBuffer` keeps its capacity after a message
//! ([`settle`](ReusedBuffer::settle)) when two bounds allow it:
//! - the capacity is at most the owner's budget (a channel's
//!   [`keep_buffer`](crate::ChannelConfig::keep_buffer), default
//!   [`CHANNEL_BUDGET`]): a message larger than that frees its buffer;
//! - the process's retained total stays at most [`RETAINED_CAP`]: the sum,
//!   over every live `ReusedBuffer`, of its capacity above
//!   [`KEEP_BUFFER`] (below that a buffer is always kept, uncounted).
//!
//! Otherwise it falls back to a small buffer at once. Its owner calls
//! [`give_back`](ReusedBuffer::give_back) when idle (a service worker with
//! nothing to do for a tick), which frees everything above `KEEP_BUFFER`.
//!
//! Invariant: `charged` is what this buffer added to the process total,
//! exactly `capacity - KEEP_BUFFER` (or 0) as of its last settle; a
//! buffer moved between owners moves with its charge, and its drop takes
//! the charge back.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Capacity every buffer may keep, uncounted (1 MiB).
pub const KEEP_BUFFER: usize = 1 << 20;
/// Default budget of one channel's buffer (64 MiB): a message up to this
/// size reuses its buffer; a larger one frees it after use.
pub const CHANNEL_BUDGET: usize = 64 << 20;
/// Most bytes above [`KEEP_BUFFER`] that all the buffers of one process
/// keep between messages together (256 MiB).
pub const RETAINED_CAP: usize = 256 << 20;
/// Capacity of a buffer that starts or falls back small.
const SMALL: usize = 4096;

/// Bytes above `KEEP_BUFFER` that the process's buffers keep now.
static RETAINED: AtomicUsize = AtomicUsize::new(0);

/// A message buffer that keeps its memory between messages; see the
/// module docs.
///
/// ```
/// use metabridge_shm::ReusedBuffer;
/// let mut buf = ReusedBuffer::new();
/// buf.extend_from_slice(&vec![1u8; 4 << 20]);
/// buf.clear();
/// buf.settle(64 << 20); // within budget: kept
/// assert!(buf.capacity() >= 4 << 20);
/// buf.give_back(); // idle: freed
/// assert!(buf.capacity() <= metabridge_shm::KEEP_BUFFER);
/// ```
#[derive(Debug)]
pub struct ReusedBuffer {
    buf: Vec<u8>,
    charged: usize,
    /// The total this buffer counts in: the process's, or a test's own.
    total: &'static AtomicUsize,
}

impl Default for ReusedBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl ReusedBuffer {
    /// A small empty buffer.
    pub fn new() -> ReusedBuffer {
        Self::counted_in(&RETAINED)
    }

    fn counted_in(total: &'static AtomicUsize) -> ReusedBuffer {
        ReusedBuffer {
            buf: Vec::with_capacity(SMALL),
            charged: 0,
            total,
        }
    }

    /// After a message: keeps the capacity if it is at most `budget` and
    /// the process cap allows, else frees it down to a small buffer.
    #[inline]
    pub fn settle(&mut self, budget: usize) {
        let over = self.buf.capacity().saturating_sub(KEEP_BUFFER);
        if over == self.charged {
            return; // the common case: nothing grew or shrank
        }
        if over < self.charged {
            self.total.fetch_sub(self.charged - over, Ordering::Relaxed);
            self.charged = over;
            return;
        }
        let extra = over - self.charged;
        if self.buf.capacity() <= budget && charge(self.total, extra) {
            self.charged = over;
        } else {
            self.free();
        }
    }

    /// Frees the capacity above [`KEEP_BUFFER`] (for an idle owner).
    pub fn give_back(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER {
            self.free();
        }
    }

    /// Takes the bytes out, leaving a small empty buffer (and taking the
    /// charge back: the vector leaves the accounting).
    pub fn take(&mut self) -> Vec<u8> {
        self.total.fetch_sub(self.charged, Ordering::Relaxed);
        self.charged = 0;
        std::mem::replace(&mut self.buf, Vec::with_capacity(SMALL))
    }

    /// Bytes above [`KEEP_BUFFER`] that the process's buffers (and payload
    /// pools) keep now.
    pub fn retained_total() -> usize {
        RETAINED.load(Ordering::Relaxed)
    }

    fn free(&mut self) {
        self.total.fetch_sub(self.charged, Ordering::Relaxed);
        self.charged = 0;
        self.buf = Vec::with_capacity(SMALL);
    }
}

/// Counts `n` more retained bytes (a payload pool growing) if the process
/// cap allows; false (and nothing counted) if not.
pub(crate) fn try_charge(n: usize) -> bool {
    charge(&RETAINED, n)
}

/// Adds `n` to `total` if it stays at most [`RETAINED_CAP`]; else leaves
/// it as it was and says no.
fn charge(total: &AtomicUsize, n: usize) -> bool {
    // Relaxed: a counter, ordered with nothing. Two chargers at once both
    // see the other's bytes (fetch_add), so they can only fail together,
    // never overshoot.
    if total.fetch_add(n, Ordering::Relaxed) + n <= RETAINED_CAP {
        true
    } else {
        total.fetch_sub(n, Ordering::Relaxed);
        false
    }
}

/// Takes back `n` bytes counted by [`try_charge`].
pub(crate) fn uncharge(n: usize) {
    RETAINED.fetch_sub(n, Ordering::Relaxed);
}

impl From<Vec<u8>> for ReusedBuffer {
    /// Takes a vector in; it is counted from its first settle.
    fn from(buf: Vec<u8>) -> ReusedBuffer {
        ReusedBuffer {
            buf,
            charged: 0,
            total: &RETAINED,
        }
    }
}

impl Deref for ReusedBuffer {
    type Target = Vec<u8>;

    #[inline]
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for ReusedBuffer {
    #[inline]
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for ReusedBuffer {
    fn drop(&mut self) {
        self.total.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test's own total: the process's moves with every channel of
    /// the tests running beside it.
    static TOTAL: AtomicUsize = AtomicUsize::new(0);

    fn total() -> usize {
        TOTAL.load(Ordering::Relaxed)
    }

    fn buffer() -> ReusedBuffer {
        ReusedBuffer::counted_in(&TOTAL)
    }

    #[test]
    fn kept_within_budget_and_cap_then_given_back() {
        let before = total();
        let mut a = buffer();
        a.reserve_exact(8 << 20);
        a.settle(CHANNEL_BUDGET);
        assert!(a.capacity() >= 8 << 20, "kept within budget");
        assert_eq!(total(), before + a.capacity() - KEEP_BUFFER);
        // Over the budget: freed at once.
        let mut b = buffer();
        b.reserve_exact(CHANNEL_BUDGET + 1);
        b.settle(CHANNEL_BUDGET);
        assert!(b.capacity() <= SMALL);
        // Over the process cap: freed at once, the total unchanged.
        let kept = total();
        let mut c = buffer();
        c.reserve_exact(RETAINED_CAP + KEEP_BUFFER + 1);
        c.settle(usize::MAX);
        assert!(c.capacity() <= SMALL);
        assert_eq!(total(), kept);
        a.give_back();
        assert_eq!(total(), before);
        // A buffer dropped while charged takes its charge back.
        let mut d = buffer();
        d.reserve_exact(2 << 20);
        d.settle(CHANNEL_BUDGET);
        assert!(total() > before);
        drop(d);
        assert_eq!(total(), before);
        // `take` hands the vector out of the accounting.
        let mut e = buffer();
        e.reserve_exact(2 << 20);
        e.settle(CHANNEL_BUDGET);
        let v = e.take();
        assert!(v.capacity() >= 2 << 20);
        assert_eq!(total(), before);
    }
}
