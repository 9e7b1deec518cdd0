//! The control socket: how a client and a service set up a shared-memory
//! channel. Both sides of the handshake live here.
//!
//! ```text
//! client                                         service (one thread per handshake)
//!   memfd segment, sealed  ── [2, OPEN] + fd ──►   SO_PEERCRED: uid allowed?
//!                                                  fd sealed? header valid? room for a channel?
//!   doorbells, worker k    ◄── [0, k:u16] + fd ──  channel handed to worker k
//!                          ◄── [1, len:u16, why] ─ or a refusal, with the reason
//!   (again, after a pause) ◄── [1, len:u16, BUSY] ─ or "every set-up slot is taken"
//!
//!   (a reader)             ── [2, STATS] ────────►   SO_PEERCRED: uid allowed?
//!   counters, read-only    ◄── [0, 0, 0] + fd ────   the live-counters memfd (stats.rs)
//! ```
//!
//! Nothing crosses this socket but descriptors and a few bytes, and both
//! ends check who is on the other side (`SO_PEERCRED`) before they trust
//! what it sends: the service admits its own uid (and an allow-list), the
//! client talks only to a service of its own uid. The socket file is 0600
//! in the 0700 home, so other users cannot even connect; the credential
//! check holds even if they could. Every read and write has a deadline, and
//! the service runs each handshake off its accept loop, so a client that
//! connects and sends nothing delays nobody else.
//!
//! One refusal is not final: [`BUSY`], sent when every handshake slot of
//! the service is taken (by silent connections, say). It is a refusal on
//! the wire like any other, so clients that predate it still read it as
//! one; a client of this version matches its exact reason, typed here in
//! one place for both sides, and tries again with a short backoff until
//! its deadline.
//!
//! A request carries at most one descriptor, but a peer may send any
//! number, in any shape. Every descriptor the kernel hands us is owned
//! (closed when dropped) before anything is checked, on every path
//! (`platform::recv_with_fds`), so no request can leave one open here.

use crate::error::{Error, HandshakeError, PeerGone, Refusal, Result, TimedOut};
use crate::platform::{self, Errno};
use metabridge_shm::{Channel, ChannelConfig, DoorbellSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Version byte of the handshake; a service refuses any other.
pub(crate) const VERSION: u8 = 2;
/// Operation: open a channel over the segment whose descriptor comes along.
const OP_OPEN_CHANNEL: u8 = 1;
/// Operation: send a read-only descriptor of the service's live counters
/// (see `stats.rs`); nothing comes along.
const OP_STATS: u8 = 2;
/// Reply status: accepted (then the worker index and the doorbell fd).
const STATUS_OK: u8 = 0;
/// Reply status: refused (then a length-prefixed reason).
const STATUS_REFUSED: u8 = 1;

/// How long a service waits for a client's handshake bytes.
pub(crate) const SERVICE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The reason of the one refusal that means "try again": every handshake
/// slot of the service is taken for now. Sent by [`refuse_busy`]; a client
/// that gets it retries until its deadline (any other refusal is final).
pub(crate) const BUSY: &str = "too many channel set-ups in progress; retry";

/// The first pause of a client after a [`BUSY`] answer; each next one
/// doubles, up to [`BUSY_PAUSE_MAX`]. Short: a slot frees the moment a
/// handshake in progress ends, and another connection may take it first.
const BUSY_PAUSE_MIN: Duration = Duration::from_millis(1);
/// The longest pause between two tries of a busy service.
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(16);

/// What a service granted: the worker that serves the channel and the
/// service's doorbells.
pub(crate) struct Granted {
    pub(crate) worker: u16,
    pub(crate) doorbells: OwnedFd,
}

/// What a service answered a request for a channel.
enum Answer {
    Granted(Granted),
    /// [`BUSY`]: no handshake slot free now; try again.
    Busy,
}

/// Client side: asks the service at `socket` to take the channel whose
/// segment is `segment`, within `deadline`; again, after a short and
/// growing pause, each time the service answers [`BUSY`].
pub(crate) fn request_channel(
    socket: &Path,
    segment: BorrowedFd<'_>,
    deadline: Instant,
) -> Result<Granted> {
    let mut pause = BUSY_PAUSE_MIN;
    let mut tries = 0u32;
    loop {
        tries += 1;
        if let Answer::Granted(granted) = request_channel_once(socket, segment, deadline)? {
            return Ok(granted);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TimedOut::ChannelSetupBusy { busy: BUSY, tries }.into());
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(BUSY_PAUSE_MAX);
    }
}

/// One request for a channel (see [`request_channel`]).
fn request_channel_once(
    socket: &Path,
    segment: BorrowedFd<'_>,
    deadline: Instant,
) -> Result<Answer> {
    let stream = connect_to_service(socket, deadline)?;
    // A service that refuses us before reading (a credential check) may
    // have closed already: its reason is still there to read.
    let sent = send_with_fd(&stream, &[VERSION, OP_OPEN_CHANNEL], segment);
    let mut head = [0u8; 3];
    let fd = match recv_with_fd(&stream, &mut head, remaining(deadline)?) {
        Ok(fd) => fd,
        Err(e) => return Err(sent.err().unwrap_or(e)),
    };
    match head[0] {
        STATUS_OK => {
            let doorbells = fd.ok_or(HandshakeError::NoDoorbells)?;
            Ok(Answer::Granted(Granted {
                worker: u16::from_le_bytes([head[1], head[2]]),
                doorbells,
            }))
        }
        STATUS_REFUSED => {
            let len = u16::from_le_bytes([head[1], head[2]]) as usize;
            let mut why = vec![0u8; len];
            let mut stream = &stream;
            stream
                .read_exact(&mut why)
                .map_err(|e| io_step(e, "reading the refusal"))?;
            if why == BUSY.as_bytes() {
                return Ok(Answer::Busy);
            }
            Err(Error::Refused(Refusal::new(String::from_utf8_lossy(&why))))
        }
        other => Err(HandshakeError::UnknownStatus(other).into()),
    }
}

/// Client side: asks the service at `socket` for a read-only descriptor of
/// its live counters, within `deadline`.
pub(crate) fn request_stats(socket: &Path, deadline: Instant) -> Result<OwnedFd> {
    let stream = connect_to_service(socket, deadline)?;
    (&stream)
        .write_all(&[VERSION, OP_STATS])
        .map_err(|e| io_step(e, "writing the request"))?;
    let mut head = [0u8; 3];
    let fd = recv_with_fd(&stream, &mut head, remaining(deadline)?)?;
    match head[0] {
        STATUS_OK => fd.ok_or(HandshakeError::NoCounters.into()),
        STATUS_REFUSED => {
            let len = u16::from_le_bytes([head[1], head[2]]) as usize;
            let mut why = vec![0u8; len];
            (&stream)
                .read_exact(&mut why)
                .map_err(|e| io_step(e, "reading the refusal"))?;
            Err(Error::Refused(Refusal::new(String::from_utf8_lossy(&why))))
        }
        other => Err(HandshakeError::UnknownStatus(other).into()),
    }
}

/// Connects to the control socket at `socket` within `deadline`, and
/// makes sure the process behind it is of this user: the socket file must
/// be a socket of ours, and `SO_PEERCRED` must name our uid. The stream's
/// reads and writes then time out at the deadline.
fn connect_to_service(socket: &Path, deadline: Instant) -> Result<UnixStream> {
    crate::trust::check_socket_file(socket)?;
    let stream = connect_until(socket, deadline)?;
    crate::trust::check_service_peer(&stream, socket)?;
    set_timeouts(&stream, remaining(deadline)?)?;
    Ok(stream)
}

/// Service side: reads one request from `stream` (already admitted by
/// [`PeerPolicy::admit`](crate::trust::PeerPolicy::admit)), maps the segment it carries, lets `place` hand
/// the channel to a worker (or refuse it, saying why), and answers. Reads
/// obey [`SERVICE_HANDSHAKE_TIMEOUT`].
pub(crate) fn serve_request(
    stream: UnixStream,
    config: &ChannelConfig,
    doorbells: &DoorbellSet,
    stats: Option<BorrowedFd<'_>>,
    place: impl FnOnce(Channel) -> std::result::Result<u16, String>,
) -> Result<()> {
    set_timeouts(&stream, SERVICE_HANDSHAKE_TIMEOUT)?;
    let mut head = [0u8; 2];
    let fd = match recv_with_fd(&stream, &mut head, SERVICE_HANDSHAKE_TIMEOUT) {
        Ok(fd) => fd,
        // A malformed request (too many descriptors) is told why; a
        // silent or vanished peer has no one to tell.
        Err(e @ Error::Protocol(_)) => {
            if let Error::Protocol(why) = &e {
                refuse(&stream, &why.to_string());
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if head[0] == VERSION && head[1] == OP_STATS {
        return match stats {
            Some(counters) => send_with_fd(&stream, &[STATUS_OK, 0, 0], counters),
            None => {
                refuse(&stream, "this service keeps no live counters");
                Err(Error::Refused(Refusal::new("no live counters")))
            }
        };
    }
    let placed = if head[0] != VERSION {
        Err(format!(
            "handshake version {} is not supported (this service speaks {VERSION})",
            head[0]
        ))
    } else if head[1] != OP_OPEN_CHANNEL {
        Err(format!("unknown control operation {}", head[1]))
    } else {
        match fd {
            None => Err("no segment descriptor came with the request".into()),
            Some(fd) => match Channel::from_fd(fd.as_fd(), config) {
                Ok(channel) => place(channel),
                Err(e) => Err(e.to_string()),
            },
        }
    };
    match placed {
        Ok(worker) => {
            let [a, b] = worker.to_le_bytes();
            let bells = doorbells.fd().ok_or(HandshakeError::DoorbellSetNoFd)?;
            send_with_fd(&stream, &[STATUS_OK, a, b], bells)
        }
        Err(why) => {
            refuse(&stream, &why);
            Err(Error::Refused(Refusal::new(why)))
        }
    }
}

/// Refuses with [`BUSY`]: every handshake slot is taken; the client may
/// try again.
pub(crate) fn refuse_busy(stream: &UnixStream) {
    refuse(stream, BUSY);
}

/// Writes a refusal with its reason (best effort: the peer may be gone).
pub(crate) fn refuse(stream: &UnixStream, why: &str) {
    let why = &why.as_bytes()[..why.len().min(u16::MAX as usize)];
    let mut reply = vec![STATUS_REFUSED];
    reply.extend_from_slice(&(why.len() as u16).to_le_bytes());
    reply.extend_from_slice(why);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut stream = stream;
    let _ = stream.write_all(&reply);
}

/// Connects without blocking past `deadline` (a full listen backlog makes
/// a blocking connect wait indefinitely).
fn connect_until(socket: &Path, deadline: Instant) -> Result<UnixStream> {
    let addr = platform::UnixAddr::new(socket).map_err(std::io::Error::from)?;
    let fd = platform::unix_stream_socket()?;
    loop {
        match platform::connect(&fd, &addr) {
            Ok(()) => break,
            // A Unix socket's non-blocking connect fails with EAGAIN while
            // the listener's backlog is full: retry until the deadline.
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                if Instant::now() >= deadline {
                    return Err(TimedOut::ControlConnect {
                        socket: socket.to_path_buf(),
                    }
                    .into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("control socket {}: {e}", socket.display()),
                )))
            }
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn remaining(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(TimedOut::ChannelSetup.into());
    }
    Ok(left)
}

fn set_timeouts(stream: &UnixStream, timeout: Duration) -> Result<()> {
    let t = Some(timeout.max(Duration::from_millis(1)));
    stream.set_read_timeout(t)?;
    stream.set_write_timeout(t)?;
    Ok(())
}

/// A socket read or write that failed: a timeout is [`Error::Timeout`].
fn io_step(e: std::io::Error, what: &'static str) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            TimedOut::ControlStep { step: what }.into()
        }
        _ => Error::Io(std::io::Error::new(e.kind(), format!("{what}: {e}"))),
    }
}

fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
    let n = platform::send_with_fd(stream, bytes, fd)
        .map_err(|e| io_step(e, "writing the handshake"))?;
    if n < bytes.len() {
        // The descriptor went with the first byte; the rest is plain data.
        let mut stream = stream;
        return stream
            .write_all(&bytes[n..])
            .map_err(|e| io_step(e, "writing the handshake"));
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, and the one descriptor that may come
/// with the first of them. Every descriptor that came is owned as soon as
/// it is received, so a request with more (in one control message or
/// several, or more than the control buffer holds) is refused with all of
/// them closed.
fn recv_with_fd(stream: &UnixStream, buf: &mut [u8], timeout: Duration) -> Result<Option<OwnedFd>> {
    let deadline = Instant::now() + timeout;
    let mut got = crate::platform::recv_with_fds(stream.as_fd(), buf)
        .map_err(|e| io_step(e, "reading the handshake"))?;
    if got.bytes == 0 {
        return Err(PeerGone::ControlClosed.into());
    }
    if got.truncated || got.fds.len() > 1 {
        let count = if got.truncated {
            format!("more than {}", got.fds.len())
        } else {
            got.fds.len().to_string()
        };
        return Err(HandshakeError::TooManyDescriptors { count }.into());
    }
    if got.bytes < buf.len() {
        // Descriptors attached to these later bytes are discarded by the
        // kernel (a plain read has no room for them): none is installed.
        stream.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))?;
        let mut stream = stream;
        stream
            .read_exact(&mut buf[got.bytes..])
            .map_err(|e| io_step(e, "reading the handshake"))?;
    }
    Ok(got.fds.pop())
}

#[cfg(test)]
mod tests;
