//! Which clients a mutual-TLS service admits beyond "its certificate
//! chains to the client CA": an allow-list of certificate fingerprints
//! (`sha256:...`, as [`fingerprint`](super::fingerprint) gives) or names
//! the certificate is valid for (its DNS subject alternative names). The
//! list is checked in the handshake, after the CA's verification, so a
//! client it refuses gets a TLS alert, never a session.

use super::{fingerprint, TlsError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// One entry of the allow-list.
#[derive(Debug)]
enum Allowed {
    Fingerprint(String),
    Name(ServerName<'static>),
}

/// The allow-list, parsed.
#[derive(Debug)]
pub(super) struct AllowList(Vec<Allowed>);

impl AllowList {
    /// Parses entries: `sha256:` and 64 hex digits, or a DNS name.
    pub(super) fn parse(entries: &[String]) -> Result<AllowList, TlsError> {
        let mut list = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.trim();
            if let Some(hex) = entry.strip_prefix("sha256:") {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(TlsError::Config(format!(
                        "allowed client {entry:?}: a fingerprint is sha256: and 64 hex digits"
                    )));
                }
                list.push(Allowed::Fingerprint(format!(
                    "sha256:{}",
                    hex.to_ascii_lowercase()
                )));
                continue;
            }
            let name = ServerName::try_from(entry.to_string()).map_err(|_| {
                TlsError::Config(format!(
                    "allowed client {entry:?}: neither a sha256: fingerprint nor a DNS name"
                ))
            })?;
            list.push(Allowed::Name(name));
        }
        if list.is_empty() {
            return Err(TlsError::Config(
                "an empty list of allowed clients would admit none".into(),
            ));
        }
        Ok(AllowList(list))
    }

    /// Whether the end-entity certificate `der` is on the list.
    fn admits(&self, der: &CertificateDer<'_>) -> bool {
        let print = fingerprint(der);
        let parsed = webpki::EndEntityCert::try_from(der).ok();
        self.0.iter().any(|allowed| match allowed {
            Allowed::Fingerprint(f) => *f == print,
            Allowed::Name(name) => parsed
                .as_ref()
                .is_some_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok()),
        })
    }
}

/// The CA's verifier, then the allow-list.
#[derive(Debug)]
pub(super) struct AllowListed {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) allowed: AllowList,
}

impl ClientCertVerifier for AllowListed {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.admits(end_entity) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
