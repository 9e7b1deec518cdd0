//! The hold table: the slots in which a receiver names the blocks of its
//! peer's pool it holds lent (see `lend`), and how the writer reads them.
//!
//! A slot is one `u64`: 0 when free, else the block's first page (high 32
//! bits) and its length in pages (low 32 bits, at least 1, so a held block
//! is never 0). The receiver takes a slot with a compare-exchange (a block
//! may be dropped on another thread while it takes one, freeing a slot
//! concurrently) and frees it with a Release store after its last read;
//! the writer loads every slot with Acquire before it places, and clamps
//! what it reads to its pool (the table is the peer's to write).
//!
//! Built under `cfg(loom)` too: `loom_tests` model-checks these very
//! functions against a writer that reuses the pages it sees free.

use crate::sync::{AtomicU64, Ordering};

/// The slot value of a block of `pages` pages (at least 1) from page
/// `first_page` on.
pub(crate) fn entry(first_page: usize, pages: usize) -> u64 {
    debug_assert!(pages >= 1, "an empty block is never lent");
    (first_page as u64) << 32 | pages as u64
}

/// Takes a free slot of `table` for `value`; its index, or `None` if the
/// table is full.
pub(crate) fn enter(table: &[AtomicU64], value: u64) -> Option<usize> {
    // AcqRel: a slot is taken by one block only (a block dropped on another
    // thread frees slots concurrently); the writer sees the entry through
    // the ring publish of our reply, which follows this in program order.
    (0..table.len()).find(|&i| {
        table[i]
            .compare_exchange(0, value, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

/// Frees slot `slot` of `table`, after the last read of its block.
pub(crate) fn clear(table: &[AtomicU64], slot: usize) {
    // Release: pairs with the writer's Acquire load in `held`, so that
    // every read of the block happens before the writer reuses its pages.
    table[slot].store(0, Ordering::Release);
}

/// The page ranges of a pool of `pool` bytes (pages of `page` bytes) that
/// `table` names held, as byte offsets `start..end`, into `out`; returns
/// how many (at most `out.len()`).
pub(crate) fn held(
    table: &[AtomicU64],
    pool: usize,
    page: usize,
    out: &mut [(usize, usize)],
) -> usize {
    let mut n = 0;
    for slot in table {
        if n == out.len() {
            break;
        }
        // Acquire: pairs with the Release store of `clear` (a slot seen
        // free was released after its block's last read).
        let v = slot.load(Ordering::Acquire);
        if v == 0 {
            continue;
        }
        // A peer's value: clamped to the pool, never trusted to be sane.
        let first = ((v >> 32) as usize).saturating_mul(page).min(pool);
        let pages = (v & 0xffff_ffff) as usize;
        let end = first.saturating_add(pages.saturating_mul(page)).min(pool);
        if first < end {
            out[n] = (first, end);
            n += 1;
        }
    }
    n
}
