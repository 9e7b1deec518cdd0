//! A service's TLS identity: its certificate chain and key, from PEM files
//! (checked as `files` says) or bytes, optionally the CA its clients'
//! certificates must chain to (mutual TLS). A service configured from
//! files reloads them on [`ServerTls::reload`] (the runtime calls it on
//! SIGHUP): connections made after it get the new certificate, the ones
//! open keep theirs.

use super::allow::{AllowList, AllowListed};
use super::files::{read_checked, Holds};
use super::{fingerprint, provider, root_store, TlsError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A service's TLS settings.
///
/// ```no_run
/// use metabridge_tcp::tls::ServerTls;
/// let tls = ServerTls::from_files("/etc/metabridge/cert.pem", "/etc/metabridge/key.pem")?;
/// println!("clients may pin {}", tls.fingerprint());
/// # Ok::<(), metabridge_tcp::tls::TlsError>(())
/// ```
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    identity: Arc<Identity>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &self.fingerprint())
            .field("files", &self.identity.files)
            .finish()
    }
}

/// The certificate served now, and where it came from.
#[derive(Debug)]
struct Identity {
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Parses a certificate chain and its key.
pub(super) fn parse_identity(
    certs: &[u8],
    key: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(certs)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(format!("the certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Config(
            "no certificate in the certificate PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| TlsError::Config(format!("the private key: {e}")))?;
    Ok((chain, Arc::new(key)))
}

/// A chain and key, checked to go together.
fn certified(certs: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let (chain, key) = parse_identity(certs, key)?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Config(format!("the private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Config(format!("the key does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

impl ServerTls {
    /// The certificate chain and key of PEM files (the key readable by
    /// this user only).
    pub fn from_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<ServerTls, TlsError> {
        let (cert, key) = (cert.as_ref().to_owned(), key.as_ref().to_owned());
        let certified = certified(
            &read_checked(&cert, Holds::Certificates)?,
            &read_checked(&key, Holds::PrivateKey)?,
        )?;
        Self::with_identity(
            Arc::new(Identity {
                files: Some((cert, key)),
                current: RwLock::new(certified),
            }),
            None,
        )
    }

    /// The certificate chain and key as PEM bytes (not reloadable).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<ServerTls, TlsError> {
        Self::with_identity(
            Arc::new(Identity {
                files: None,
                current: RwLock::new(certified(cert, key)?),
            }),
            None,
        )
    }

    /// Requires every client to present a certificate that chains to a CA
    /// of the PEM file `ca` (mutual TLS).
    pub fn require_client_certs(self, ca: impl AsRef<Path>) -> Result<ServerTls, TlsError> {
        let pem = read_checked(ca.as_ref(), Holds::Certificates)?;
        self.require_client_certs_pem(&pem, &[])
    }

    /// Requires every client to present a certificate that chains to a CA
    /// of the PEM bytes `ca` (mutual TLS) and, unless `allowed` is empty,
    /// is on that list: certificate fingerprints (`sha256:...`) or DNS
    /// names the certificate is valid for. A client refused gets a TLS
    /// alert in the handshake.
    ///
    /// ```no_run
    /// use metabridge_tcp::tls::ServerTls;
    /// let ca = std::fs::read("/etc/metabridge/clients-ca.pem")?;
    /// let tls = ServerTls::from_files("/etc/metabridge/cert.pem", "/etc/metabridge/key.pem")?
    ///     .require_client_certs_pem(&ca, &["reporting.internal".to_string()])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn require_client_certs_pem(
        self,
        ca: &[u8],
        allowed: &[String],
    ) -> Result<ServerTls, TlsError> {
        let roots = root_store(ca, "the client CA")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Config(format!("the client CA: {e}")))?;
        let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = if allowed.is_empty() {
            verifier
        } else {
            Arc::new(AllowListed {
                inner: verifier,
                allowed: AllowList::parse(allowed)?,
            })
        };
        // The same identity: a reload serves both configurations.
        Self::with_identity(self.identity, Some(verifier))
    }

    fn with_identity(
        identity: Arc<Identity>,
        clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<ServerTls, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match clients {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_cert_resolver(identity.clone());
        Ok(ServerTls {
            config: Arc::new(config),
            identity,
        })
    }

    /// Reads the certificate and key files again and serves them to new
    /// connections; on any error the current ones stay. A no-op for a
    /// certificate given as bytes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert, key)) = &self.identity.files else {
            return Ok(());
        };
        let fresh = certified(
            &read_checked(cert, Holds::Certificates)?,
            &read_checked(key, Holds::PrivateKey)?,
        )?;
        *self
            .identity
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The served certificate's SHA-256 fingerprint (`sha256:...`), which a
    /// client may pin with [`ClientTls::pinned`](super::ClientTls::pinned).
    pub fn fingerprint(&self) -> String {
        let current = self
            .identity
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        current
            .cert
            .first()
            .map(|c| fingerprint(c))
            .unwrap_or_default()
    }

    /// The rustls configuration, for the server's acceptor.
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

/// Whether the first byte a client sent opens a TLS handshake record
/// (content type 22): anything else is a plaintext client on a TLS port.
pub(crate) fn looks_like_tls(first: u8) -> bool {
    first == 0x16
}
