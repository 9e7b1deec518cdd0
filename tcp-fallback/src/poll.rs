//! Polling a loopback socket briefly instead of blocking on it.
//!
//! On a VM a thread blocked in the kernel takes about 20 µs to be woken,
//! while a loopback peer usually answers sooner than that. Both the client
//! (waiting for a response) and the server (waiting for the next request)
//! may therefore poll the socket with non-blocking peeks for a short while,
//! yielding the CPU between polls so that a peer on the same CPU can run.
//! Only CPUs − 1 threads of a process poll at once (at least one), so the
//! other CPU stays with the threads doing the work.

use socket2::SockRef;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

static POLLERS: AtomicUsize = AtomicUsize::new(0);

/// A licence to poll; given back on drop.
pub(crate) struct Poller(());

impl Poller {
    /// A licence, if fewer than (CPUs − 1, at least 1) threads hold one.
    pub(crate) fn take() -> Option<Poller> {
        static MAX: OnceLock<usize> = OnceLock::new();
        let max = *MAX.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        });
        // Relaxed: a counter for a heuristic; it publishes nothing.
        if POLLERS.fetch_add(1, Relaxed) < max {
            Some(Poller(()))
        } else {
            POLLERS.fetch_sub(1, Relaxed);
            None
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        POLLERS.fetch_sub(1, Relaxed);
    }
}

/// Non-blocking read into `buf` from a socket in non-blocking mode (as
/// tokio keeps them): `Ok(None)` if nothing is there yet, `Ok(Some(0))` at
/// the end of the stream. It reads the socket directly, not through
/// tokio's readiness tracking, so data that arrived while we poll is seen at
/// once.
pub(crate) fn try_read(sock: &SockRef<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    use std::io::Read;
    loop {
        match (&**sock).read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
