//! Lent blocks: bytes of the peer's payload pool read in place, for as
//! long as their receiver keeps them, instead of copied out.
//!
//! A receiver that wants to keep a block of a message ([`PoolReader::lend`])
//! writes it into its side's hold table (in the segment's header page, see
//! `header`) before it answers; the block is then *lent* until the
//! [`LentBlock`] is dropped, which clears the slot. The pool's writer reads
//! the table before it places anything ([`held`]) and leaves lent pages
//! alone, and does not give its pool's pages back while any are lent.
//!
//! Invariants:
//! - **Nothing writes a lent block.** Its pages are read-only in the
//!   receiver's mapping (a side's view of the peer's pool always is), and
//!   unwritable in the writer's too: a side's own pool is writable only
//!   for the pages of one placement, in the thread copying into them,
//!   during the copy (`write_guard`), and that window never covers a lent
//!   page (placements are page-aligned, and lent pages are skipped). So a
//!   stray write of a
//!   buggy process faults in that process instead of changing bytes a peer
//!   reads in place; this is what makes [`LentBlock::as_slice`] sound (the
//!   argument is in ARCHITECTURE.md's trust section).
//! - **Lent before the writer can reuse it.** A block is entered in the
//!   table while its message is decoded, before the reply is sent; the
//!   writer places its next message only after it has that reply (whose
//!   ring publish, Release, pairs with the writer's Acquire of it).
//! - **Released after the last read.** Dropping the block clears its slot
//!   with Release, after every read through it; the writer loads slots with
//!   Acquire, so its writes into a page it sees free follow those reads.
//! - **Bounded.** A side holds at most [`HOLD_SLOTS`] blocks per channel, and
//!   a process at most [`LENT_CAP`] bytes in all; beyond either, a lend is
//!   refused and the caller copies the bytes out as before.
//! - **Peer values are checked.** A slot the peer wrote (the writer reads
//!   the receiver's table) is clamped to the pool: a buggy table can only
//!   make the writer skip pages (down to leaving its bytes in line), never
//!   write outside its pool.

use crate::channel::Shared;
use crate::header::{HOLDS_OFFSET, HOLD_SLOTS, PAGE};
use crate::hold_table;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

#[cfg(doc)]
use crate::PoolReader;

/// Most bytes one process holds lent at once (over all its channels):
/// beyond it, bytes are copied out instead. Lent pages stay allocated in
/// the peer's pool, so a receiver that keeps many blocks (arrays kept
/// alive in Python, say) would otherwise pin the peer's memory without
/// bound.
pub const LENT_CAP: usize = 256 << 20;

/// Bytes lent by this process now.
static LENT: AtomicUsize = AtomicUsize::new(0);

/// Bytes this process holds lent now (for tests and the operator's view).
pub fn lent_bytes() -> usize {
    LENT.load(Ordering::Relaxed)
}

/// A block of the peer's pool held in place; see the module docs. Reading
/// it costs no copy; dropping it gives the block back to the peer.
pub struct LentBlock {
    shared: Arc<Shared>,
    slot: usize,
    /// Where the bytes start in the segment.
    at: usize,
    len: usize,
    /// Bytes counted in [`LENT`] (whole pages).
    charged: usize,
}

impl LentBlock {
    /// Bytes of the block.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block has no bytes (never: empty byte strings are not
    /// lent).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, in place.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the block is lent for as long as `self` lives (its slot
        // is cleared only on drop), so no process writes it: our mapping of
        // the peer's pool is read-only, and the peer's own mapping of a lent
        // page is unwritable and never in a placement's window (module
        // docs). `at..at + len` was checked to lie in the peer's pool when
        // the block was lent.
        unsafe { self.shared.segment.mapping().lent_bytes(self.at, self.len) }
    }
}

impl std::fmt::Debug for LentBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LentBlock")
            .field("len", &self.len)
            .field("slot", &self.slot)
            .finish()
    }
}

impl Drop for LentBlock {
    fn drop(&mut self) {
        // After every read through this block: `clear` releases it to the
        // writer (Release, paired with its Acquire in `held`).
        hold_table::clear(own_table(&self.shared), self.slot);
        LENT.fetch_sub(self.charged, Ordering::Relaxed);
    }
}

/// This side's hold table (the blocks of the peer's pool it holds).
fn own_table(shared: &Shared) -> &[AtomicU64] {
    let side = shared.segment.side;
    shared
        .segment
        .mapping()
        .view_slice::<AtomicU64>(HOLDS_OFFSET[side], HOLD_SLOTS)
}

/// Lends the `len` bytes at `offset` of the peer's pool (a location already
/// checked to lie in it, starting at segment offset `at`), or `None` if the
/// location is not page-aligned, the table is full or [`LENT_CAP`] would be
/// passed: then copy them out.
pub(crate) fn lend(
    shared: &Arc<Shared>,
    offset: usize,
    at: usize,
    len: usize,
) -> Option<LentBlock> {
    if len == 0 || offset % PAGE != 0 {
        return None;
    }
    let pages = len.div_ceil(PAGE);
    let charged = pages * PAGE;
    let mut now = LENT.load(Ordering::Relaxed);
    loop {
        if now + charged > LENT_CAP {
            return None;
        }
        match LENT.compare_exchange_weak(now, now + charged, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break,
            Err(seen) => now = seen,
        }
    }
    let slot = hold_table::enter(own_table(shared), hold_table::entry(offset / PAGE, pages));
    match slot {
        Some(slot) => Some(LentBlock {
            shared: shared.clone(),
            slot,
            at,
            len,
            charged,
        }),
        None => {
            LENT.fetch_sub(charged, Ordering::Relaxed);
            None
        }
    }
}

/// The page ranges of our own pool (of `pool` bytes) the peer holds lent,
/// as byte offsets `start..end`, into `out`; returns how many.
pub(crate) fn held(shared: &Shared, pool: usize, out: &mut [(usize, usize); HOLD_SLOTS]) -> usize {
    let peer = shared.peer_side();
    let table = shared
        .segment
        .mapping()
        .view_slice::<AtomicU64>(HOLDS_OFFSET[peer], HOLD_SLOTS);
    hold_table::held(table, pool, PAGE, out)
}
