//! Length-prefixed framing.
//!
//! Every message on a MetaBridge TCP connection is a *frame*: a 4-byte
//! unsigned length in network byte order (big-endian), followed by exactly
//! that many payload bytes (one MessagePack value, opaque to this crate).
//!
//! The readers in this module never trust the declared length: it is
//! checked against a caller-supplied maximum before anything is allocated,
//! and even an accepted length only makes the buffer grow as bytes actually
//! arrive (at most [`READ_CHUNK`] bytes beyond what was already received or
//! already allocated), so a peer that lies about the length cannot force a
//! large allocation.
//!
//! Both async (tokio) and blocking (`std::io`) variants are provided; they
//! produce and accept identical bytes.

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default upper bound on a frame's payload length: 64 MiB.
///
/// ```
/// assert_eq!(metabridge_tcp::frame::DEFAULT_MAX_FRAME, 64 << 20);
/// ```
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Length of the frame prefix in bytes.
///
/// ```
/// assert_eq!(metabridge_tcp::frame::PREFIX_LEN, 4);
/// ```
pub const PREFIX_LEN: usize = 4;

/// How far a reader lets its buffer grow ahead of the bytes received so far.
///
/// When a frame body is being read, the buffer is grown in steps of at most
/// this many bytes (or up to the capacity the buffer already had, if that is
/// larger), so memory use tracks the data that actually arrived rather than
/// the length the peer declared.
///
/// ```
/// assert_eq!(metabridge_tcp::frame::READ_CHUNK, 64 * 1024);
/// ```
pub const READ_CHUNK: usize = 64 * 1024;

/// Payloads up to this size are copied next to their prefix and written with
/// a single `write_all`; of larger ones, this much goes with the prefix.
const SMALL_FRAME: usize = 4096 - PREFIX_LEN;

/// Why a frame could not be read.
///
/// ```
/// use metabridge_tcp::frame::{read_frame_blocking, FrameError};
///
/// let mut buf = Vec::new();
/// // Nothing at all: a clean end of stream.
/// let err = read_frame_blocking(&mut &[][..], 1024, &mut buf).unwrap_err();
/// assert!(matches!(err, FrameError::Closed));
/// // A prefix declaring more than the maximum.
/// let err = read_frame_blocking(&mut &[0, 0, 8, 0][..], 1024, &mut buf).unwrap_err();
/// assert!(matches!(err, FrameError::TooLarge { declared: 2048, max: 1024 }));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed, or ended in the middle of a frame
    /// (reported as [`std::io::ErrorKind::UnexpectedEof`]).
    #[error("frame i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer declared a payload longer than the allowed maximum. Nothing
    /// beyond the 4-byte prefix has been read from the stream.
    #[error("frame of {declared} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length the peer declared.
        declared: u64,
        /// The maximum that was in force.
        max: usize,
    },
    /// The stream ended cleanly before the first byte of a length prefix.
    #[error("connection closed")]
    Closed,
}

fn unexpected_eof(what: &str) -> FrameError {
    FrameError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("stream ended in the middle of a frame {what}"),
    ))
}

/// Checks a declared length against `max`, returning it as a `usize`.
fn check_len(prefix: [u8; PREFIX_LEN], max: usize) -> Result<usize, FrameError> {
    let declared = u32::from_be_bytes(prefix);
    match usize::try_from(declared) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(FrameError::TooLarge {
            declared: u64::from(declared),
            max,
        }),
    }
}

/// Makes sure `buf[filled..]` is non-empty, growing `buf` by a bounded step.
///
/// `buf.len()` is used as the "initialised so far" mark; the bytes in
/// `buf[filled..]` are scratch space waiting to be read into.
fn grow_for_read(buf: &mut Vec<u8>, filled: usize, len: usize) {
    if filled == buf.len() {
        let already = buf.capacity().saturating_sub(filled);
        let step = (len - filled).min(already.max(READ_CHUNK));
        buf.resize(filled + step, 0);
    }
}

fn prefix_for(payload: &[u8]) -> io::Result<[u8; PREFIX_LEN]> {
    u32::try_from(payload.len())
        .map(u32::to_be_bytes)
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "frame payload of {} bytes does not fit a 32-bit length prefix",
                    payload.len()
                ),
            )
        })
}

/// Reads one frame from `r` into `buf`.
///
/// `buf` is cleared first; on success it holds exactly the payload. A
/// declared length above `max` yields [`FrameError::TooLarge`] after only
/// the prefix has been consumed, without allocating. A clean end of stream
/// before the prefix yields [`FrameError::Closed`]; an end of stream inside
/// the prefix or the payload yields an
/// [`UnexpectedEof`](std::io::ErrorKind::UnexpectedEof) I/O error.
///
/// The buffer grows as bytes arrive (see [`READ_CHUNK`]), so passing the same
/// `Vec` for every frame of a connection reuses its allocation.
///
/// This future is not cancellation safe: if it is dropped midway the stream
/// position is unknown and the connection should be discarded.
///
/// ```
/// use metabridge_tcp::frame::{read_frame, write_frame, DEFAULT_MAX_FRAME};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut wire = Vec::new();
/// write_frame(&mut wire, b"hello").await?;
/// assert_eq!(wire, b"\0\0\0\x05hello");
///
/// let mut buf = Vec::new();
/// read_frame(&mut &wire[..], DEFAULT_MAX_FRAME, &mut buf).await?;
/// assert_eq!(buf, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    buf.clear();
    let mut prefix = [0u8; PREFIX_LEN];
    let mut got = 0;
    while got < PREFIX_LEN {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                unexpected_eof("prefix")
            });
        }
        got += n;
    }
    let len = check_len(prefix, max)?;
    let mut filled = 0;
    while filled < len {
        grow_for_read(buf, filled, len);
        match r.read(&mut buf[filled..]).await {
            Ok(0) => {
                buf.truncate(filled);
                return Err(unexpected_eof("payload"));
            }
            Ok(n) => filled += n,
            Err(e) => {
                buf.truncate(filled);
                return Err(e.into());
            }
        }
    }
    debug_assert_eq!(buf.len(), len);
    Ok(())
}

/// Writes `payload` to `w` as one frame, then flushes `w`.
///
/// The prefix and the first few KiB of the payload are copied into one
/// buffer and written together, so a small frame is a single write call
/// (one syscall, one segment with `TCP_NODELAY`); the rest of a larger
/// payload follows in a second `write_all`. Plain writes are used rather
/// than vectored ones because on Linux `writev` on a socket whose peer has
/// gone raises `SIGPIPE`, which kills a host process that does not ignore it
/// (std's socket `write` passes `MSG_NOSIGNAL`). Fails with
/// [`InvalidInput`](std::io::ErrorKind::InvalidInput) if the payload is
/// longer than `u32::MAX` bytes.
///
/// ```
/// use metabridge_tcp::frame::write_frame;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut wire = Vec::new();
/// write_frame(&mut wire, b"").await?;
/// write_frame(&mut wire, &[0x92, 0x01, 0x02]).await?;
/// assert_eq!(wire, [0, 0, 0, 0, 0, 0, 0, 3, 0x92, 0x01, 0x02]);
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// ```
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let prefix = prefix_for(payload)?;
    let (head, rest) = payload.split_at(payload.len().min(SMALL_FRAME));
    let mut first = Vec::with_capacity(PREFIX_LEN + head.len());
    first.extend_from_slice(&prefix);
    first.extend_from_slice(head);
    w.write_all(&first).await?;
    if !rest.is_empty() {
        w.write_all(rest).await?;
    }
    w.flush().await
}

/// Blocking version of [`read_frame`], for any [`std::io::Read`].
///
/// Same contract: `buf` is cleared and then holds exactly the payload; the
/// declared length is checked against `max` before anything is allocated and
/// the buffer grows only as bytes arrive. Reads interrupted by a signal are
/// retried.
///
/// ```
/// use metabridge_tcp::frame::{read_frame_blocking, FrameError};
///
/// let wire = b"\0\0\0\x02hi\0\0\0\x00";
/// let mut r = &wire[..];
/// let mut buf = Vec::new();
/// read_frame_blocking(&mut r, 16, &mut buf)?;
/// assert_eq!(buf, b"hi");
/// read_frame_blocking(&mut r, 16, &mut buf)?;
/// assert!(buf.is_empty());
/// assert!(matches!(read_frame_blocking(&mut r, 16, &mut buf), Err(FrameError::Closed)));
/// # Ok::<(), FrameError>(())
/// ```
pub fn read_frame_blocking<R: Read>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    buf.clear();
    let mut prefix = [0u8; PREFIX_LEN];
    let mut got = 0;
    while got < PREFIX_LEN {
        match r.read(&mut prefix[got..]) {
            Ok(0) => {
                return Err(if got == 0 {
                    FrameError::Closed
                } else {
                    unexpected_eof("prefix")
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = check_len(prefix, max)?;
    let mut filled = 0;
    while filled < len {
        grow_for_read(buf, filled, len);
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                return Err(unexpected_eof("payload"));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.truncate(filled);
                return Err(e.into());
            }
        }
    }
    debug_assert_eq!(buf.len(), len);
    Ok(())
}

/// Blocking version of [`write_frame`], for any [`std::io::Write`]; flushes
/// `w` at the end.
///
/// The prefix and up to about 4 KiB of payload are copied into a stack
/// buffer and written with one `write_all`, so on a `TcpStream` with
/// `TCP_NODELAY` a small request is a single syscall and a single segment;
/// the rest of a larger payload follows in a second `write_all`. As with
/// [`write_frame`], no vectored writes are used, so writing to a socket
/// whose peer has gone yields an `EPIPE` error rather than a `SIGPIPE`.
///
/// ```
/// use metabridge_tcp::frame::{read_frame_blocking, write_frame_blocking};
///
/// let mut wire = Vec::new();
/// let big = vec![7u8; 100_000];
/// write_frame_blocking(&mut wire, &big)?;
/// assert_eq!(wire.len(), 4 + big.len());
///
/// let mut buf = Vec::new();
/// read_frame_blocking(&mut &wire[..], 1 << 20, &mut buf)?;
/// assert_eq!(buf, big);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_frame_blocking<W: Write>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let prefix = prefix_for(payload)?;
    let (head, rest) = payload.split_at(payload.len().min(SMALL_FRAME));
    let mut first = [0u8; PREFIX_LEN + SMALL_FRAME];
    let first_len = PREFIX_LEN + head.len();
    first[..PREFIX_LEN].copy_from_slice(&prefix);
    first[PREFIX_LEN..first_len].copy_from_slice(head);
    w.write_all(&first[..first_len])?;
    if !rest.is_empty() {
        w.write_all(rest)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_is_bounded_by_chunk() {
        let mut buf = Vec::new();
        grow_for_read(&mut buf, 0, usize::MAX / 2);
        assert_eq!(buf.len(), READ_CHUNK);
        let mut buf = Vec::with_capacity(1 << 20);
        grow_for_read(&mut buf, 0, 10 << 20);
        assert_eq!(buf.len(), 1 << 20);
        let mut buf = Vec::new();
        grow_for_read(&mut buf, 0, 10);
        assert_eq!(buf.len(), 10);
    }
}
