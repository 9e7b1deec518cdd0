//! Where things lie in the crate's two kinds of shared memory: channel
//! segments and doorbell sets.
//!
//! These are the facts two processes must agree on byte for byte (a peer
//! built from another version checks them before it maps anything more),
//! so they sit apart from the code that creates, opens and validates each
//! kind. Both kinds start the same way: a `u64` magic number at offset 0,
//! stored last by the creator (Release) and loaded first by a peer
//! (Acquire), then a version, then the creator's [`ProcessIdentity`]
//! (pid and start time), so that a peer can tell whose memory it holds.
//!
//! ```text
//! channel segment                      doorbell set
//! 0     SegmentHeader                  0    magic "MBDOOR01"
//!       (magic "MBRIDGE1", version,    8    version | bell count << 32
//!        capacities, one SideInfo      16   owner pid
//!        per side)                     24   owner start time
//! 512   RingControl of ring 0          128  bell 0, then one bell every
//! 768   RingControl of ring 1               128 bytes
//! 2048  hold table of side 0
//! 3072  hold table of side 1
//! 4096  data of ring 0, then ring 1
//! P     payload pool of side 0, then of
//!       side 1 (P: the end of ring 1
//!       rounded up to a page; no pool
//!       in a named segment)
//! ```
//!
//! A side's payload pool holds the out-of-line bytes of the messages that
//! side sends (see `channel`): only it writes there, only its peer reads.
//! A side's hold table lists the blocks of the *peer's* pool it still
//! reads in place after their message (see `lend`): only that side writes
//! it, and the pool's writer reads it to leave those blocks alone.
//!
//! [`ProcessIdentity`]: crate::ProcessIdentity

use crate::ring::RingControl;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// "MBRIDGE1" read as a little-endian u64: the first word of a segment.
pub(crate) const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"MBRIDGE1");
/// Version of the segment layout this build reads and writes. Version 2:
/// the first frame of a message of several carries its total length, and
/// each side has a payload pool after the rings. Version 3: pool
/// placements are page-aligned, and each side has a hold table.
pub const LAYOUT_VERSION: u32 = 3;
/// Bytes before the first data area: header and ring controls.
pub const HEADER_LEN: usize = 4096;
/// Offsets of the two ring control blocks.
pub(crate) const CONTROL_OFFSET: [usize; 2] = [512, 768];
/// Offsets of the two sides' hold tables (in the header page, so that
/// they are reserved and mapped with it).
pub(crate) const HOLDS_OFFSET: [usize; 2] = [2048, 3072];
/// Slots of a hold table: one `u64` each, 0 for free, else a held block
/// of the peer's pool as `first page << 32 | pages` (see `lend`).
pub const HOLD_SLOTS: usize = 128;
/// Smallest ring capacity accepted.
pub const MIN_CAPACITY: usize = 64;
/// Largest ring capacity accepted (1 GiB).
pub const MAX_CAPACITY: usize = 1 << 30;
/// Largest payload pool of one side accepted (1 GiB).
pub const MAX_POOL: usize = 1 << 30;
/// Pools start and end on page boundaries (their pages are reserved,
/// populated and given back page by page).
pub(crate) const PAGE: usize = 4096;

/// Where the pools of a segment with these ring capacities start.
pub(crate) const fn pool_offset(capacity: [usize; 2]) -> usize {
    (HEADER_LEN + capacity[0] + capacity[1]).next_multiple_of(PAGE)
}

/// Bytes of a segment with these ring capacities and pools.
pub(crate) const fn segment_len(capacity: [usize; 2], pool: [usize; 2]) -> usize {
    if pool[0] == 0 && pool[1] == 0 {
        HEADER_LEN + capacity[0] + capacity[1]
    } else {
        pool_offset(capacity) + pool[0] + pool[1]
    }
}

/// What one side of a segment publishes about itself.
#[repr(C)]
pub(crate) struct SideInfo {
    /// 0 until the side has attached; then its pid.
    pub(crate) pid: AtomicU64,
    pub(crate) start_time: AtomicU64,
    /// The CPU it last ran on, plus one (0: not known).
    pub(crate) cpu: AtomicU64,
    /// Set by compare-and-swap by the one process that takes the side.
    pub(crate) claimed: AtomicU64,
}

/// The header at offset 0 of a segment.
///
/// Every field is an atomic: the peer process can write any of them at any
/// time, and a plain field read while another process writes it would be a
/// data race (undefined behaviour). Each is loaded once and validated.
#[repr(C)]
pub(crate) struct SegmentHeader {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) header_len: AtomicU32,
    pub(crate) capacity: [AtomicU64; 2],
    pub(crate) total_len: AtomicU64,
    /// Bytes of each side's payload pool (0: none).
    pub(crate) pool_len: [AtomicU64; 2],
    pub(crate) sides: [CachePadded<SideInfo>; 2],
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() <= CONTROL_OFFSET[0]);
const _: () = assert!(std::mem::size_of::<RingControl>() <= CONTROL_OFFSET[1] - CONTROL_OFFSET[0]);
const _: () = assert!(CONTROL_OFFSET[1] + std::mem::size_of::<RingControl>() <= HOLDS_OFFSET[0]);
const _: () = assert!(HOLDS_OFFSET[0] + HOLD_SLOTS * 8 <= HOLDS_OFFSET[1]);
const _: () = assert!(HOLDS_OFFSET[1] + HOLD_SLOTS * 8 <= HEADER_LEN);

/// "MBDOOR01" as a little-endian u64: the first word of a doorbell set.
pub(crate) const DOORBELL_MAGIC: u64 = u64::from_le_bytes(*b"MBDOOR01");
/// Version of the doorbell layout, in the low half of the word at 8 (the
/// bell count is in the high half).
pub(crate) const DOORBELL_VERSION: u64 = 1;
/// Offset of the word holding the version and the bell count.
pub(crate) const DOORBELL_META_OFFSET: usize = 8;
/// Offset of the creator's pid.
pub(crate) const OWNER_PID_OFFSET: usize = 16;
/// Offset of the creator's start time.
pub(crate) const OWNER_START_OFFSET: usize = 24;
/// Offset of the first bell; each bell has a 128-byte line of its own, so
/// that ringing one never bounces the cache line of another.
pub(crate) const BELLS_OFFSET: usize = 128;
/// Distance between two bells.
pub(crate) const BELL_STRIDE: usize = 128;
/// Most bells one set may hold.
pub const MAX_BELLS: usize = 1024;

/// Bytes of a doorbell set of `count` bells.
pub(crate) const fn doorbells_len(count: usize) -> usize {
    BELLS_OFFSET + count * BELL_STRIDE
}
