//! # metabridge-shm
//!
//! MetaBridge's local data path: two processes exchange messages through a
//! pair of lock-free single-producer single-consumer byte rings in one
//! shared-memory segment, and sleep on futex words when there is nothing to
//! do. This crate knows bytes, segments, rings and waiting; it knows
//! nothing of RPC.
//!
//! The runtime's segments are sealed memfds passed by descriptor: the
//! creator makes one with [`Channel::create_memfd`] and sends its
//! descriptor over a Unix socket (`SCM_RIGHTS`); the peer maps it with
//! [`Channel::from_fd`], which refuses memory that is not sealed against
//! shrinking and growing, so the creator can never make our accesses fault
//! (SIGBUS). It has no name, so nobody else can reach it, and the kernel
//! frees it when both sides are gone, even if both were SIGKILLed.
//!
//! - [`Channel`]: a duplex channel; `send`, `send_with` (encode straight
//!   into the ring), `try_send_from` (send what fits, be rung for the
//!   rest), `recv` (a [`Message`] copied out of the ring: nothing we read
//!   points into memory the peer can still write), `try_recv`,
//!   `recv_timeout`.
//! - [`WaitPolicy`]: from pure busy-poll to pure sleep; the default spins
//!   only while the peer runs on another CPU.
//! - [`DoorbellSet`]: futex words on which a server's workers sleep for
//!   all their channels at once; a sealed memfd too
//!   ([`DoorbellSet::create_memfd`], [`DoorbellSet::from_fd`]).
//! - [`PoolWriter`], [`PoolReader`]: each side of an anonymous channel has
//!   a payload pool after the rings, where large byte strings travel out
//!   of line; the receiver copies them out ([`PoolReader::read`]) or holds
//!   them lent and reads them in place ([`PoolReader::lend`], a
//!   [`LentBlock`]) until it drops them.
//! - [`memfd`]: sealed memfds for other shared state (the runtime's live
//!   counters).
//!
//! Between processes that trust each other, a segment can also be a named
//! file (`metabridge.<name>`, mode 0600, in [`ChannelConfig::dir`]):
//! [`Channel::create`] and [`Channel::open`]. Anyone who can open that file
//! can truncate it under us, which is why the runtime does not use them;
//! [`gc`] removes the ones left behind by crashed processes.
//!
//! A peer that dies (even by SIGKILL) gives [`Error::PeerGone`] within the
//! liveness interval (20 ms by default); one that closes gives
//! [`Error::Closed`]; a segment with bad contents gives a typed error.
//!
//! ```
//! use metabridge_shm::{Channel, ChannelConfig};
//! use std::os::fd::AsFd;
//! let config = ChannelConfig { capacity: 1 << 16, ..Default::default() };
//! let (mut server, fd) = Channel::create_memfd(&config)?;
//! // Usually another process, which received `fd` over a Unix socket.
//! let mut client = Channel::from_fd(fd.as_fd(), &config)?;
//! drop(fd);
//! client.send(b"hello")?;
//! let request = server.recv()?;
//! assert_eq!(&*request, b"hello");
//! # Ok::<(), metabridge_shm::Error>(())
//! ```
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
// `unsafe` is allowed, module by module, only where it is the point: the
// shared mapping (`mapping`: the one type that maps shared memory and
// reaches it), the ring's view of its bytes (`memory`, `ring`), the futex
// system call (`futex`), one function of `channel` (binding the rings to
// their segment), and `lend` (the in-place view of a lent block). Anywhere else it fails
// to compile.
#![deny(unsafe_code)]

mod error;
#[allow(unsafe_code)]
mod futex;
#[allow(unsafe_code)]
mod memory;
#[allow(unsafe_code)]
mod ring;
mod sync;
mod wait;

#[cfg(not(loom))]
mod channel;
#[cfg(not(loom))]
mod doorbell;
#[cfg(not(loom))]
mod header;
mod hold_table;
#[cfg(not(loom))]
#[allow(unsafe_code)]
mod lend;
#[cfg(not(loom))]
mod liveness;
#[cfg(not(loom))]
#[allow(unsafe_code)]
pub mod mapping;
#[cfg(not(loom))]
mod platform;
#[cfg(not(loom))]
mod pool;
#[cfg(not(loom))]
mod reuse;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
#[allow(unsafe_code)]
mod write_guard;

#[cfg(all(test, loom))]
#[allow(unsafe_code)]
mod loom_tests;

pub use error::{Error, Result};
#[cfg(not(loom))]
pub use futex::{wait_any, wake as wake_all, WakeWord, WAIT_ANY_MAX};
pub use ring::{frame_len, max_frame_payload, FRAME_HEADER};
pub use wait::{current_cpu, WaitPolicy};

#[cfg(not(loom))]
pub use channel::{
    default_dir, Channel, ChannelConfig, FrameWriter, Message, Receiver, Sender, DEFAULT_POOL,
};
#[cfg(not(loom))]
pub use doorbell::{Doorbell, DoorbellSet};
#[cfg(not(loom))]
pub use header::{
    HEADER_LEN, HOLD_SLOTS, LAYOUT_VERSION, MAX_BELLS, MAX_CAPACITY, MAX_POOL, MIN_CAPACITY,
};
#[cfg(not(loom))]
pub use lend::{lent_bytes, LentBlock, LENT_CAP};
#[cfg(not(loom))]
pub use liveness::ProcessIdentity;
#[cfg(not(loom))]
pub use pool::{PoolReader, PoolWriter, POOL_ALIGN};
#[cfg(not(loom))]
pub use reuse::{ReusedBuffer, CHANNEL_BUDGET, KEEP_BUFFER, RETAINED_CAP};
#[cfg(not(loom))]
pub use segment::{gc, segment_path, FILE_PREFIX};
#[cfg(not(loom))]
pub use write_guard::{WriteGuard, POOL_GUARD_ENV};

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
    pub const CONTROL_OFFSET: [usize; 2] = crate::header::CONTROL_OFFSET;
    /// Offset of the head word inside a control block.
    pub const HEAD_OFFSET: usize = 128;
}
