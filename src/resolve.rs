//! The resolver seam: from a service's name to where it can be reached.
//!
//! A client asks its [`Resolver`] each time it (re)connects: the local
//! registry ([`LocalRegistry`], the default), or a fixed TCP address
//! ([`FixedAddress`], `Connect::at`); a mesh's membership is a third
//! resolver, not a transport. What a resolver finds, a
//! [`ServiceAddress`], is what the transports open from
//! (`transport.rs`).

use crate::error::{Error, Result};
use crate::registry::{Entry, Registry};
use std::path::PathBuf;

/// Where one service can be reached, as a resolver found it.
#[derive(Clone, Debug)]
pub(crate) struct ServiceAddress {
    /// The service's name.
    pub(crate) name: String,
    /// Its entry in this machine's registry, when it runs here: what
    /// shared memory needs (its control socket, its process).
    pub(crate) local: Option<Entry>,
    /// Its TCP address (`host:port`), if it listens on one.
    pub(crate) tcp: Option<String>,
    /// The token the service published to this user, if any.
    pub(crate) token: Option<String>,
    /// The fingerprint of the TLS certificate it published to this user,
    /// if its TCP port serves TLS.
    pub(crate) tls_pin: Option<String>,
}

impl ServiceAddress {
    /// The registry entry, for a `transport` that reaches only services
    /// on this machine.
    pub(crate) fn local_entry(&self, transport: &'static str) -> Result<&Entry> {
        self.local.as_ref().ok_or_else(|| Error::Unreachable {
            name: self.name.clone(),
            transport,
            why: "it reaches only services in this machine's registry, and this one was given by address",
        })
    }

    /// The TCP address, for a `transport` over TCP.
    pub(crate) fn tcp_address(&self, transport: &'static str) -> Result<&str> {
        self.tcp.as_deref().ok_or_else(|| Error::Unreachable {
            name: self.name.clone(),
            transport,
            why: "the service has no TCP address",
        })
    }
}

/// Finds where a service is.
pub(crate) trait Resolver: Send + Sync {
    /// Where `name` can be reached now. `Error::ServiceNotFound` (or an
    /// I/O error) when it cannot be found.
    fn resolve(&self, name: &str) -> Result<ServiceAddress>;
}

/// The registry of services of this user on this machine.
pub(crate) struct LocalRegistry {
    /// The registry's directory (`METABRIDGE_HOME`).
    pub(crate) home: PathBuf,
}

impl Resolver for LocalRegistry {
    fn resolve(&self, name: &str) -> Result<ServiceAddress> {
        let entry = Registry::open(&self.home)?.lookup(name)?;
        Ok(ServiceAddress {
            name: name.to_string(),
            tcp: Some(entry.tcp.clone()),
            token: entry.token.clone(),
            tls_pin: entry.tls_fingerprint.clone(),
            local: Some(entry),
        })
    }
}

/// A service at an address the caller gave (on another host, say).
pub(crate) struct FixedAddress {
    /// `host:port`.
    pub(crate) tcp: String,
}

impl Resolver for FixedAddress {
    fn resolve(&self, name: &str) -> Result<ServiceAddress> {
        Ok(ServiceAddress {
            name: name.to_string(),
            local: None,
            tcp: Some(self.tcp.clone()),
            token: None,
            tls_pin: None,
        })
    }
}
