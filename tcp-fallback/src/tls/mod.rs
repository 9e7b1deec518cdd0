//! TLS for the TCP transport (feature `tls`): rustls with its `ring`
//! crypto provider. This file only wires the pieces, one concern a file:
//!
//! * `files`: reading certificate and key files with the checks the log
//!   file gets (ours, no symlink, a key nobody else may read);
//! * `server`: a service's certificate, reloadable without a restart;
//! * `allow`: the clients a mutual-TLS service admits (fingerprints or
//!   names), beyond their CA;
//! * `client`: how a client verifies the service (a CA bundle with the
//!   host name checked, or a pinned certificate fingerprint);
//! * `error`: rustls' and the socket's failures as one typed [`TlsError`]
//!   naming the cause.
//!
//! The server side runs the handshake in the connection's task, bounded
//! like an unauthenticated connection (see
//! [`ServerConfig::auth_timeout`](crate::ServerConfig::auth_timeout)); the
//! pooled client runs it when it opens a connection, within the call's
//! deadline, so a pooled connection pays it once.

mod allow;
mod client;
mod error;
mod files;
mod server;

pub use client::{ClientTls, TlsConnector};
pub use error::TlsError;
pub use server::ServerTls;

pub(crate) use client::{handshake as client_handshake, ClientStream};
pub(crate) use server::looks_like_tls;

/// The bytes of a PEM file of certificates (a CA bundle), read with the
/// checks of `files` (a regular file of this user's, not a symlink, at
/// most 4 MiB).
pub fn read_certificates(path: impl AsRef<std::path::Path>) -> Result<Vec<u8>, TlsError> {
    files::read_checked(path.as_ref(), files::Holds::Certificates)
}

/// The SHA-256 fingerprint of a DER certificate, as `sha256:` and 64
/// lowercase hex digits: what [`ClientTls::pinned`] takes and
/// [`ServerTls::fingerprint`] gives.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The CA certificates of a PEM bundle (`what` names them in errors): the
/// trust of a client, or a service's of its clients' certificates. An
/// empty bundle is an error (it would trust nothing, silently).
fn root_store(pem: &[u8], what: &str) -> Result<rustls::RootCertStore, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::Config(format!("{what}: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("{what}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Config(format!(
            "no certificate in the PEM of {what}"
        )));
    }
    Ok(roots)
}

/// The crypto provider of every configuration made here: `ring` (a small
/// C and assembly build, unlike `aws-lc-rs`).
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
