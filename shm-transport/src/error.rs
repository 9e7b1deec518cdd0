//! The one error type of the shared-memory transport.

use std::io;

/// Everything that can go wrong on a shared-memory channel.
///
/// Every variant is a value a caller can match on; no input a peer can
/// write into the segment makes this crate panic or read out of bounds.
///
/// ```
/// use metabridge_shm::Error;
/// let e = Error::PeerGone { pid: 42 };
/// assert!(e.to_string().contains("42"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer process died (or exited without closing) while we needed it.
    #[error("peer process {pid} is gone")]
    PeerGone {
        /// Process id the peer recorded in the segment header.
        pid: u32,
    },
    /// The peer closed its side cleanly: the end of the stream.
    #[error("the peer closed the channel")]
    Closed,
    /// The deadline of a `recv_timeout` or `send_timeout` passed first.
    #[error("timed out")]
    Timeout,
    /// A non-blocking send found no room in the ring.
    #[error("ring is full")]
    Full,
    /// The segment does not start with MetaBridge's magic number.
    #[error("segment {name:?} has a bad magic number (not a MetaBridge segment)")]
    BadMagic {
        /// Segment name.
        name: String,
    },
    /// The segment was written by an incompatible layout version.
    #[error("segment {name:?} has layout version {found}, this build speaks {expected}")]
    VersionMismatch {
        /// Segment name.
        name: String,
        /// Version found in the header.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// The segment file is shorter than its header says it must be.
    #[error("segment {name:?} is truncated: {len} bytes, needs {needed}")]
    Truncated {
        /// Segment name.
        name: String,
        /// Actual size of the file.
        len: u64,
        /// Size the header requires.
        needed: u64,
    },
    /// The segment header or ring counters hold values no correct peer writes.
    #[error("corrupt segment: {0}")]
    Corrupt(String),
    /// The segment already has a peer attached on the side we tried to take.
    #[error("segment {name:?} already has both sides attached")]
    AlreadyAttached {
        /// Segment name.
        name: String,
    },
    /// A message is larger than the configured maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    MessageTooLarge {
        /// Length of the message (so far, for one still being received).
        len: u64,
        /// The configured bound.
        max: u64,
    },
    /// Not enough memory or space to reserve a segment's pages: it was not
    /// created (rather than failing later with SIGBUS on first touch).
    #[error("no space to reserve {needed} bytes for {what}{}", match available {
        Some(a) => format!(" ({a} bytes left)"),
        None => String::new(),
    })]
    NoSpace {
        /// The segment (its path, or what it is for).
        what: String,
        /// Bytes it needed.
        needed: u64,
        /// Bytes left in its filesystem, where known.
        available: Option<u64>,
    },
    /// A peer handed us shared memory that could still change size (not a
    /// memfd sealed against shrinking and growing): mapping it would let
    /// the peer crash us with SIGBUS, so it is refused.
    #[error("{what} is not sealed against resizing (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL); refused")]
    Unsealed {
        /// What the memory was for.
        what: String,
    },
    /// Memory a reader must be able to trust (the runtime's live
    /// counters) is not sealed against writes: anyone holding a
    /// descriptor of it, or reopening one through `/proc`, could rewrite
    /// it. Refused.
    #[error("{what} is not sealed against writes (F_SEAL_FUTURE_WRITE or F_SEAL_WRITE); refused")]
    WriteUnsealed {
        /// What the memory was for.
        what: String,
    },
    /// An invalid configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An operating-system call failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io(io::Error::from(e))
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
