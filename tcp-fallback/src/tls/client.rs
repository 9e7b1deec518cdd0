//! How a client verifies the service it reaches over TLS: against a CA
//! bundle, with the host name checked (the default: the machine's usual
//! PKI, or a private CA), or against one pinned certificate fingerprint
//! (for a self-signed service, where no CA vouches for it); optionally
//! with a certificate of its own (mutual TLS).

use super::files::{read_checked, Holds};
use super::{fingerprint, provider, root_store, TlsError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A client's TLS settings: whom it trusts, and what it presents.
///
/// ```no_run
/// use metabridge_tcp::tls::ClientTls;
/// // A service whose certificate a private CA signed:
/// let by_ca = ClientTls::ca_file("/etc/metabridge/ca.pem")?;
/// // A self-signed one, pinned by its fingerprint (`metabridge cert` prints it):
/// let pinned = ClientTls::pinned(
///     "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
/// )?;
/// # Ok::<(), metabridge_tcp::tls::TlsError>(())
/// ```
#[derive(Clone)]
pub struct ClientTls {
    trust: Trust,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
}

#[derive(Clone)]
enum Trust {
    Roots(Arc<rustls::RootCertStore>),
    Pin(String),
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let trust = match &self.trust {
            Trust::Roots(r) => format!("{} CA certificates", r.len()),
            Trust::Pin(p) => format!("pinned {p}"),
        };
        f.debug_struct("ClientTls")
            .field("trust", &trust)
            .field("client_certificate", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Trusts the CA certificates of a PEM file (checked as the module
    /// `files` says), and checks the service's host name against its
    /// certificate.
    pub fn ca_file(path: impl AsRef<Path>) -> Result<ClientTls, TlsError> {
        let pem = read_checked(path.as_ref(), Holds::Certificates)?;
        Self::ca_pem(&pem)
    }

    /// As [`ca_file`](Self::ca_file), from PEM bytes.
    pub fn ca_pem(pem: &[u8]) -> Result<ClientTls, TlsError> {
        let roots = root_store(pem, "the CA certificates")?;
        Ok(ClientTls {
            trust: Trust::Roots(Arc::new(roots)),
            identity: None,
            server_name: None,
        })
    }

    /// Trusts exactly the certificate whose SHA-256 fingerprint is
    /// `fingerprint` (`sha256:` and 64 hex digits, colons allowed; see
    /// [`fingerprint`](super::fingerprint)), whatever its name or issuer:
    /// for self-signed services. Its validity dates are not checked either
    /// (the pin is the trust).
    pub fn pinned(fingerprint: &str) -> Result<ClientTls, TlsError> {
        Ok(ClientTls {
            trust: Trust::Pin(normalize_pin(fingerprint)?),
            identity: None,
            server_name: None,
        })
    }

    /// Presents a certificate of its own (mutual TLS): PEM files, the key
    /// checked as a service's is.
    pub fn client_cert_files(
        mut self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<ClientTls, TlsError> {
        let certs = read_checked(cert.as_ref(), Holds::Certificates)?;
        let key = read_checked(key.as_ref(), Holds::PrivateKey)?;
        self.identity = Some(super::server::parse_identity(&certs, &key)?);
        Ok(self)
    }

    /// The name checked against the service's certificate, in place of
    /// the host the client connects to.
    pub fn server_name(mut self, name: &str) -> ClientTls {
        self.server_name = Some(name.to_owned());
        self
    }

    /// The rustls configuration and the name to verify for a connection
    /// to `host` (a DNS name or an IP address).
    pub fn connector(&self, host: &str) -> Result<TlsConnector, TlsError> {
        let name = self.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| TlsError::Config(format!("{name:?} is not a host name: {e}")))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.trust {
            Trust::Roots(roots) => builder.with_root_certificates(roots.clone()),
            Trust::Pin(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pin: pin.clone(),
                    provider: provider(),
                })),
        };
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| TlsError::Config(format!("the client certificate: {e}")))?,
        };
        // Session tickets let a pool's later connections resume.
        config.resumption = rustls::client::Resumption::in_memory_sessions(64);
        Ok(TlsConnector {
            config: Arc::new(config),
            server_name,
            name: name.to_owned(),
        })
    }
}

/// A ready client configuration for one service: what a pool keeps.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    name: String,
}

/// The pin as `sha256:` and 64 lowercase hex digits.
fn normalize_pin(pin: &str) -> Result<String, TlsError> {
    let hex: String = pin
        .trim()
        .strip_prefix("sha256:")
        .or_else(|| pin.trim().strip_prefix("SHA256:"))
        .unwrap_or(pin.trim())
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TlsError::Config(format!(
            "{pin:?} is not a SHA-256 fingerprint (`sha256:` and 64 hex digits)"
        )));
    }
    Ok(format!("sha256:{hex}"))
}

/// Accepts exactly the pinned certificate; signatures are still verified
/// (the peer must hold its key).
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    TlsError::PinMismatch {
                        want: self.pin.clone(),
                        got,
                    },
                ))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client's TLS stream over a blocking socket.
pub(crate) type ClientStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Runs the handshake on a connected socket by `deadline`; the socket's
/// timeouts are left for the caller to set again.
pub(crate) fn handshake(
    connector: &TlsConnector,
    stream: TcpStream,
    deadline: Instant,
) -> Result<ClientStream, crate::PoolError> {
    let limit = deadline.saturating_duration_since(Instant::now());
    let conn =
        rustls::ClientConnection::new(connector.config.clone(), connector.server_name.clone())
            .map_err(|e| crate::PoolError::Tls(TlsError::from_rustls(&e, &connector.name)))?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(crate::PoolError::Tls(TlsError::HandshakeTimeout(limit)));
        }
        let set = tls
            .sock
            .set_read_timeout(Some(left))
            .and_then(|()| tls.sock.set_write_timeout(Some(left)));
        set.map_err(crate::PoolError::Io)?;
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e) => {
                return Err(
                    match TlsError::from_handshake_io(e, &connector.name, limit) {
                        Ok(tls) => crate::PoolError::Tls(tls),
                        Err(io) => crate::PoolError::Io(io),
                    },
                )
            }
        }
    }
    Ok(tls)
}
