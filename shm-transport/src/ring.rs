//! The single-producer single-consumer byte ring.
//!
//! # Layout
//! A ring is a control block ([`RingControl`]: two counters, each on its own
//! cache line) and a data area of `capacity` bytes, a power of two. Both
//! counters are byte positions that only grow (`u64`: they do not wrap in
//! the life of a machine); `position & (capacity - 1)` is the offset in the
//! data area. `tail` is written by the producer only, `head` by the consumer
//! only, so each line is written by one side and read by the other.
//!
//! Positions are multiples of 8, which frees the low three bits of each
//! counter word for signalling between the two sides:
//! - [`WAITING`]: the side that *reads* this word sleeps on it as a futex;
//!   the side that writes the word must wake it after its next update.
//! - [`CLOSED`]: the side that *writes* this word has closed its end.
//! - [`DOORBELL`]: the reader of this word sleeps on a shared doorbell
//!   instead of the word; the writer must ring that. On `tail` it is the
//!   consumer waiting for a frame; on `head`, a producer that serves many
//!   rings (a service worker) waiting for room for the rest of a reply.
//!
//! Publishing a new position and learning whether the peer sleeps is one
//! atomic swap of one word. That is why a wakeup cannot be lost: the
//! sleeper sets its bit with a compare-and-swap against the value it last
//! saw, and all read-modify-writes of one word are totally ordered. Either
//! the producer's swap comes first (the sleeper's CAS fails, it re-reads and
//! sees the data) or the CAS comes first (the swap returns the bit, the
//! producer wakes the sleeper). FUTEX_WAIT then compares the word with the
//! armed value, so a wake that lands before the sleeper reaches the kernel
//! is not lost either: the word has changed and the wait returns at once.
//!
//! # Frames
//! Data is a sequence of frames: an 8-byte header (`u32` payload length,
//! `u32` flags, little-endian in one `u64`) and the payload, padded to 8
//! bytes. A frame never straddles the end of the area: when the next frame
//! does not fit before the end, the producer writes a pad frame covering the
//! rest of the area and the frame starts at offset 0. So a reader always
//! sees a frame as one contiguous slice and decodes it in place.
//!
//! # Trusting nothing the peer wrote
//! Each side keeps its own counter in process memory and never re-reads it
//! from the segment. The peer's counter and every frame header are checked
//! before use (ordering of positions, alignment, distance at most one
//! capacity, frame inside the published range and inside the area); a
//! violation is [`Error::Corrupt`], never an out-of-bounds access.

use crate::error::{Error, Result};
use crate::memory::Region;
use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// Word bit: the reader of this word sleeps on it.
pub(crate) const WAITING: u64 = 1;
/// Word bit: the writer of this word has closed its side.
pub(crate) const CLOSED: u64 = 2;
/// Word bit: the reader of this word sleeps on a doorbell shared by many
/// rings (the consumer on `tail`, the producer on `head`).
pub(crate) const DOORBELL: u64 = 4;
/// All signal bits; the rest of the word is the position.
pub(crate) const SIGNALS: u64 = WAITING | CLOSED | DOORBELL;
/// Largest position an opener accepts from a segment it did not create.
/// Positions only grow, by at most the bytes sent: at 10 GB/s a ring takes
/// 14 years to pass 2^62, so a larger value is a peer's lie, and refusing
/// it keeps every position sum of ours far from overflow.
pub(crate) const MAX_START_POSITION: u64 = 1 << 62;

/// Size of a frame header.
pub const FRAME_HEADER: usize = 8;
/// Frame flag: the message continues in the next frame.
pub(crate) const FLAG_MORE: u32 = 1;
/// Frame flag: padding up to the end of the area; skip it.
pub(crate) const FLAG_PAD: u32 = 2;
/// Frame flag: the first frame of a message of several (with `FLAG_MORE`);
/// its payload starts with the message's total length, a `u64`.
pub(crate) const FLAG_TOTAL: u32 = 8;
/// Frame flag, on the first frame of a message: the message refers to
/// bytes in its sender's payload pool.
pub(crate) const FLAG_POOL: u32 = 16;

/// The shared part of a ring: two counters on separate cache lines.
///
/// Zeroed memory is a valid, empty ring.
#[repr(C)]
pub(crate) struct RingControl {
    /// Producer position and the consumer's signal bits.
    pub(crate) tail: CachePadded<AtomicU64>,
    /// Consumer position and the producer's signal bits.
    pub(crate) head: CachePadded<AtomicU64>,
}

impl RingControl {
    #[cfg(loom)]
    pub(crate) fn new() -> RingControl {
        RingControl {
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
        }
    }
}

/// Bytes a frame of `payload` bytes takes in the ring, header included.
pub const fn frame_len(payload: usize) -> usize {
    FRAME_HEADER + ((payload + 7) & !7)
}

/// Packs a frame header.
pub(crate) const fn encode_header(len: u32, flags: u32) -> u64 {
    len as u64 | (flags as u64) << 32
}

/// Unpacks a frame header into (payload length, flags).
pub(crate) const fn decode_header(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

/// The largest payload of one frame in a ring of `capacity` bytes.
///
/// A quarter of the ring, so that a message split in frames keeps both
/// sides busy (the producer fills one frame while the consumer copies out
/// another) and so that a frame plus the pad before it always fits once the
/// ring has drained.
pub const fn max_frame_payload(capacity: usize) -> usize {
    capacity / 4 - FRAME_HEADER
}

/// Where a reserved frame goes.
pub(crate) struct Reservation {
    /// Offset of the frame header in the data area.
    pub(crate) offset: usize,
    /// Bytes of the pad frame written before it (0 if none).
    pub(crate) pad: usize,
}

/// Result of a producer's attempt to reserve room.
pub(crate) enum Reserve {
    Ready(Reservation),
    /// Not enough room; `observed` is the head word seen, to sleep on.
    Full {
        observed: u64,
    },
}

/// A published frame, ready to read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameRef {
    /// Offset of the payload in the data area.
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) flags: u32,
    /// Position just after this frame: the new head once it is released.
    pub(crate) end: u64,
}

/// Result of a consumer's attempt to find a frame.
pub(crate) enum Peek {
    Frame(FrameRef),
    /// No frame; `observed` is the tail word seen, to sleep on.
    Empty {
        observed: u64,
    },
}

/// Keeps whatever owns a ring's memory alive while a half uses it.
pub(crate) type KeepAlive = std::sync::Arc<dyn Send + Sync>;

/// The producer's half: writes frames, advances `tail`.
pub(crate) struct Producer {
    ctrl: *const RingControl,
    pub(crate) mem: Region,
    capacity: usize,
    /// Our position. Authoritative: nobody else writes `tail`.
    tail: u64,
    /// The head as last loaded. Free space is at least
    /// `capacity - (tail - head_cache)`, so the shared head (a line the
    /// consumer keeps writing) is loaded only when that is not enough.
    head_cache: u64,
    _keep: KeepAlive,
}

// SAFETY: `ctrl` points into memory kept alive by `_keep` (an Arc of the
// mapping or model), and the SPSC protocol, not thread identity, decides who
// writes what; exactly one Producer exists per ring.
unsafe impl Send for Producer {}

/// The consumer's half: reads frames, advances `head`.
pub(crate) struct Consumer {
    ctrl: *const RingControl,
    pub(crate) mem: Region,
    capacity: usize,
    /// Our position (published or not yet). Authoritative.
    head: u64,
    /// The tail as last loaded; reloaded only when we caught up with it.
    tail_cache: u64,
    _keep: KeepAlive,
}

// SAFETY: as for Producer; exactly one Consumer exists per ring.
unsafe impl Send for Consumer {}

impl Producer {
    /// # Safety
    /// `ctrl` and `mem` must belong to one ring of `capacity` bytes, stay
    /// valid while `keep` lives, and this must be the ring's only producer.
    pub(crate) unsafe fn new(
        ctrl: *const RingControl,
        mem: Region,
        capacity: usize,
        keep: KeepAlive,
    ) -> Producer {
        // SAFETY: valid by the caller's contract.
        let word = unsafe { &*ctrl }.tail.load(Ordering::Relaxed);
        let tail = word & !SIGNALS;
        Producer {
            ctrl,
            mem,
            capacity,
            tail,
            head_cache: tail,
            _keep: keep,
        }
    }

    #[inline(always)]
    pub(crate) fn ctrl(&self) -> &RingControl {
        // SAFETY: valid while `_keep` lives, which is as long as `self`.
        unsafe { &*self.ctrl }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserves room for a frame of `payload` bytes (at most
    /// [`max_frame_payload`]), writing the pad frame if one is needed.
    #[inline]
    pub(crate) fn try_reserve(&mut self, payload: usize) -> Result<Reserve> {
        let cap = self.capacity;
        let frame = frame_len(payload);
        debug_assert!(payload <= max_frame_payload(cap));
        let offset = (self.tail as usize) & (cap - 1);
        let pad = if offset + frame > cap {
            cap - offset
        } else {
            0
        };
        let need = (pad + frame) as u64;
        if (cap as u64) - (self.tail - self.head_cache) < need {
            // Acquire: pairs with the Release of the consumer's swap in
            // `Consumer::release`, so the consumer's reads of the bytes it
            // freed happen before we overwrite them.
            let word = self.ctrl().head.load(Ordering::Acquire);
            if word & CLOSED != 0 {
                return Err(Error::Closed);
            }
            let head = word & !SIGNALS;
            if head < self.head_cache || head > self.tail || self.tail - head > cap as u64 {
                return Err(Error::Corrupt(format!(
                    "consumer head {head} outside [{}, {}]",
                    self.head_cache, self.tail
                )));
            }
            self.head_cache = head;
            if (cap as u64) - (self.tail - head) < need {
                return Ok(Reserve::Full { observed: word });
            }
        }
        if pad > 0 {
            self.mem
                .write_u64(offset, encode_header((pad - FRAME_HEADER) as u32, FLAG_PAD));
        }
        Ok(Reserve::Ready(Reservation {
            offset: (offset + pad) & (cap - 1),
            pad,
        }))
    }

    /// Publishes a reserved frame whose payload (`len` bytes, at most what
    /// was reserved) is already in place. Returns the tail word as it was
    /// before, so the caller can see which sleeper (if any) to wake.
    #[inline]
    pub(crate) fn commit(&mut self, r: &Reservation, len: usize, flags: u32) -> u64 {
        self.mem
            .write_u64(r.offset, encode_header(len as u32, flags));
        self.tail += (r.pad + frame_len(len)) as u64;
        // Release: pairs with the Acquire load of `tail` in
        // `Consumer::try_peek`; the header and payload written above are
        // visible to a consumer that sees the new position.
        // Acquire: pairs with the consumer's CAS in `announce_sleep`, so the
        // signal bits we read are the ones it set. The swap also clears them
        // (they are consumed by this wake).
        let old = self.ctrl().tail.swap(self.tail, Ordering::AcqRel);
        if old & WAITING != 0 {
            crate::futex::wake(&self.ctrl().tail);
        }
        old
    }

    /// Sets `bit` on the head word if it still equals `observed` (the
    /// consumer freed nothing and did not close since we saw the ring full).
    pub(crate) fn announce_sleep(&self, observed: u64, bit: u64) -> bool {
        announce(&self.ctrl().head, observed, bit)
    }

    /// Marks our side closed and wakes a sleeping consumer.
    pub(crate) fn close(&self) -> u64 {
        // AcqRel: everything we published happens before the consumer's
        // Acquire load that sees CLOSED.
        let old = self.ctrl().tail.fetch_or(CLOSED, Ordering::AcqRel);
        if old & WAITING != 0 {
            crate::futex::wake(&self.ctrl().tail);
        }
        old
    }
}

impl Consumer {
    /// # Safety
    /// As for [`Producer::new`], for the ring's only consumer.
    pub(crate) unsafe fn new(
        ctrl: *const RingControl,
        mem: Region,
        capacity: usize,
        keep: KeepAlive,
    ) -> Consumer {
        // SAFETY: valid by the caller's contract.
        let word = unsafe { &*ctrl }.head.load(Ordering::Relaxed);
        let head = word & !SIGNALS;
        Consumer {
            ctrl,
            mem,
            capacity,
            head,
            tail_cache: head,
            _keep: keep,
        }
    }

    #[inline(always)]
    pub(crate) fn ctrl(&self) -> &RingControl {
        // SAFETY: valid while `_keep` lives, which is as long as `self`.
        unsafe { &*self.ctrl }
    }

    /// Finds the next frame, skipping pad frames. Does not release it.
    #[inline]
    pub(crate) fn try_peek(&mut self) -> Result<Peek> {
        let cap = self.capacity;
        loop {
            if self.head == self.tail_cache {
                // Acquire: pairs with the Release of the producer's swap in
                // `Producer::commit`: the frames below that position are
                // fully written.
                let word = self.ctrl().tail.load(Ordering::Acquire);
                let tail = word & !SIGNALS;
                if tail == self.head {
                    if word & CLOSED != 0 {
                        return Err(Error::Closed);
                    }
                    return Ok(Peek::Empty { observed: word });
                }
                if tail < self.head || tail - self.head > cap as u64 {
                    return Err(Error::Corrupt(format!(
                        "producer tail {tail} outside ({}, {}]",
                        self.head,
                        self.head.saturating_add(cap as u64)
                    )));
                }
                self.tail_cache = tail;
            }
            let offset = (self.head as usize) & (cap - 1);
            let available = self.tail_cache - self.head;
            let (len, flags) = decode_header(self.mem.read_u64(offset));
            let len = len as usize;
            if flags == FLAG_PAD {
                let skip = cap - offset;
                if len != skip - FRAME_HEADER || skip as u64 > available {
                    return Err(Error::Corrupt(format!(
                        "pad frame of {len} bytes at offset {offset}"
                    )));
                }
                // Not published yet: released together with the next frame.
                self.head += skip as u64;
                continue;
            }
            if flags & !(FLAG_MORE | FLAG_TOTAL | FLAG_POOL) != 0 {
                return Err(Error::Corrupt(format!("unknown frame flags {flags:#x}")));
            }
            let total = frame_len(len);
            if total as u64 > available || offset + total > cap {
                return Err(Error::Corrupt(format!(
                    "frame of {len} bytes at offset {offset} exceeds the published data ({available} bytes) or the ring"
                )));
            }
            return Ok(Peek::Frame(FrameRef {
                offset: offset + FRAME_HEADER,
                len,
                flags,
                end: self.head + total as u64,
            }));
        }
    }

    /// Gives the bytes of every frame before `end` back to the producer.
    /// Returns the head word as it was before, so the caller can see
    /// whether the producer sleeps on a doorbell ([`DOORBELL`]).
    #[inline]
    pub(crate) fn release(&mut self, end: u64) -> u64 {
        self.head = end;
        // Release: pairs with the Acquire load of `head` in
        // `Producer::try_reserve`; our reads of the frame happen before the
        // producer reuses its bytes. Acquire: pairs with the producer's CAS
        // in `Producer::announce_sleep` (its WAITING or DOORBELL bit). The
        // swap clears those bits.
        let old = self.ctrl().head.swap(end, Ordering::AcqRel);
        if old & WAITING != 0 {
            crate::futex::wake(&self.ctrl().head);
        }
        old
    }

    /// Marks our side closed (the producer's sends fail) and wakes it.
    /// Returns the head word as it was before (see [`release`](Self::release)).
    pub(crate) fn close(&self) -> u64 {
        let old = self.ctrl().head.fetch_or(CLOSED, Ordering::AcqRel);
        if old & WAITING != 0 {
            crate::futex::wake(&self.ctrl().head);
        }
        old
    }

    /// Whether the producer closed its side (it sends nothing more; what
    /// it sent before may still be there to read).
    pub(crate) fn producer_closed(&self) -> bool {
        // Acquire: pairs with the AcqRel `fetch_or` in `Producer::close`.
        self.ctrl().tail.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Sets `bit` on the tail word if it still equals `observed` (no new
    /// frame and no close since the consumer saw the ring empty).
    pub(crate) fn announce_sleep(&self, observed: u64, bit: u64) -> bool {
        announce(&self.ctrl().tail, observed, bit)
    }
}

/// The sleeper's half of the wake protocol (see the module docs). The CAS
/// succeeds only if no update of the word came between the sleeper's look
/// at the ring and now; all RMWs of one word are totally ordered, so the
/// writer's next swap is certain to return `bit`.
pub(crate) fn announce(word: &AtomicU64, observed: u64, bit: u64) -> bool {
    if observed & bit != 0 {
        return true;
    }
    // AcqRel/Acquire: on failure we re-read the ring with Acquire anyway;
    // the orderings here are belt and braces, the protocol rests on the
    // single-word modification order.
    word.compare_exchange(
        observed,
        observed | bit,
        Ordering::AcqRel,
        Ordering::Acquire,
    )
    .is_ok()
}
