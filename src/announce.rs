//! The announcer seam: making a serving service known beyond this
//! machine's registry (a mesh of hosts, say).
//!
//! The runtime knows no mesh. An [`Announcer`] (metabridge-mesh's, or the
//! [`MeshAgent`](crate::MeshAgent) helper process) is given to the service
//! ([`Service::announce`](crate::Service::announce), or `$METABRIDGE_MESH`
//! through the factory a program installs with [`set_env_announcer`], else
//! through the helper); it is asked to [`check`](Announcer::check) the
//! service's configuration before anything starts, and told once the
//! service is registered and serving. What it returns keeps the service
//! announced: it is dropped when the service begins to stop, before the
//! registry entry goes, so that clients elsewhere stop choosing it first.

use crate::config::ServiceConfig;
use crate::error::{Error, Result};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// Makes a serving service known beyond this machine.
pub trait Announcer: Send + Sync + 'static {
    /// Refuses, before anything starts, a service this announcer cannot
    /// announce as configured (a mesh wants TLS and a token or mutual
    /// TLS), with [`Error::Announce`] naming what is missing.
    fn check(&self, service: &str, config: &ServiceConfig) -> Result<()>;

    /// Announces the service, which serves now. The announcement lasts as
    /// long as the returned value; an announcer that cannot reach its
    /// peers yet keeps trying in the background and says so in the log
    /// (the service serves locally meanwhile).
    fn announce(&self, serving: Announcement) -> Box<dyn Send>;
}

/// What an announcer may say about a serving service.
#[derive(Clone)]
pub struct Announcement {
    /// The service's name.
    pub service: String,
    /// The address its TCP port is bound to (`0.0.0.0:port` when it
    /// listens on every interface).
    pub tcp: String,
    /// The SHA-256 fingerprint of the TLS certificate it serves, if any.
    pub tls_fingerprint: Option<String>,
    /// Its endpoints.
    pub endpoints: Vec<String>,
    /// The endpoints marked idempotent: those a client may retry on
    /// another replica when a call's outcome is unknown.
    pub idempotent: Vec<String>,
    /// When it started serving.
    pub started: SystemTime,
    pub(crate) counters: Option<Arc<crate::stats::Counters>>,
}

impl Announcement {
    /// Calls answered so far (all endpoints), from the live counters;
    /// `None` when the service runs without them.
    pub fn calls(&self) -> Option<u64> {
        let counters = self.counters.as_ref()?;
        crate::stats::read(counters.read_only_fd())
            .ok()
            .map(|s| s.calls())
    }
}

impl std::fmt::Debug for Announcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcement")
            .field("service", &self.service)
            .field("tcp", &self.tcp)
            .field("tls_fingerprint", &self.tls_fingerprint)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

/// Makes the announcer of a `$METABRIDGE_MESH` value.
pub type EnvAnnouncerFactory = fn(&str) -> Result<Arc<dyn Announcer>>;

static ENV_FACTORY: OnceLock<EnvAnnouncerFactory> = OnceLock::new();

/// The variable that puts every service of a program into a mesh.
pub(crate) const MESH_ENV: &str = "METABRIDGE_MESH";

/// Installs what turns `$METABRIDGE_MESH` into an announcer
/// (`metabridge_mesh::install()` calls it). The first installed stays;
/// false if one was already.
pub fn set_env_announcer(factory: EnvAnnouncerFactory) -> bool {
    ENV_FACTORY.set(factory).is_ok()
}

/// Refuses a service that cannot be exposed beyond this machine safely:
/// one that listens on no address other hosts reach, serves no TLS, or
/// authenticates its callers neither by an operator token nor by client
/// certificates. What every announcer into a mesh requires.
pub fn require_secure_exposure(service: &str, config: &ServiceConfig) -> Result<()> {
    let refuse = |why: &str| Error::Announce {
        service: service.to_string(),
        why: why.to_string(),
    };
    if !config.tcp_exposed {
        return Err(refuse(
            "it listens on no address other hosts can reach: expose it with \
             .host(\"0.0.0.0\") (or METABRIDGE_HOST)",
        ));
    }
    let client_ca = config
        .tls
        .as_ref()
        .map(|t| t.client_ca.is_some())
        .or(config.tls_pem.as_ref().map(|t| t.client_ca.is_some()));
    match client_ca {
        None => Err(refuse(
            "a meshed service must serve TLS: give it a certificate (.tls(..), \
             #[service(tls(..))] or METABRIDGE_TLS_CERT/KEY)",
        )),
        Some(false) if config.token.is_none() => Err(refuse(
            "a meshed service must authenticate its callers: set an operator token \
             (METABRIDGE_TOKEN or ServiceConfig::token) or require client certificates \
             (TlsFiles::client_ca)",
        )),
        Some(_) => Ok(()),
    }
}

/// The announcers of a service: its own, else the one `$METABRIDGE_MESH`
/// asks for (through the installed factory, else the helper process),
/// each checked against its configuration.
pub(crate) fn announcers_of(
    service: &str,
    own: &[Arc<dyn Announcer>],
    config: &ServiceConfig,
) -> Result<Vec<Arc<dyn Announcer>>> {
    let mut all = own.to_vec();
    if all.is_empty() {
        if let Some(value) = std::env::var(MESH_ENV).ok().filter(|v| !v.is_empty()) {
            match ENV_FACTORY.get() {
                Some(factory) => all.push(factory(&value)?),
                None => all.push(Arc::new(crate::MeshAgent::new(&value))),
            }
        }
    }
    for announcer in &all {
        announcer.check(service, config)?;
    }
    Ok(all)
}
