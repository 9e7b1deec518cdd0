//! The failures of TLS, typed by cause, each message naming what was wrong
//! and what to do: rustls' errors (which reach a blocking socket's caller
//! inside an `io::Error`) and the socket's own (a peer that closed during
//! the handshake, a handshake that stalled) sorted into [`TlsError`].

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why TLS set-up or a TLS connection failed.
///
/// ```
/// use metabridge_tcp::tls::TlsError;
/// let e = TlsError::NotTls;
/// assert!(e.to_string().contains("not speak TLS"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file failed its checks or could not be read.
    #[error("TLS file {path:?} refused: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        why: String,
    },
    /// Certificates or a key that do not parse, or do not go together.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The service's certificate is signed by no CA the client trusts.
    #[error("the service's certificate is not signed by a CA this client trusts (give its CA with METABRIDGE_TLS_CA or ClientTls::ca_file, or pin it)")]
    UnknownIssuer,
    /// The service's certificate has expired (or is not valid yet).
    #[error("the service's certificate is expired or not yet valid ({0})")]
    Expired(String),
    /// The service's certificate is for another host name.
    #[error("the service's certificate is not valid for {name:?} ({detail})")]
    WrongName {
        /// The name the client checked.
        name: String,
        /// rustls' account of what the certificate names.
        detail: String,
    },
    /// The service's certificate is not the one pinned.
    #[error("the service's certificate {got} is not the pinned {want}")]
    PinMismatch {
        /// The fingerprint pinned.
        want: String,
        /// The certificate's.
        got: String,
    },
    /// The service rejected this client's certificate, or asked for one it
    /// was not given.
    #[error("the service refused this client's certificate: {0}")]
    ClientCertRefused(String),
    /// Another certificate problem.
    #[error("the service's certificate is invalid: {0}")]
    BadCertificate(String),
    /// The peer answered with something that is not TLS: a plaintext
    /// service on this port.
    #[error("the peer does not speak TLS on this port (a plaintext service? connect without TLS, or to its TLS port)")]
    NotTls,
    /// The peer closed the connection during the handshake (a plaintext
    /// service closes on a TLS hello; a TLS service on a refused
    /// certificate).
    #[error("the peer closed the connection during the TLS handshake (does it serve TLS on this port, and accept this client?)")]
    ClosedInHandshake,
    /// The handshake did not finish in time.
    #[error("the TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// Another TLS protocol failure.
    #[error("TLS: {0}")]
    Protocol(String),
}

impl TlsError {
    /// Sorts rustls' error into a cause.
    pub(crate) fn from_rustls(e: &rustls::Error, name: &str) -> TlsError {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(C::UnknownIssuer) => TlsError::UnknownIssuer,
            E::InvalidCertificate(
                c @ (C::Expired
                | C::NotValidYet
                | C::ExpiredContext { .. }
                | C::NotValidYetContext { .. }),
            ) => TlsError::Expired(format!("{c:?}")),
            E::InvalidCertificate(c @ (C::NotValidForName | C::NotValidForNameContext { .. })) => {
                TlsError::WrongName {
                    name: name.to_owned(),
                    detail: format!("{c:?}"),
                }
            }
            E::InvalidCertificate(C::Other(other)) => match other.0.downcast_ref::<TlsError>() {
                Some(TlsError::PinMismatch { want, got }) => TlsError::PinMismatch {
                    want: want.clone(),
                    got: got.clone(),
                },
                _ => TlsError::BadCertificate(other.to_string()),
            },
            E::InvalidCertificate(c) => TlsError::BadCertificate(format!("{c:?}")),
            E::AlertReceived(
                a @ (A::BadCertificate
                | A::CertificateRequired
                | A::UnknownCA
                | A::CertificateUnknown
                | A::AccessDenied),
            ) => TlsError::ClientCertRefused(format!("{a:?}")),
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => TlsError::NotTls,
            other => TlsError::Protocol(other.to_string()),
        }
    }

    /// Sorts an I/O error of a blocking TLS stream (rustls' errors arrive
    /// inside one) met during the handshake; `Err` gives back one that is
    /// no TLS matter.
    pub(crate) fn from_handshake_io(
        e: io::Error,
        name: &str,
        limit: Duration,
    ) -> Result<TlsError, io::Error> {
        Ok(
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(r) => TlsError::from_rustls(r, name),
                None => match e.kind() {
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe => TlsError::ClosedInHandshake,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        TlsError::HandshakeTimeout(limit)
                    }
                    _ => return Err(e),
                },
            },
        )
    }
}
