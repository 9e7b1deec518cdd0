//! # metabridge-shm
//!
//! MetaBridge's local data path: two processes exchange messages through a
//! pair of lock-free single-producer single-consumer byte rings in one named
//! shared-memory segment, and sleep on futex words in that segment when
//! there is nothing to do. This crate knows bytes, segments, rings and
//! waiting; it knows nothing of RPC.
//!
//! - [`Channel`]: create a duplex channel as a sealed memfd handed to the
//!   peer by descriptor (`create_memfd` / `from_fd`: the peer can never
//!   resize it under us), or by name between trusting processes; `send`,
//!   `send_with` (encode straight into the ring), `recv` (a [`Message`]
//!   copied out of the ring: nothing we read points into memory the peer
//!   can still write), `try_recv`, `recv_timeout`.
//! - [`WaitPolicy`]: from pure busy-poll to pure sleep; the default spins
//!   only while the peer runs on another CPU.
//! - [`DoorbellSet`]: one futex word on which a server sleeps for all its
//!   channels at once.
//! - [`gc`]: removes segments left behind by crashed processes.
//!
//! A peer that dies (even by SIGKILL) gives [`Error::PeerGone`] within the
//! liveness interval (20 ms by default); one that closes gives
//! [`Error::Closed`]; a segment with bad contents gives a typed error.
//!
//! ```
//! use metabridge_shm::{Channel, ChannelConfig};
//! let config = ChannelConfig { capacity: 1 << 16, dir: std::env::temp_dir(), ..Default::default() };
//! let name = format!("doc-lib-{}", std::process::id());
//! let mut server = Channel::create(&name, &config)?;
//! let mut client = Channel::open(&name, &config)?;
//! client.send(b"hello")?;
//! let request = server.recv()?;
//! assert_eq!(&*request, b"hello");
//! # Ok::<(), metabridge_shm::Error>(())
//! ```
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod error;
mod futex;
mod memory;
mod ring;
mod sync;
mod wait;

#[cfg(not(loom))]
mod channel;
#[cfg(not(loom))]
mod doorbell;
#[cfg(not(loom))]
mod liveness;
#[cfg(not(loom))]
mod platform;
#[cfg(not(loom))]
mod segment;

#[cfg(all(test, loom))]
mod loom_tests;

pub use error::{Error, Result};
pub use ring::{frame_len, max_frame_payload, FRAME_HEADER};
pub use wait::{current_cpu, WaitPolicy};

#[cfg(not(loom))]
pub use channel::{
    default_dir, Channel, ChannelConfig, FrameWriter, Message, Receiver, Sender, KEEP_BUFFER,
};
#[cfg(not(loom))]
pub use doorbell::{Doorbell, DoorbellSet, MAX_BELLS};
#[cfg(not(loom))]
pub use liveness::ProcessIdentity;
#[cfg(not(loom))]
pub use segment::{
    gc, segment_path, FILE_PREFIX, HEADER_LEN, LAYOUT_VERSION, MAX_CAPACITY, MIN_CAPACITY,
};

/// Sealed memfds for other shared state than channels (the runtime's live
/// counters): created with their pages reserved and sealed against any
/// change of size (and, for one writer and many readers, against writes
/// once the writer has mapped it), and checked before a receiver maps one.
#[cfg(not(loom))]
pub mod memfd {
    use std::os::fd::{BorrowedFd, OwnedFd};

    /// A memfd of exactly `len` bytes, its pages reserved, sealed with
    /// `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL` (so no mapping of it can
    /// ever fault). `name` shows in `/proc/<pid>/fd`; `what` names it in
    /// errors.
    pub fn create_sealed(name: &std::ffi::CStr, len: usize, what: &str) -> crate::Result<OwnedFd> {
        crate::platform::sealed_memfd(name, len, what)
    }

    /// Checks that `fd` carries those seals and holds at least `min_len`
    /// bytes; returns its length. Only then may it be mapped.
    pub fn check_sealed(fd: BorrowedFd<'_>, min_len: u64, what: &str) -> crate::Result<u64> {
        crate::platform::check_sealed(fd, min_len, what)
    }

    /// A memfd for one writer and many readers: like [`create_sealed`]
    /// but open to one more seal. Its creator maps it writable, then calls
    /// [`seal_writes`]; readers check it with [`check_write_sealed`].
    pub fn create_for_one_writer(
        name: &std::ffi::CStr,
        len: usize,
        what: &str,
    ) -> crate::Result<OwnedFd> {
        crate::platform::size_sealed_memfd(name, len, what)
    }

    /// Seals a memfd of [`create_for_one_writer`] against future writes
    /// (`F_SEAL_FUTURE_WRITE`) and further seals (`F_SEAL_SEAL`): the
    /// mappings already made writable keep writing; no descriptor, even
    /// one reopened read-write through `/proc/<pid>/fd`, can write it,
    /// map it writable, or punch holes in it any more.
    pub fn seal_writes(fd: BorrowedFd<'_>) -> crate::Result<()> {
        crate::platform::seal_future_writes(fd)
    }

    /// [`check_sealed`], and sealed against writes as [`seal_writes`]
    /// does ([`Error::WriteUnsealed`](crate::Error::WriteUnsealed) if
    /// not); returns its length.
    pub fn check_write_sealed(fd: BorrowedFd<'_>, min_len: u64, what: &str) -> crate::Result<u64> {
        crate::platform::check_write_sealed(fd, min_len, what)
    }
}

/// Layout facts for tests that corrupt a segment on purpose.
#[cfg(not(loom))]
#[doc(hidden)]
pub mod layout {
    /// Offsets of the two ring control blocks (tail word first, head word
    /// 128 bytes later).
    pub const CONTROL_OFFSET: [usize; 2] = crate::segment::CONTROL_OFFSET;
    /// Offset of the head word inside a control block.
    pub const HEAD_OFFSET: usize = 128;
}
