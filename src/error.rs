//! The errors of MetaBridge: one [`Error`] for every call and set-up, whose
//! variants carry typed causes (small enums per kind of failure, with the
//! operating-system, transport and decoding errors kept as `source`), and
//! [`CallError`], the error an endpoint raises.
//!
//! Messages are written once, on the cause types: `Error`'s message is a
//! kind ("timed out: ", "peer gone: ", ...) followed by its cause's.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a MetaBridge call or setup can fail with.
///
/// New variants may be added (typed remote errors among them), so a
/// `match` needs a catch-all arm.
///
/// ```
/// let e = metabridge::Error::Remote { kind: "TypeError".into(), message: "bad".into() };
/// assert_eq!(e.to_string(), "remote error TypeError: bad");
/// let t = metabridge::Error::Timeout(metabridge::TimedOut::FreeChannel);
/// assert_eq!(t.to_string(), "timed out: waiting for a free channel");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No live service of that name is registered.
    #[error("service {name:?} not found: {reason}")]
    ServiceNotFound {
        /// The name looked up.
        name: String,
        /// Why: never registered, or its process died.
        reason: String,
    },
    /// A live process already serves a service of that name.
    #[error("service {name:?} already exists (pid {pid})")]
    ServiceAlreadyExists {
        /// The name.
        name: String,
        /// The process that holds it.
        pid: u32,
    },
    /// The endpoint (or the service around it) answered with an error.
    #[error("remote error {kind}: {message}")]
    Remote {
        /// The error's type: `NotFound`, `TypeError`, `Panic`,
        /// `ProtocolError`, `Unauthorized`, or an endpoint's own error type.
        kind: String,
        /// Its message.
        message: String,
    },
    /// TLS failed: a certificate refused (which check, in the cause), a
    /// peer that does not speak TLS, a handshake that stalled, or TLS
    /// files that are unusable (feature `tls`).
    #[cfg(feature = "tls")]
    #[error("TLS: {0}")]
    Tls(#[from] metabridge_tcp::tls::TlsError),
    /// The operation did not finish in time: which one, in the cause.
    #[error("timed out: {0}")]
    Timeout(#[source] TimedOut),
    /// The peer (the service, or for a service its client) is gone: it
    /// died, stopped or closed the connection. One error for both
    /// transports; the cause says how it was noticed.
    #[error("peer gone: {0}")]
    PeerGone(#[source] PeerGone),
    /// Bytes that do not follow the protocol, or values that do not
    /// encode or decode.
    #[error("protocol error: {0}")]
    Protocol(#[source] ProtocolError),
    /// A file or directory MetaBridge relies on could be controlled by
    /// someone else (another owner, group/other access, a symbolic link):
    /// refused rather than trusted.
    #[error("refusing {}: {problem}", path.display())]
    InsecurePath {
        /// The path.
        path: PathBuf,
        /// What is wrong with it, and how to fix it.
        problem: String,
    },
    /// The service refused to open a channel, with its reason (a limit, a
    /// credential check, a segment it could not accept).
    #[error("the service refused the channel: {0}")]
    Refused(#[source] Refusal),
    /// A stopping service passed its shutdown deadline with calls still
    /// running; it stopped anyway, abandoning them.
    #[error(
        "service {name:?} stopped after its {timeout:?} shutdown deadline, abandoning {abandoned}"
    )]
    ShutdownTimeout {
        /// Service name.
        name: String,
        /// The deadline.
        timeout: Duration,
        /// The calls abandoned, described.
        abandoned: String,
    },
    /// A request or result is larger than the largest message allowed,
    /// one limit for both transports.
    #[error("a message of {len} bytes exceeds the maximum of {max} bytes; raise it with ServiceConfig::max_message on the service and Connect::max_message on the client (or METABRIDGE_MAX_MESSAGE for both)")]
    MessageTooLarge {
        /// Length of the message (as declared, or so far).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A service name that is not valid (see
    /// [`validate_service_name`](crate::validate_service_name)).
    #[error("invalid service name {name:?}: {problem}")]
    InvalidServiceName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `run` was asked, in the daemon process of one service, to start
    /// another: a program's daemon serves the service it was started for.
    #[error("this process is the daemon of {serving:?}; it does not start {asked:?}")]
    WrongDaemon {
        /// The service this daemon serves.
        serving: String,
        /// The service `run` was asked for.
        asked: String,
    },
    /// The transport asked for cannot reach the service where it was found
    /// (shared memory to a service given by address, say).
    #[error("service {name:?} cannot be reached over {transport}: {why}")]
    Unreachable {
        /// The service.
        name: String,
        /// The transport: `shm`, `tcp`.
        transport: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// An environment variable (the operator's setting) holds a value
    /// that means nothing: refused rather than ignored.
    #[error("{variable}={value:?} is not accepted: use {accepted}")]
    InvalidSetting {
        /// The variable, such as `METABRIDGE_TRANSPORT`.
        variable: &'static str,
        /// What it holds.
        value: String,
        /// What it may hold.
        accepted: &'static str,
    },
    /// A service that cannot be announced beyond this machine as it is
    /// configured (a mesh wants TLS, and a token or mutual TLS), or whose
    /// announcer cannot be made.
    #[error("service {service:?} cannot join the mesh: {why}")]
    Announce {
        /// The service.
        service: String,
        /// What is missing or wrong.
        why: String,
    },
    /// The mesh helper that relays calls ([`MeshRelay`](crate::MeshRelay))
    /// cannot be run, or failed in a way that is not the call's: the call
    /// was not sent.
    #[error("service {service:?}: the mesh relay failed: {why}")]
    Relay {
        /// The service.
        service: String,
        /// What failed.
        why: String,
    },
    /// No room in memory or in the filesystem for what was needed.
    #[error(transparent)]
    NoSpace(NoSpace),
    /// An operating-system or transport failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// What did not finish in time (the cause of [`Error::Timeout`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimedOut {
    /// A call had no reply within the client's timeout.
    #[error("no reply within {after:?} on a shared-memory channel")]
    ShmReply {
        /// The client's call timeout.
        after: Duration,
    },
    /// A call over TCP had no reply within the client's timeout.
    #[error("no reply within the call's timeout over TCP")]
    TcpReply,
    /// A call had no reply within the client's timeout: which call, on
    /// which service and transport, after how long (what a client reports
    /// for [`ShmReply`](Self::ShmReply) and [`TcpReply`](Self::TcpReply)).
    #[error("{endpoint}() of service {service:?} had no reply within {after:?} over {transport} (raise it with Connect::timeout, or for one call Client::with_timeout)")]
    Call {
        /// The service.
        service: String,
        /// The endpoint called.
        endpoint: String,
        /// `shm` or `tcp`.
        transport: &'static str,
        /// The client's call timeout.
        after: Duration,
    },
    /// A shared-memory channel's send or receive passed its deadline.
    #[error("shared-memory channel")]
    ShmChannel,
    /// Every channel of the client stayed busy until the deadline.
    #[error("waiting for a free channel")]
    FreeChannel,
    /// Setting up a shared-memory channel with the service passed its
    /// deadline.
    #[error("setting up a shared-memory channel")]
    ChannelSetup,
    /// The service answered "busy" to every request for a channel until
    /// the deadline.
    #[error(
        "setting up a shared-memory channel: the service answered \"{busy}\" to all {tries} tries"
    )]
    ChannelSetupBusy {
        /// The service's answer.
        busy: &'static str,
        /// How many requests were made.
        tries: u32,
    },
    /// Connecting to the service's control socket.
    #[error("connecting to the control socket {}", socket.display())]
    ControlConnect {
        /// The socket.
        socket: PathBuf,
    },
    /// A read or write on the control socket.
    #[error("{step} on the control socket")]
    ControlStep {
        /// The step: "reading the handshake", ...
        step: &'static str,
    },
    /// Another process held the registry's lock too long.
    #[error("the registry {} stayed locked by another process for {waited:?}", path.display())]
    RegistryLocked {
        /// The registry file.
        path: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
    /// The daemon did not report that it started in time (it was killed).
    #[error("the daemon did not start within {timeout:?} (killed)")]
    DaemonStart {
        /// The start-up deadline.
        timeout: Duration,
    },
    /// A program executed again to serve a service (`run` in a
    /// multi-threaded process) did not reach `run` in time (killed).
    #[error("{}", reexec_message(service, *pid, &format!("did not reach run() for it within {timeout:?} (killed)")))]
    DaemonReexec {
        /// The service.
        service: String,
        /// The new copy's process id.
        pid: u32,
        /// The start-up deadline.
        timeout: Duration,
    },
}

/// The message of a re-executed program that did not reach `run`, with how
/// it failed.
pub(crate) fn reexec_message(service: &str, pid: u32, how: &str) -> String {
    format!(
        "run() in a multi-threaded process executes the program again to serve \
         {service:?}, and the new copy (pid {pid}) {how}: its main must reach the same \
         run() call. Call run() before the program starts threads (it then forks), \
         or serve the service from a daemon binary of its own with metabridge::serve"
    )
}

/// How the peer was found gone (the cause of [`Error::PeerGone`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerGone {
    /// The client was closed ([`Client::close`](crate::Client::close)).
    #[error("the client was closed")]
    ClientClosed,
    /// The peer of a shared-memory channel died or closed its side.
    #[error(transparent)]
    Shm(metabridge_shm::Error),
    /// The TCP connection broke (reset, broken pipe, aborted).
    #[error("the TCP connection to the service was lost ({0})")]
    TcpLost(#[source] std::io::Error),
    /// The service closed the TCP connection before it answered.
    #[error("the service closed the TCP connection without answering (it stopped or died)")]
    TcpClosed,
    /// The thread that made a TCP call for an interruptible caller ended
    /// without handing over a reply.
    #[error("the TCP call's thread ended without a reply")]
    TcpCallThread,
    /// The other side closed the control socket mid-handshake.
    #[error("the other side closed the control socket")]
    ControlClosed,
    /// The replica a call was in flight to left the mesh (its process
    /// died or stopped answering past the lease). The call may have run:
    /// it is never replayed.
    #[error("replica {replica} of {service:?} left the mesh during the call ({why})")]
    Replica {
        /// The service.
        service: String,
        /// The replica's instance id.
        replica: String,
        /// How it was found gone.
        why: String,
    },
    /// The mesh helper relaying the call ([`MeshRelay`](crate::MeshRelay))
    /// ended with it in flight. The call may have run: it is never replayed.
    #[error("the mesh relay for {service:?} ended during the call ({why})")]
    Relay {
        /// The service.
        service: String,
        /// How it was found gone.
        why: String,
    },
    /// A named service's peer is gone, for one of the reasons above.
    #[error("service {name:?}: {cause}")]
    Service {
        /// The service.
        name: String,
        /// How it was found gone.
        #[source]
        cause: Box<PeerGone>,
    },
}

/// What broke the protocol (the cause of [`Error::Protocol`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A MessagePack value ends before its declared length.
    #[error("truncated MessagePack value")]
    TruncatedValue,
    /// A byte that is no MessagePack marker.
    #[error("invalid MessagePack marker {0:#04x}")]
    InvalidMarker(u8),
    /// A response that is not the protocol's `{"status", ...}` map.
    #[error("malformed response: {0}")]
    MalformedResponse(&'static str),
    /// A result that does not decode as the type the caller asked for.
    #[error("result does not decode as {expected}: {source}")]
    ResultType {
        /// The caller's type.
        expected: String,
        /// The decoder's error.
        source: rmp_serde::decode::Error,
    },
    /// A value that does not encode as MessagePack.
    #[error("{what} does not encode: {source}")]
    Encode {
        /// What it was: "argument", "constructor argument", ...
        what: &'static str,
        /// The encoder's error.
        source: rmp_serde::encode::Error,
    },
    /// A constructor argument given to [`Connect`](crate::Connect) that
    /// did not encode.
    #[error("constructor argument: {0}")]
    ConstructorArgument(#[source] std::sync::Arc<Error>),
    /// A dynamic value that does not encode as MessagePack.
    #[error("{0}")]
    EncodeValue(#[source] rmpv::encode::Error),
    /// The service's start-up report does not decode.
    #[error("the daemon's start-up report: {0}")]
    StartupReport(#[source] rmp_serde::decode::Error),
    /// A control-socket handshake that breaks its protocol.
    #[error(transparent)]
    Handshake(HandshakeError),
    /// An out-of-line byte string (in a shared-memory message) whose
    /// location breaks the pool's rules.
    #[error("out-of-line bytes: {0}")]
    OutOfLine(String),
    /// The live counters' segment is not one this reader accepts.
    #[error("counters segment: {0}")]
    Counters(String),
    /// A registry entry too large for its slot even without endpoints.
    #[error("registry entry for {0:?} is too large")]
    RegistryEntryTooLarge(String),
    /// A shared-memory segment or ring with contents no correct peer
    /// writes.
    #[error(transparent)]
    Shm(metabridge_shm::Error),
    /// A TCP frame that breaks the framing.
    #[error(transparent)]
    Frame(metabridge_tcp::FrameError),
}

/// A control-socket handshake that breaks its protocol (see
/// [`ProtocolError::Handshake`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The service said yes but sent no doorbell descriptor.
    #[error("the service accepted the channel without doorbells")]
    NoDoorbells,
    /// The service said yes but sent no counters descriptor.
    #[error("the service sent no descriptor for its counters")]
    NoCounters,
    /// A status byte this build does not know.
    #[error("control socket answered with unknown status {0}")]
    UnknownStatus(u8),
    /// The process behind the socket is another user's.
    #[error("the control socket {} is served by uid {peer}, not by this user (uid {me}); refusing to use it", socket.display())]
    ForeignPeer {
        /// The socket.
        socket: PathBuf,
        /// The uid serving it.
        peer: u32,
        /// Ours.
        me: u32,
    },
    /// More than one descriptor came with a handshake (all were closed).
    #[error("{count} descriptors came with a handshake, which takes at most one; all were closed")]
    TooManyDescriptors {
        /// How many: a number, or "more than N".
        count: String,
    },
    /// The service named a worker's doorbell it did not send.
    #[error("the service named doorbell {0}, which does not exist")]
    NoSuchDoorbell(u16),
    /// The doorbell set has fewer bells than workers.
    #[error("doorbell set too small")]
    DoorbellSetTooSmall,
    /// The doorbell set has no descriptor to send.
    #[error("the doorbell set has no descriptor")]
    DoorbellSetNoFd,
}

/// A service's refusal (the cause of [`Error::Refused`]): its reason, as
/// it wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// The service's words.
    pub reason: String,
}

impl Refusal {
    /// A refusal with this reason.
    pub fn new(reason: impl Into<String>) -> Refusal {
        Refusal {
            reason: reason.into(),
        }
    }

    /// Whether the reason contains `pat`.
    pub fn contains(&self, pat: &str) -> bool {
        self.reason.contains(pat)
    }
}

/// No room for what was needed (the cause of [`Error::NoSpace`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoSpace {
    /// A shared-memory segment's pages could not be reserved.
    #[error(transparent)]
    Shm(metabridge_shm::Error),
    /// The registry file could not be written (ENOSPC).
    #[error("no space left to write the registry {}", path.display())]
    RegistryWrite {
        /// The registry file.
        path: PathBuf,
        /// The write's error.
        #[source]
        source: std::io::Error,
    },
    /// Every slot of the registry holds a live service.
    #[error("the registry {} is full ({slots} live services)", path.display())]
    RegistryFull {
        /// The registry file.
        path: PathBuf,
        /// Its number of slots.
        slots: usize,
    },
    /// The registry's bytes could not be reserved on its filesystem.
    #[error("no space to reserve the {bytes} bytes of the registry {}{}", path.display(), left.map(|n| format!(" ({n} bytes left)")).unwrap_or_default())]
    RegistryReserve {
        /// The registry file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
        /// The space left on its filesystem, when known.
        left: Option<u64>,
    },
}

impl From<TimedOut> for Error {
    fn from(t: TimedOut) -> Error {
        Error::Timeout(t)
    }
}

impl From<PeerGone> for Error {
    fn from(p: PeerGone) -> Error {
        Error::PeerGone(p)
    }
}

impl From<ProtocolError> for Error {
    fn from(p: ProtocolError) -> Error {
        Error::Protocol(p)
    }
}

impl From<HandshakeError> for Error {
    fn from(h: HandshakeError) -> Error {
        Error::Protocol(ProtocolError::Handshake(h))
    }
}

impl From<NoSpace> for Error {
    fn from(n: NoSpace) -> Error {
        Error::NoSpace(n)
    }
}

/// Shorthand for MetaBridge results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<metabridge_shm::Error> for Error {
    fn from(e: metabridge_shm::Error) -> Self {
        use metabridge_shm::Error as S;
        match e {
            S::PeerGone { .. } | S::Closed => Error::PeerGone(PeerGone::Shm(e)),
            S::Timeout => Error::Timeout(TimedOut::ShmChannel),
            S::Io(io) => Error::Io(io),
            S::NoSpace { .. } => Error::NoSpace(NoSpace::Shm(e)),
            S::MessageTooLarge { len, max } => Error::MessageTooLarge { len, max },
            other => Error::Protocol(ProtocolError::Shm(other)),
        }
    }
}

/// The error an endpoint (or the dispatcher) sends back: a type name and a
/// message, as the wire protocol's `{"type", "message"}` map.
///
/// ```
/// use metabridge::CallError;
/// let e = CallError::from_error(&"x".parse::<i32>().unwrap_err());
/// assert_eq!(e.kind, "ParseIntError");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// Type of the error, e.g. `TypeError`.
    pub kind: Cow<'static, str>,
    /// Human-readable message.
    pub message: String,
    /// The error's own value, MessagePack-encoded, when its type is
    /// `Serialize` (sent beside `type` and `message` as `data`; a typed
    /// client decodes it back into that type: see [`Failure`]).
    data: Option<Vec<u8>>,
}

impl CallError {
    /// An error of type `kind`.
    pub fn new(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> CallError {
        CallError {
            kind: kind.into(),
            message: message.into(),
            data: None,
        }
    }

    /// The same error carrying `data`, the MessagePack encoding of the
    /// error value (what `#[metabridge::service]` attaches for an error
    /// type that is `Serialize`).
    pub fn with_data(mut self, data: Vec<u8>) -> CallError {
        self.data = Some(data);
        self
    }

    /// The error value's encoding, if it carries one.
    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    /// A `TypeError`: wrong argument count, names or types.
    pub fn type_error(message: impl Into<String>) -> CallError {
        CallError::new("TypeError", message)
    }

    /// The error of an endpoint that returned `Err(e)`: E's type name (its
    /// last path segment, without generics) and `e.to_string()`.
    pub fn from_error<E: fmt::Display + ?Sized>(e: &E) -> CallError {
        CallError::new(short_type_name::<E>(), e.to_string())
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for CallError {}

/// What a typed call to an endpoint returning `Result<T, E>` fails with:
/// the endpoint's own error `E`, decoded from the error's data (when `E`
/// is `Serialize` on the service and `Deserialize` on the client), or any
/// other failure of the call (transport, timeout, a remote error that
/// carries no `E`).
///
/// `?` turns it into a [`metabridge::Error`](Error) (an `Endpoint` error
/// becomes [`Error::Remote`] with its type name and text).
///
/// ```
/// use metabridge::{Error, Failure};
/// #[derive(Debug, PartialEq)]
/// struct TooBig(u32);
/// impl std::fmt::Display for TooBig {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "{} is too big", self.0)
///     }
/// }
/// let f: Failure<TooBig> = Failure::Endpoint(TooBig(7));
/// assert_eq!(f.to_string(), "7 is too big");
/// match Error::from(f) {
///     Error::Remote { kind, message } => assert_eq!((kind.as_str(), message.as_str()), ("TooBig", "7 is too big")),
///     other => panic!("{other}"),
/// }
/// ```
#[derive(Debug)]
pub enum Failure<E> {
    /// The endpoint returned `Err(e)`.
    Endpoint(E),
    /// The call failed otherwise.
    Call(Error),
}

impl<E> Failure<E> {
    /// The endpoint's error, if that is what this is.
    pub fn endpoint(self) -> Option<E> {
        match self {
            Failure::Endpoint(e) => Some(e),
            Failure::Call(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Endpoint(e) => e.fmt(f),
            Failure::Call(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Display + fmt::Debug> std::error::Error for Failure<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Endpoint(_) => None,
            Failure::Call(e) => Some(e),
        }
    }
}

impl<E> From<Error> for Failure<E> {
    fn from(e: Error) -> Self {
        Failure::Call(e)
    }
}

impl<E: fmt::Display> From<Failure<E>> for Error {
    fn from(f: Failure<E>) -> Self {
        match f {
            Failure::Endpoint(e) => Error::Remote {
                kind: short_type_name::<E>(),
                message: e.to_string(),
            },
            Failure::Call(e) => e,
        }
    }
}

/// `core::num::error::ParseIntError` -> `ParseIntError`;
/// `my::Error<T>` -> `Error`.
fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}
