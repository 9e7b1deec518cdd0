//! Polling a loopback socket briefly instead of blocking on it.
//!
//! On a VM a thread blocked in the kernel takes about 20 µs to be woken,
//! while a loopback peer usually answers sooner than that. Both the client
//! (waiting for a response) and the server (waiting for the next request)
//! may therefore poll the socket with non-blocking peeks for a short while,
//! yielding the CPU between polls so that a peer on the same CPU can run.
//! A thread polls only while it holds a `metabridge_spin::SpinLicence`:
//! one budget (CPUs − 1 threads, at least one) for pollers here and
//! spinners on shared memory, so the other CPU stays with the threads
//! doing the work.

use socket2::SockRef;
use std::io;

/// Non-blocking read into `buf` from a socket in non-blocking mode (as
/// tokio keeps them): `Ok(None)` if nothing is there yet, `Ok(Some(0))` at
/// the end of the stream. It reads the socket directly, not through
/// tokio's readiness tracking, so data that arrived while we poll is seen at
/// once.
/// Whether bytes (or the end of the stream) wait on the socket, by one
/// non-blocking peek that consumes nothing: for a TLS connection, whose
/// bytes must be read through rustls.
pub(crate) fn readable(sock: &SockRef<'_>) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    match sock.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(_) => true,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted,
    }
}

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
