//! Live counters: per service and endpoint, calls, errors, calls in
//! flight and a latency histogram, kept by the service in shared memory and
//! read by other processes (`metabridge list`, `metabridge stats`).
//!
//! **Where.** The counters live in a sealed memfd (its size can never
//! change, so no mapping of it can fault), created when the service
//! starts. A reader asks for it over the service's control socket
//! (`OP_STATS` in `control.rs`, after the same `SO_PEERCRED` check as a
//! channel set-up) and gets a descriptor opened read-only; it maps that and
//! reads the atomics ([`fetch`], [`Snapshot`]). A read-only descriptor
//! alone would not keep the counters true: a memfd's inode is mode 0777,
//! so its holder could open `/proc/self/fd/N` again read-write. The
//! service therefore seals the segment against future writes
//! (`F_SEAL_FUTURE_WRITE`, then `F_SEAL_SEAL`) as soon as it has mapped
//! it: its own mapping keeps counting, and no descriptor can write, map
//! writable or punch holes any more. A reader refuses a segment without
//! that seal.
//!
//! **Layout** (version [`VERSION`], all words little-endian `u64`):
//!
//! ```text
//! header (128 bytes): magic "MBSTATS1", version | header_bytes << 32,
//!                     slots | endpoints << 32, block_bytes, names_offset,
//!                     names_len, blocks_offset, buckets | sample_every << 32,
//!                     started_at (Unix seconds)
//! names:              MessagePack [[name, [param, ..] or nil], ..], one per endpoint
//! blocks:             `slots` blocks of `block_bytes` (a multiple of 128), one per
//!                     thread that ran endpoints or sent replies; in each:
//!                     error replies (any cause) and 7 spare words, then per
//!                     endpoint: started, done, errors, samples, sampled_ns,
//!                     3 spare, then `buckets` histogram counts
//! ```
//!
//! **Cost on the call path.** Each thread that runs endpoints claims a
//! block of its own the first time (a thread-local index), so no two
//! threads write the same cache line, and as the block's only writer it
//! updates its words with relaxed loads and stores (no read-modify-write,
//! no system call). Threads past the last block share it, with
//! `fetch_add`. One call in [`SAMPLE_EVERY`] is timed (two clock reads)
//! into a log-linear histogram (4 buckets per power of two of
//! nanoseconds). Calls in flight are `started − done` summed over blocks.
//! The reader validates every size and count against the mapping before it
//! reads a word. `METABRIDGE_STATS=0` in a service's environment turns the
//! counters off (to measure what they cost: `examples/bench.rs`).

use crate::error::{Error, Result};
use metabridge_shm::mapping::{Access, SharedMapping};
use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `"MBSTATS1"`: the first word of a counters segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MBSTATS1");
/// Layout version of the counters segment.
pub const VERSION: u32 = 1;
/// Histogram buckets per endpoint (see [`bucket_of`]).
pub const BUCKETS: usize = 160;
/// One call in this many is timed into the histogram.
pub const SAMPLE_EVERY: u64 = 16;

const HEADER_BYTES: usize = 128;
/// Words at the start of each block, for the service as a whole: error
/// replies (of any cause), then spare words.
const SERVICE_WORDS: usize = 8;
const ERROR_REPLIES: usize = 0;
/// `{"status": "error", ...`: how every error reply of this crate starts.
const ERROR_PREFIX: &[u8] = b"\x82\xa6status\xa5error";
/// Words per endpoint before its buckets.
const EP_HEAD_WORDS: usize = 8;
const EP_WORDS: usize = EP_HEAD_WORDS + BUCKETS;
const STARTED: usize = 0;
const DONE: usize = 1;
const ERRORS: usize = 2;
const SAMPLES: usize = 3;
const SAMPLED_NS: usize = 4;
/// Readers refuse more than this (a corrupt header must not make them
/// allocate or loop without bound).
const MAX_SLOTS: usize = 4096;
const MAX_ENDPOINTS: usize = 4096;
const MAX_NAMES_BYTES: usize = 1 << 20;

/// The histogram bucket of a duration of `ns` nanoseconds: exact below 8,
/// then 4 buckets per power of two (relative width 25%), the last one
/// open-ended (above ~550 s).
pub fn bucket_of(ns: u64) -> usize {
    if ns < 8 {
        return ns as usize;
    }
    let p = 63 - ns.leading_zeros() as usize; // >= 3
    let sub = ((ns >> (p - 2)) & 3) as usize;
    (8 + (p - 3) * 4 + sub).min(BUCKETS - 1)
}

/// The smallest duration (ns) that falls in bucket `b`.
pub fn bucket_floor(b: usize) -> u64 {
    if b < 8 {
        return b as u64;
    }
    let p = (b - 8) / 4 + 3;
    let sub = ((b - 8) % 4) as u64;
    (1u64 << p) + (sub << (p - 2))
}

/// A representative duration (ns) of bucket `b`: its midpoint.
pub fn bucket_mid(b: usize) -> u64 {
    if b < 8 {
        return b as u64;
    }
    let lo = bucket_floor(b);
    lo + (bucket_floor(b + 1).saturating_sub(lo)) / 2
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// (id of the counters, block index) this thread writes.
    static MINE: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// The writing side: owned by a running service.
pub(crate) struct Counters {
    /// The service's writable mapping of the segment.
    map: SharedMapping,
    /// The segment, opened read-only, for readers.
    read_only: OwnedFd,
    slots: usize,
    endpoints: usize,
    block_words: usize,
    blocks_word: usize,
    next_slot: AtomicUsize,
    id: usize,
}

/// An endpoint's words in the calling thread's block.
#[derive(Clone, Copy)]
pub(crate) struct Slot<'a> {
    words: &'a [AtomicU64],
    exclusive: bool,
}

impl Slot<'_> {
    #[inline]
    fn add(&self, at: usize, n: u64) -> u64 {
        let w = &self.words[at];
        if self.exclusive {
            // The only writer of this word: a load and a store, no
            // read-modify-write.
            let v = w.load(Ordering::Relaxed);
            w.store(v.wrapping_add(n), Ordering::Relaxed);
            v
        } else {
            w.fetch_add(n, Ordering::Relaxed)
        }
    }
}

/// One call being counted; counts as an error if dropped unfinished (a
/// panic).
pub(crate) struct Call<'a> {
    counters: &'a Counters,
    endpoint: usize,
    t0: Option<Instant>,
    done: bool,
}

impl Call<'_> {
    /// Ends the call: done (and an error unless `ok`), timed if sampled.
    #[inline]
    pub(crate) fn finish(mut self, ok: bool) {
        self.done = true;
        self.counters.end(self.endpoint, ok, self.t0);
    }
}

impl Call<'_> {
    /// Leaves the call to be finished by an [`OwnedCall`]; its start time
    /// if sampled.
    pub(crate) fn into_start(mut self) -> Option<Instant> {
        self.done = true;
        self.t0
    }
}

/// A call counted across threads (an async endpoint: started on a worker,
/// finished on a runtime thread); an error if dropped unfinished.
pub(crate) struct OwnedCall {
    counters: std::sync::Arc<Counters>,
    endpoint: usize,
    t0: Option<Instant>,
    done: bool,
}

impl OwnedCall {
    pub(crate) fn new(
        counters: std::sync::Arc<Counters>,
        endpoint: usize,
        t0: Option<Instant>,
    ) -> OwnedCall {
        OwnedCall {
            counters,
            endpoint,
            t0,
            done: false,
        }
    }

    /// Ends the call (see [`Call::finish`]).
    pub(crate) fn finish(mut self, ok: bool) {
        self.done = true;
        self.counters.end(self.endpoint, ok, self.t0);
    }
}

impl Drop for OwnedCall {
    fn drop(&mut self) {
        if !self.done {
            self.counters.end(self.endpoint, false, self.t0);
        }
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.counters.end(self.endpoint, false, self.t0);
        }
    }
}

impl Counters {
    /// A counters segment for `endpoints` (name, parameter names) written
    /// by up to `slots` threads (more share the last block).
    pub(crate) fn create(
        endpoints: &[(String, Option<Vec<String>>)],
        slots: usize,
    ) -> Result<Counters> {
        let slots = slots.clamp(2, MAX_SLOTS);
        let n = endpoints.len().min(MAX_ENDPOINTS);
        let names =
            rmp_serde::to_vec(&endpoints[..n]).map_err(|source| crate::ProtocolError::Encode {
                what: "the endpoint names",
                source,
            })?;
        let names_offset = HEADER_BYTES;
        let blocks_offset = (names_offset + names.len()).next_multiple_of(128);
        let block_bytes = ((SERVICE_WORDS + n * EP_WORDS) * 8).next_multiple_of(128);
        let len = blocks_offset + slots * block_bytes;
        let shm_error = |e: metabridge_shm::Error| Error::Io(std::io::Error::other(e.to_string()));
        let fd =
            metabridge_shm::memfd::create_for_one_writer(c"metabridge-stats", len, "live counters")
                .map_err(shm_error)?;
        let words = [
            MAGIC,
            VERSION as u64 | (HEADER_BYTES as u64) << 32,
            slots as u64 | (n as u64) << 32,
            block_bytes as u64,
            names_offset as u64,
            names.len() as u64,
            blocks_offset as u64,
            BUCKETS as u64 | SAMPLE_EVERY << 32,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ];
        // A memfd of exactly `len` bytes sealed against shrinking, by
        // anyone: the mapping cannot fault.
        let map = SharedMapping::sealed(fd.as_fd(), len, Access::ReadWrite)?;
        map.populate(0, len)?; // counted on every call: no fault on the way
        for (i, w) in words.iter().enumerate() {
            map.write_bytes(i * 8, &w.to_le_bytes());
        }
        map.write_bytes(names_offset, &names);
        // From here on only `map` can change the counters (see the module
        // docs); the writable descriptor itself is dropped below.
        metabridge_shm::memfd::seal_writes(fd.as_fd()).map_err(shm_error)?;
        let read_only = reopen_read_only(fd.as_fd())?;
        Ok(Counters {
            map,
            read_only,
            slots,
            endpoints: n,
            block_words: block_bytes / 8,
            blocks_word: blocks_offset / 8,
            next_slot: AtomicUsize::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The read-only descriptor handed to readers.
    pub(crate) fn read_only_fd(&self) -> BorrowedFd<'_> {
        self.read_only.as_fd()
    }

    /// This thread's block index (claimed on first use).
    #[inline]
    fn block(&self) -> usize {
        let (id, k) = MINE.with(|m| m.get());
        if id == self.id {
            return k;
        }
        let k = self
            .next_slot
            .fetch_add(1, Ordering::Relaxed)
            .min(self.slots - 1);
        MINE.with(|m| m.set((self.id, k)));
        k
    }

    /// `len` words of this thread's block from word `offset` on.
    #[inline]
    fn words(&self, offset: usize, len: usize) -> Slot<'_> {
        let k = self.block();
        let at = self.blocks_word + k * self.block_words + offset;
        // Callers keep `offset + len` within a block (the service words,
        // or one endpoint's with endpoint < endpoints), and k < slots, so
        // the words are within the mapping (the slice checks it again).
        let words = self.map.view_slice::<AtomicU64>(at * 8, len);
        Slot {
            words,
            // Only the last block can have several writers.
            exclusive: k < self.slots - 1,
        }
    }

    #[inline]
    fn slot(&self, endpoint: usize) -> Slot<'_> {
        self.words(SERVICE_WORDS + endpoint * EP_WORDS, EP_WORDS)
    }

    /// Counts `reply` if it is an error reply (of any cause: an endpoint's
    /// error, or a request refused before any endpoint). A success costs
    /// one comparison of its first bytes.
    #[inline]
    pub(crate) fn note_reply(&self, reply: &[u8]) {
        if reply.starts_with(ERROR_PREFIX) {
            self.words(0, SERVICE_WORDS).add(ERROR_REPLIES, 1);
        }
    }

    /// Starts counting a call of endpoint `endpoint` (its index in the
    /// names table); `None` past the table.
    #[inline]
    pub(crate) fn start(&self, endpoint: usize) -> Option<Call<'_>> {
        if endpoint >= self.endpoints {
            return None;
        }
        let n = self.slot(endpoint).add(STARTED, 1);
        Some(Call {
            counters: self,
            endpoint,
            t0: (n % SAMPLE_EVERY == 0).then(Instant::now),
            done: false,
        })
    }

    #[inline]
    fn end(&self, endpoint: usize, ok: bool, t0: Option<Instant>) {
        // The block of the thread that ends the call (an async call ends
        // on a runtime thread).
        let s = self.slot(endpoint);
        if !ok {
            s.add(ERRORS, 1);
        }
        if let Some(t0) = t0 {
            let ns = t0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            s.add(EP_HEAD_WORDS + bucket_of(ns), 1);
            s.add(SAMPLES, 1);
            s.add(SAMPLED_NS, ns);
        }
        // Last: a reader that sees `done` sees the rest of this call.
        s.add(DONE, 1);
    }
}

/// Opens `fd` again through `/proc/self/fd`, read-only: a new open file
/// description whose holder can map it only for reading.
fn reopen_read_only(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .open(&path)
        .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{path}: {e}"))))?;
    Ok(OwnedFd::from(f))
}

/// The counters of one endpoint, summed over the service's threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStats {
    /// Endpoint name.
    pub name: String,
    /// Parameter names, where the service declared them (the macro does;
    /// `None`: unknown).
    pub params: Option<Vec<String>>,
    /// Calls finished (successfully or not).
    pub calls: u64,
    /// Calls that ended in an error (a returned error, a wrong argument,
    /// a panic).
    pub errors: u64,
    /// Calls started and not finished yet.
    pub in_flight: u64,
    /// Calls timed into the histogram (one in [`SAMPLE_EVERY`]).
    pub samples: u64,
    /// Sum of the timed calls' durations, in ns.
    pub sampled_ns: u64,
    /// Timed calls per bucket (see [`bucket_of`]).
    pub histogram: Vec<u64>,
}

impl EndpointStats {
    /// The `q` quantile (0..=1) of the timed calls' durations, as the
    /// midpoint of its bucket; `None` before any call was timed.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.histogram.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &n) in self.histogram.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_mid(b)));
            }
        }
        None
    }

    /// Mean duration of the timed calls.
    pub fn mean(&self) -> Option<Duration> {
        (self.samples > 0).then(|| Duration::from_nanos(self.sampled_ns / self.samples))
    }
}

/// A service's counters, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When the service created its counters (Unix seconds).
    pub started_at: u64,
    /// One per endpoint, in the service's (sorted) order.
    pub endpoints: Vec<EndpointStats>,
    /// Requests answered with an error without an endpoint's failure: an
    /// unknown endpoint, a bad token, a malformed request, a message over
    /// the limit (error replies minus endpoint errors).
    pub refused: u64,
}

impl Snapshot {
    /// Calls finished, over all endpoints.
    pub fn calls(&self) -> u64 {
        self.endpoints.iter().map(|e| e.calls).sum()
    }
    /// Error replies: the endpoints' errors and the refused requests.
    pub fn errors(&self) -> u64 {
        self.endpoints.iter().map(|e| e.errors).sum::<u64>() + self.refused
    }
    /// Calls in flight, over all endpoints.
    pub fn in_flight(&self) -> u64 {
        self.endpoints.iter().map(|e| e.in_flight).sum()
    }
}

/// Asks the service of `entry` for its counters (over its control socket,
/// within `timeout`) and reads them.
pub fn fetch(entry: &crate::registry::Entry, timeout: Duration) -> Result<Snapshot> {
    let fd = crate::control::request_stats(
        std::path::Path::new(&entry.control_socket),
        Instant::now() + timeout,
    )?;
    read(fd.as_fd())
}

/// Reads a counters segment: checks its seals (against resizing, and
/// against writes by anyone but the service's own mapping:
/// [`Error::Protocol`] naming the missing seal otherwise), maps it
/// read-only, validates the header against the mapping, and sums the
/// blocks.
pub fn read(fd: BorrowedFd<'_>) -> Result<Snapshot> {
    let bad = |what: String| Error::Protocol(crate::ProtocolError::Counters(what));
    let len = metabridge_shm::memfd::check_write_sealed(fd, HEADER_BYTES as u64, "live counters")
        .map_err(|e| bad(e.to_string()))? as usize;
    // Sealed against shrinking (checked above, and by the mapping), so no
    // page can fault; we only read it, and only through atomics.
    let map = SharedMapping::sealed(fd, len, Access::ReadOnly)?;
    let all = map.view_slice::<AtomicU64>(0, len / 8);
    // Callers pass i < len / 8 (checked below before use).
    let word = |i: usize| -> u64 { all[i].load(Ordering::Relaxed) };
    let words = len / 8;
    if words < HEADER_BYTES / 8 || word(0) != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let (version, header) = (word(1) as u32, (word(1) >> 32) as usize);
    if version != VERSION || header != HEADER_BYTES {
        return Err(bad(format!(
            "layout version {version} (this reader knows {VERSION})"
        )));
    }
    let (slots, n) = ((word(2) & 0xffff_ffff) as usize, (word(2) >> 32) as usize);
    let block_bytes = word(3) as usize;
    let (names_offset, names_len) = (word(4) as usize, word(5) as usize);
    let blocks_offset = word(6) as usize;
    let buckets = (word(7) & 0xffff_ffff) as usize;
    if slots == 0 || slots > MAX_SLOTS || n > MAX_ENDPOINTS || buckets != BUCKETS {
        return Err(bad(format!(
            "{slots} blocks, {n} endpoints, {buckets} buckets"
        )));
    }
    if block_bytes % 8 != 0
        || block_bytes < (SERVICE_WORDS + n * EP_WORDS) * 8
        || block_bytes > 1 << 30
    {
        return Err(bad(format!("block size {block_bytes}")));
    }
    if names_len > MAX_NAMES_BYTES
        || names_offset < HEADER_BYTES
        || names_offset
            .checked_add(names_len)
            .map_or(true, |e| e > blocks_offset)
        || blocks_offset % 8 != 0
        || blocks_offset
            .checked_add(slots * block_bytes)
            .map_or(true, |e| e > len)
    {
        return Err(bad("sizes do not fit the segment".into()));
    }
    // The service wrote the names once, before it handed out the segment.
    let names_bytes: Vec<u8> = map.copy_out(names_offset..names_offset + names_len);
    let names: Vec<(String, Option<Vec<String>>)> =
        rmp_serde::from_slice(&names_bytes).map_err(|e| bad(format!("names: {e}")))?;
    if names.len() != n {
        return Err(bad(format!("{} names for {n} endpoints", names.len())));
    }
    let mut error_replies = 0u64;
    for k in 0..slots {
        let at = blocks_offset / 8 + k * (block_bytes / 8);
        error_replies = error_replies.wrapping_add(word(at + ERROR_REPLIES));
    }
    let mut endpoints = Vec::with_capacity(n);
    for (e, (name, params)) in names.into_iter().enumerate() {
        let mut s = EndpointStats {
            name,
            params,
            calls: 0,
            errors: 0,
            in_flight: 0,
            samples: 0,
            sampled_ns: 0,
            histogram: vec![0; BUCKETS],
        };
        let mut started = 0u64;
        for k in 0..slots {
            let at = blocks_offset / 8 + k * (block_bytes / 8) + SERVICE_WORDS + e * EP_WORDS;
            started = started.wrapping_add(word(at + STARTED));
            s.calls = s.calls.wrapping_add(word(at + DONE));
            s.errors = s.errors.wrapping_add(word(at + ERRORS));
            s.samples = s.samples.wrapping_add(word(at + SAMPLES));
            s.sampled_ns = s.sampled_ns.wrapping_add(word(at + SAMPLED_NS));
            for (b, h) in s.histogram.iter_mut().enumerate() {
                *h = h.wrapping_add(word(at + EP_HEAD_WORDS + b));
            }
        }
        s.in_flight = started.saturating_sub(s.calls);
        endpoints.push(s);
    }
    let endpoint_errors: u64 = endpoints.iter().map(|e| e.errors).sum();
    Ok(Snapshot {
        started_at: word(8),
        refused: error_replies.saturating_sub(endpoint_errors),
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1_000,
            123_456,
            10_000_000_000,
        ] {
            let b = bucket_of(ns);
            assert!(b >= last, "{ns}");
            last = b;
            assert!(bucket_floor(b) <= ns, "{ns} in {b}");
            if b + 1 < BUCKETS {
                assert!(ns < bucket_floor(b + 1), "{ns} in {b}");
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn counts_written_by_threads_are_summed_by_a_reader() {
        let c = Counters::create(
            &[("a".into(), Some(vec!["x".into()])), ("b".into(), None)],
            3,
        )
        .unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..100 {
                        c.start(1).unwrap().finish(i % 10 != 0);
                    }
                });
            }
        });
        let held = c.start(0).unwrap();
        let snap = read(c.read_only_fd()).unwrap();
        assert_eq!(snap.endpoints[0].name, "a");
        assert_eq!(snap.endpoints[0].params, Some(vec!["x".to_string()]));
        assert_eq!(snap.endpoints[0].in_flight, 1);
        assert_eq!(snap.endpoints[1].calls, 400);
        assert_eq!(snap.endpoints[1].errors, 40);
        // One in 16 of each block's calls (the first included): 7 + 7 in
        // the two private blocks, 13 in the shared one.
        assert_eq!(snap.endpoints[1].samples, 27);
        assert_eq!(snap.endpoints[1].histogram.iter().sum::<u64>(), 27);
        assert!(snap.endpoints[1].percentile(0.5).is_some());
        assert_eq!(snap.refused, 0);
        let mut reply = Vec::new();
        crate::envelope::encode_error(&mut reply, "NotFound", "no");
        c.note_reply(&reply);
        for _ in 0..40 {
            c.note_reply(&reply); // the endpoint errors' replies
        }
        let mut ok = Vec::new();
        crate::envelope::encode_ok(&mut ok, &1).unwrap();
        c.note_reply(&ok);
        let snap = read(c.read_only_fd()).unwrap();
        assert_eq!((snap.refused, snap.errors()), (1, 41));
        drop(held); // a call dropped unfinished is an error
        let snap = read(c.read_only_fd()).unwrap();
        assert_eq!((snap.endpoints[0].calls, snap.endpoints[0].errors), (1, 1));
        assert!(c.start(2).is_none());
    }

    #[test]
    fn a_segment_that_is_not_a_sealed_counters_segment_is_refused() {
        let f = tempfile_in_shm();
        assert!(read(f.as_fd()).is_err());
        let fd = write_sealed(4096, |_| {});
        let e = read(fd.as_fd()).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
    }

    /// A segment sealed against resizing but not against writes could be
    /// rewritten by whoever holds a descriptor of it: refused, with a
    /// typed error naming the seal, even when its contents are valid.
    #[test]
    fn a_segment_without_the_write_seal_is_refused() {
        use std::os::unix::fs::FileExt;
        let c = Counters::create(&[("a".into(), None)], 2).unwrap();
        let ours = std::fs::File::from(c.read_only.try_clone().unwrap());
        let len = ours.metadata().unwrap().len() as usize;
        let mut bytes = vec![0u8; len];
        ours.read_exact_at(&mut bytes, 0).unwrap();
        // The same bytes, sealed against resizing only.
        let copy = metabridge_shm::memfd::create_sealed(c"x", len, "x").unwrap();
        let file = std::fs::File::from(copy.try_clone().unwrap());
        file.write_all_at(&bytes, 0).unwrap();
        assert!(read(c.read_only_fd()).is_ok());
        match read(copy.as_fd()) {
            Err(Error::Protocol(why)) => {
                assert!(why.to_string().contains("F_SEAL_FUTURE_WRITE"), "{why}")
            }
            other => panic!("accepted a writable counters segment: {other:?}"),
        }
    }

    /// A memfd of `len` bytes as the service makes one: `fill` writes it
    /// through the creator's mapping, then it is sealed against writes
    /// (the mapping, returned with it, keeps writing).
    fn write_sealed(len: usize, fill: impl FnOnce(&mut [u8])) -> OwnedFd {
        write_sealed_mapped(len, fill).0
    }

    fn write_sealed_mapped(len: usize, fill: impl FnOnce(&mut [u8])) -> (OwnedFd, SharedMapping) {
        let fd = metabridge_shm::memfd::create_for_one_writer(c"x", len, "x").unwrap();
        let mut bytes = vec![0u8; len];
        fill(&mut bytes);
        let map = SharedMapping::sealed(fd.as_fd(), len, Access::ReadWrite).unwrap();
        map.write_bytes(0, &bytes);
        metabridge_shm::memfd::seal_writes(fd.as_fd()).unwrap();
        (fd, map)
    }

    #[test]
    fn readers_get_a_read_only_descriptor() {
        let c = Counters::create(&[("a".into(), None)], 2).unwrap();
        let writable = SharedMapping::sealed(c.read_only_fd(), 4096, Access::ReadWrite);
        assert!(
            writable.is_err(),
            "a reader could map the counters writable"
        );
    }

    #[test]
    fn a_header_that_lies_about_sizes_is_refused() {
        // The creator's mapping still writes after the write seal.
        let (fd, map) = write_sealed_mapped(4096, |_| {});
        // The bytes the service writes (little-endian), stored whole.
        let put = |m: &SharedMapping, i: usize, v: u64| {
            m.view::<AtomicU64>(i * 8)
                .store(u64::from_ne_bytes(v.to_le_bytes()), Ordering::Relaxed)
        };
        put(&map, 0, MAGIC);
        put(&map, 1, VERSION as u64 | (HEADER_BYTES as u64) << 32);
        put(&map, 2, 1 | 1 << 32); // 1 block, 1 endpoint
        put(&map, 3, ((SERVICE_WORDS + EP_WORDS) * 8) as u64);
        put(&map, 4, HEADER_BYTES as u64);
        put(&map, 5, 0);
        put(&map, 6, 1 << 40); // blocks far past the end
        put(&map, 7, BUCKETS as u64);
        let e = read(fd.as_fd()).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
        put(&map, 2, 1 << 20 | 1 << 32); // too many blocks
        let e = read(fd.as_fd()).unwrap_err();
        assert!(e.to_string().contains("blocks"), "{e}");
        put(&map, 1, 9 | (HEADER_BYTES as u64) << 32);
        let e = read(fd.as_fd()).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
    }

    fn tempfile_in_shm() -> std::fs::File {
        let p = std::env::temp_dir().join(format!("mb-stats-{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(4096).unwrap();
        let _ = std::fs::remove_file(&p);
        f
    }
}
