//! The one error enum of MetaBridge, and the error an endpoint raises.

use std::borrow::Cow;
use std::fmt;

/// Everything a MetaBridge call or setup can fail with.
///
/// ```
/// let e = metabridge::Error::Remote { kind: "TypeError".into(), message: "bad".into() };
/// assert_eq!(e.to_string(), "remote error TypeError: bad");
/// ```
#[derive(Debug, thiserror::Error)]
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
    /// The operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The peer process died mid-call, or closed the connection.
    #[error("peer gone: {0}")]
    PeerGone(String),
    /// Bytes that do not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A file or directory MetaBridge relies on could be controlled by
    /// someone else (another owner, group/other access, a symbolic link):
    /// refused rather than trusted.
    #[error("refusing {}: {problem}", path.display())]
    InsecurePath {
        /// The path.
        path: std::path::PathBuf,
        /// What is wrong with it, and how to fix it.
        problem: String,
    },
    /// The service refused to open a channel, with its reason (a limit, a
    /// credential check, a segment it could not accept).
    #[error("the service refused the channel: {0}")]
    Refused(String),
    /// A stopping service passed its shutdown deadline with calls still
    /// running; it stopped anyway, abandoning them.
    #[error(
        "service {name:?} stopped after its {timeout:?} shutdown deadline, abandoning {abandoned}"
    )]
    ShutdownTimeout {
        /// Service name.
        name: String,
        /// The deadline.
        timeout: std::time::Duration,
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
    /// No room in memory or in the filesystem for what was needed.
    #[error("{0}")]
    NoSpace(String),
    /// An operating-system or transport failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The largest message, request or result, on either transport: 256 MiB,
/// or `$METABRIDGE_MAX_MESSAGE` (bytes; the older `METABRIDGE_MAX_FRAME`
/// is read too).
pub fn default_max_message() -> usize {
    ["METABRIDGE_MAX_MESSAGE", "METABRIDGE_MAX_FRAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(256 << 20)
}

/// Shorthand for MetaBridge results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<metabridge_shm::Error> for Error {
    fn from(e: metabridge_shm::Error) -> Self {
        use metabridge_shm::Error as S;
        match e {
            S::PeerGone { .. } | S::Closed => Error::PeerGone(e.to_string()),
            S::Timeout => Error::Timeout("shared-memory channel".into()),
            S::Io(io) => Error::Io(io),
            S::NoSpace { .. } => Error::NoSpace(e.to_string()),
            S::MessageTooLarge { len, max } => Error::MessageTooLarge { len, max },
            other => Error::Protocol(other.to_string()),
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
}

impl CallError {
    /// An error of type `kind`.
    pub fn new(kind: impl Into<Cow<'static, str>>, message: impl Into<String>) -> CallError {
        CallError {
            kind: kind.into(),
            message: message.into(),
        }
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

/// `core::num::error::ParseIntError` -> `ParseIntError`;
/// `my::Error<T>` -> `Error`.
fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}
