//! Payload pools: where a channel's large byte strings travel out of line.
//!
//! Each side of an anonymous channel has a pool after the rings of its
//! segment (see `header`): the bytes of a message it sends that are too
//! large to be worth streaming through the ring go there, written once by
//! the sender ([`PoolWriter::place`]), and the message carries only where
//! they lie; the receiver copies them out once, straight into the value it
//! decodes ([`PoolReader::read`]). A 16 MiB payload is then copied twice
//! end to end, not four times (into a send buffer, into the ring, out of
//! the ring, into the value).
//!
//! Invariants:
//! - **One message at a time.** A side places the bytes of its next
//!   message from the pool's start again: a channel carries a request,
//!   then its reply, then the next request, so the peer has finished
//!   reading a message before its sender writes the next one. A peer that
//!   breaks this (a buggy one) only changes which bytes the reader copies.
//! - **Copy out, never a reference.** The peer maps the whole segment
//!   read-write and can write its pool at any time, so the reader never
//!   forms a `&[u8]` over it: [`PoolReader::read`] copies through a raw
//!   pointer (via [`SharedMapping`](crate::mapping::SharedMapping)), and
//!   the copy is the value the decoder returns.
//! - **No fault on the call path, no SIGBUS ever.** Pool pages are
//!   reserved (`posix_fallocate`) and mapped (`MADV_POPULATE_WRITE`) by
//!   the sender before it first writes them, counted in the process's
//!   retained total ([`RETAINED_CAP`](crate::RETAINED_CAP)): a pool that
//!   would pass it, or a full memory quota, leaves the bytes in line (the
//!   ring's streamed path) instead of failing the call. The reader maps
//!   pages as they first come into use (`MADV_POPULATE_READ`). The
//!   segment is sealed against shrinking, so no page can vanish.
//! - **Peer values are checked.** A location must be 8-byte aligned and
//!   lie inside the pool, its length at most the channel's `max_message`:
//!   anything else is [`Error::Corrupt`], before any copy or allocation.

use crate::channel::Shared;
use crate::error::{Error, Result};
use crate::header::{HOLD_SLOTS, PAGE};
use crate::lend::{self, LentBlock};
use crate::reuse;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Alignment of every placement in a pool: a page, so that a block lent
/// to the peer and the window of a later placement never share a page
/// (see `lend`).
pub const POOL_ALIGN: usize = PAGE;
/// The pool's reservation grows in steps of this much (fewer system calls
/// for a run of growing messages).
const RESERVE_STEP: usize = 1 << 20;

/// Places a message's large byte strings in its sender's pool; see the
/// module docs. Got from [`Sender::pool_writer`](crate::Sender::pool_writer),
/// one per message.
pub struct PoolWriter {
    shared: Arc<Shared>,
    /// Where the next placement goes.
    cursor: usize,
    placed: bool,
}

impl PoolWriter {
    pub(crate) fn new(shared: &Arc<Shared>) -> Option<PoolWriter> {
        (shared.segment.pool_len(shared.segment.side) > 0).then(|| PoolWriter {
            shared: shared.clone(),
            cursor: 0,
            placed: false,
        })
    }

    /// Copies `bytes` into the pool and returns where they lie (offset,
    /// length), or `None` if they do not fit what is left of it around the
    /// blocks the peer holds lent, or its pages could not be reserved (the
    /// process's retained cap, or no memory): then send them in line.
    pub fn place(&mut self, bytes: &[u8]) -> Option<(u64, u64)> {
        let seg = &self.shared.segment;
        let side = seg.side;
        let pool = seg.pool_len(side);
        let mut lent = [(0, 0); HOLD_SLOTS];
        let n = lend::held(&self.shared, pool, &mut lent);
        let mut start = self.cursor.next_multiple_of(POOL_ALIGN);
        let end = loop {
            let end = start.checked_add(bytes.len())?;
            if end > pool {
                return None;
            }
            let pages_end = end.next_multiple_of(PAGE);
            match lent[..n].iter().find(|&&(s, e)| s < pages_end && start < e) {
                Some(&(_, e)) => start = e,
                None => break end,
            }
        };
        // The pages this placement writes: made writable for the copy only.
        let mut window = start..end.next_multiple_of(PAGE).min(pool);
        let reserved = self.shared.pool_reserved.load(Ordering::Relaxed);
        let mut grown = reserved;
        if end > reserved {
            grown = end.next_multiple_of(RESERVE_STEP).min(pool);
            let extra = grown - reserved;
            if !reuse::try_charge(extra) {
                return None;
            }
            if let Err(e) = seg.reserve_pool(side, reserved, extra) {
                reuse::uncharge(extra);
                tracing::debug!(error = %e, "payload pool not grown: bytes go in line");
                return None;
            }
            // Relaxed: only this side's sender reads or writes it.
            self.shared.pool_reserved.store(grown, Ordering::Relaxed);
            window.end = window.end.max(grown);
        }
        let fresh = (grown > reserved).then_some(reserved..grown);
        if let Err(e) = seg.write_own_pool(window, start, bytes, fresh) {
            tracing::debug!(error = %e, "payload pool not writable: bytes go in line");
            return None;
        }
        self.cursor = end;
        self.placed = true;
        Some((start as u64, bytes.len() as u64))
    }

    /// Whether anything was placed: then flag the message with
    /// [`Sender::refer_to_pool`](crate::Sender::refer_to_pool).
    pub fn placed(&self) -> bool {
        self.placed
    }

    /// Ends a message: returns whether anything was placed for it, and
    /// starts the next one from the pool's start again (a writer kept for
    /// the channel's life serves one message after another).
    pub fn finish_message(&mut self) -> bool {
        self.cursor = 0;
        std::mem::take(&mut self.placed)
    }
}

/// Gives a side's pool pages back and uncharges them, unless the peer
/// holds some of them lent (then they are kept until a later idle moment).
pub(crate) fn give_back(shared: &Shared) {
    let seg = &shared.segment;
    let mut lent = [(0, 0); HOLD_SLOTS];
    if lend::held(shared, seg.pool_len(seg.side), &mut lent) > 0 {
        return;
    }
    let reserved = shared.pool_reserved.swap(0, Ordering::Relaxed);
    if reserved > 0 {
        if let Err(e) = seg.release_pool(seg.side, 0, reserved) {
            tracing::debug!(error = %e, "payload pool pages not given back");
        }
        reuse::uncharge(reserved);
    }
}

/// Copies byte strings out of the peer's pool; see the module docs. Got
/// from [`Receiver::pool_reader`](crate::Receiver::pool_reader).
#[derive(Clone)]
pub struct PoolReader {
    shared: Arc<Shared>,
}

impl PoolReader {
    pub(crate) fn new(shared: &Arc<Shared>) -> Option<PoolReader> {
        (shared.segment.pool_len(shared.peer_side()) > 0).then(|| PoolReader {
            shared: shared.clone(),
        })
    }

    /// Checks a location the peer sent and maps its pages if they are new
    /// to us; returns its start in the segment.
    fn locate(&self, offset: u64, len: u64) -> Result<usize> {
        let seg = &self.shared.segment;
        let side = self.shared.peer_side();
        let pool = seg.pool_len(side) as u64;
        let end = offset.checked_add(len);
        if offset % POOL_ALIGN as u64 != 0
            || !end.is_some_and(|e| e <= pool)
            || len > self.shared.max_message
        {
            return Err(Error::Corrupt(format!(
                "a pool location of {len} bytes at offset {offset}, in a pool of {pool} bytes \
                 ({POOL_ALIGN}-byte aligned, inside the pool, at most {} bytes)",
                self.shared.max_message
            )));
        }
        let end = end.unwrap_or(0) as usize;
        let mapped = self.shared.peer_pool_mapped.load(Ordering::Relaxed);
        if end > mapped {
            // The location's own pages only, never the gap before them: a
            // location far into the pool must not make us map (and so
            // allocate) everything below it.
            let from = (offset as usize / PAGE) * PAGE;
            let to = end.next_multiple_of(PAGE).min(pool as usize);
            seg.populate_pool(side, from, to - from)?;
            // Relaxed: only this side's receiver reads or writes it.
            self.shared.peer_pool_mapped.store(to, Ordering::Relaxed);
        }
        Ok(seg.pool_start(side) + offset as usize)
    }

    /// Checks a location the peer sent (page-aligned, inside the pool,
    /// at most the channel's `max_message` long), before a caller
    /// allocates for it.
    pub fn check(&self, offset: u64, len: u64) -> Result<()> {
        self.locate(offset, len).map(|_| ())
    }

    /// A copy of the `len` bytes at `offset` of the peer's pool (one copy,
    /// straight into the returned vector).
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let at = self.locate(offset, len)?;
        Ok(self
            .shared
            .segment
            .mapping()
            .copy_out(at..at + len as usize))
    }

    /// Copies the `dst.len()` bytes at `offset` of the peer's pool into
    /// `dst` (for a caller that owns the destination, such as a Python
    /// `bytes` object being built).
    pub fn read_into(&self, offset: u64, dst: &mut [u8]) -> Result<()> {
        let at = self.locate(offset, dst.len() as u64)?;
        self.shared.segment.mapping().copy_into(at, dst);
        Ok(())
    }
}

impl PoolReader {
    /// Holds the `len` bytes at `offset` of the peer's pool lent, to be
    /// read in place (see `lend`): `Ok(None)` when this channel's hold
    /// table is full or the process holds [`LENT_CAP`](crate::LENT_CAP)
    /// bytes already (copy them out with [`read`](Self::read) then); an
    /// error for a location that is not the peer's to send. Call it while
    /// decoding the message, before answering it.
    pub fn lend(&self, offset: u64, len: u64) -> Result<Option<LentBlock>> {
        let at = self.locate(offset, len)?;
        Ok(lend::lend(&self.shared, offset as usize, at, len as usize))
    }
}
