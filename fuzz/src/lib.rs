//! Helpers shared by the fuzz targets and the seed generator: a private
//! scratch directory per fuzzing process, a reader of structured inputs,
//! and an allocator that records the largest single allocation.
//!
//! Everything here is deterministic per input: nothing depends on the time
//! or on earlier inputs, so a crash found by a long run replays from its
//! artifact alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

/// A directory private to this process (mode 0700), created on first use
/// and removed when the process exits normally (libFuzzer ends a bounded
/// run with `exit`, which runs `atexit` handlers; a crash leaves it, under
/// `$MB_FUZZ_TMP`, which scripts/fuzz.sh removes).
///
/// It is on tmpfs (`/dev/shm`) when there is one: the segment and registry
/// targets write a file per input, and tmpfs keeps that off the disk.
pub fn scratch_dir() -> &'static Path {
    SCRATCH.get_or_init(|| {
        let base = std::env::var_os("MB_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    std::env::temp_dir()
                }
            });
        let dir = base.join(format!("mb-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(builder.recursive(true), 0o700);
        builder
            .create(&dir)
            .unwrap_or_else(|e| panic!("cannot create the scratch dir {dir:?}: {e}"));
        // SAFETY: registering a plain `extern "C" fn` with no captures.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Reads fixed-size fields off the front of a fuzz input; past the end it
/// yields zeros, so every input (however short) maps to some structure and
/// the fuzzer never wastes executions on rejected inputs.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    /// The next `N` bytes, zero-padded.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.bytes.len());
        out[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        out
    }

    /// The next byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = tail;
        head
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A global allocator that forwards to the system allocator (so ASan still
/// sees every allocation) and, while armed, records the largest single
/// allocation request. The frame reader promises never to allocate a
/// declared length up front; this is how the target checks it.
pub struct PeakAlloc;

static ARMED: AtomicBool = AtomicBool::new(false);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl PeakAlloc {
    /// Starts recording from zero.
    pub fn arm() {
        PEAK.store(0, Ordering::Relaxed);
        ARMED.store(true, Ordering::Relaxed);
    }

    /// Stops recording; returns the largest request seen since `arm`.
    pub fn disarm() -> usize {
        ARMED.store(false, Ordering::Relaxed);
        PEAK.load(Ordering::Relaxed)
    }

    fn note(size: usize) {
        if ARMED.load(Ordering::Relaxed) {
            PEAK.fetch_max(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the bookkeeping touches only atomics and never allocates.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::note(new_size);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
