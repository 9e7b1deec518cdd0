//! A service's membership, run for it by the runtime: the
//! [`metabridge::Announcer`] of a meshed service, and the `Service`
//! extension that gives it one.
//!
//! The announcer refuses, before the service starts, one that the mesh
//! cannot safely expose (no TLS, or neither an operator token nor client
//! certificates). Once the service serves, a thread of its own joins the
//! mesh and stays joined until the runtime drops what `announce` returned;
//! peers unreachable at start are retried by zenoh while the service
//! serves locally, and the log says when the first peer is reached.

use crate::{Advert, Member, MeshConfig};
use metabridge::{Announcement, Announcer, Service, ServiceConfig};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::time::Duration;

/// How often a member that is not linked to any peer looks again (to log
/// when it is).
const PEER_CHECK: Duration = Duration::from_secs(1);
/// How long a join that failed waits before the next attempt.
const REJOIN: Duration = Duration::from_secs(2);

/// Joins the mesh for a service (see the module docs).
///
/// ```
/// use metabridge_mesh::{MeshAnnouncer, MeshConfig};
/// let announcer = MeshAnnouncer::new(MeshConfig::from_setting("tcp/10.0.0.2:7447").unwrap());
/// # let _ = announcer;
/// ```
pub struct MeshAnnouncer {
    config: Result<MeshConfig, String>,
}

impl MeshAnnouncer {
    /// An announcer into the mesh `config` describes.
    pub fn new(config: MeshConfig) -> MeshAnnouncer {
        MeshAnnouncer { config: Ok(config) }
    }

    /// An announcer from one setting (see [`MeshConfig::from_setting`]);
    /// a setting that cannot be read stops the service at start, naming it.
    pub fn from_setting(setting: &str) -> MeshAnnouncer {
        MeshAnnouncer {
            config: MeshConfig::from_setting(setting).map_err(|e| e.to_string()),
        }
    }
}

/// `.mesh(config)` on a [`Service`].
pub trait ServiceMesh {
    /// Joins `config`'s mesh once the service serves (see
    /// [`MeshAnnouncer`]).
    fn mesh(self, config: MeshConfig) -> Self;
}

impl<S: Send + Sync + 'static> ServiceMesh for Service<S> {
    fn mesh(self, config: MeshConfig) -> Self {
        self.announce(MeshAnnouncer::new(config))
    }
}

/// Lets `$METABRIDGE_MESH` put this program's services into a mesh: call
/// once in `main` (a program that never calls it refuses the variable).
pub fn install() {
    metabridge::set_env_announcer(|setting| {
        Ok(std::sync::Arc::new(MeshAnnouncer::from_setting(setting)))
    });
}

impl Announcer for MeshAnnouncer {
    fn check(&self, service: &str, config: &ServiceConfig) -> metabridge::Result<()> {
        let refuse = |why: String| metabridge::Error::Announce {
            service: service.to_string(),
            why,
        };
        self.config.as_ref().map_err(|e| refuse(e.clone()))?;
        crate::service_key(service).map_err(|e| refuse(e.to_string()))?;
        metabridge::require_secure_exposure(service, config)
    }

    fn announce(&self, serving: Announcement) -> Box<dyn Send> {
        let Ok(config) = self.config.clone() else {
            return Box::new(()); // refused by `check` before the start
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let service = serving.service.clone();
        let named = service.clone();
        let thread = std::thread::Builder::new()
            .name("metabridge-mesh".into())
            .spawn(move || {
                let serving = Serving::of(serving);
                let run = std::panic::AssertUnwindSafe(|| {
                    membership(config, serving, |wait| match stopped.recv_timeout(wait) {
                        Err(mpsc::RecvTimeoutError::Timeout) => Tick::Alive,
                        _ => Tick::Stop,
                    })
                });
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(target: "metabridge::mesh", "the mesh membership of {service:?} panicked: it is no longer announced");
                }
            });
        match thread {
            Ok(thread) => Box::new(Joined {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::error!(target: "metabridge::mesh", "service {named:?} cannot join the mesh: {e}");
                Box::new(())
            }
        }
    }
}

/// A service's membership: leaves the mesh when dropped.
struct Joined {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a member says about the service it announces: the service's
/// report (the serving process, its address, fingerprint, idempotent
/// endpoints, start), and its live call count.
pub(crate) struct Serving {
    pub report: metabridge::AgentReport,
    pub calls: Box<dyn Fn() -> Option<u64> + Send + Sync>,
}

impl Serving {
    /// What `report` says, the call count read live by `calls`.
    pub(crate) fn from_report(
        report: metabridge::AgentReport,
        calls: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    ) -> Serving {
        Serving { report, calls }
    }

    fn of(a: Announcement) -> Serving {
        let report = metabridge::AgentReport::of(&a);
        Serving::from_report(report, Box::new(move || a.calls()))
    }
}

/// What the membership loop is told each time it waits.
pub(crate) enum Tick {
    /// Serving: stay (or become again) announced.
    Alive,
    /// The service gives no sign of life: withdraw its token until it does.
    Silent,
    /// Leave the mesh.
    Stop,
}

/// The membership loop: joins (again, until it works), logs how the links
/// to peers go, withdraws the token while `tick` says the service is
/// silent, and leaves when it says stop. `tick(wait)` waits at most `wait`.
pub(crate) fn membership(
    config: MeshConfig,
    serving: Serving,
    mut tick: impl FnMut(Duration) -> Tick,
) {
    // Zenoh refuses tokio's current-thread scheduler.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("metabridge-mesh-rt")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(target: "metabridge::mesh", "cannot start the mesh thread's runtime: {e}");
            return;
        }
    };
    let Serving { report, calls } = serving;
    let metabridge::AgentReport {
        service,
        pid,
        tcp,
        tls_fingerprint,
        idempotent,
        started,
        ..
    } = report;
    let addresses = advertised(&config, &tcp);
    let host = hostname();
    let calls = std::sync::Arc::new(calls);
    let advert = move || Advert {
        addresses: addresses.clone(),
        tls_fingerprint: tls_fingerprint.clone(),
        host: host.clone(),
        idempotent: idempotent.clone(),
        started,
        calls: calls(),
    };
    let mut member = loop {
        match runtime.block_on(Member::join_for(&config, &service, pid, advert.clone())) {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(target: "metabridge::mesh", "service {service:?} serves locally; joining {} failed ({e}), trying again", config.describe());
                let mut waited = Duration::ZERO;
                while waited < REJOIN {
                    if matches!(tick(PEER_CHECK), Tick::Stop) {
                        return;
                    }
                    waited += PEER_CHECK;
                }
            }
        }
    };
    let mut linked = false;
    let mut said_alone = false;
    loop {
        let peers = runtime.block_on(member.peers());
        match (peers > 0, linked) {
            (true, false) => {
                tracing::info!(target: "metabridge::mesh", "service {service:?} joined {} as {} ({peers} peer(s))", config.describe(), member.instance());
                linked = true;
            }
            (false, true) | (false, false) if !said_alone || linked => {
                tracing::warn!(target: "metabridge::mesh", "service {service:?} reaches no peer of {}: serving locally and still trying", config.describe());
                said_alone = true;
                linked = false;
            }
            _ => {}
        }
        match tick(PEER_CHECK) {
            Tick::Stop => break,
            Tick::Silent if member.announced() => {
                tracing::warn!(target: "metabridge::mesh", "service {service:?} gives no sign of life: withdrawn from the mesh until it does");
                if let Err(e) = runtime.block_on(member.withdraw()) {
                    tracing::warn!(target: "metabridge::mesh", "cannot withdraw {service:?}: {e}");
                }
            }
            Tick::Alive if !member.announced() => {
                tracing::info!(target: "metabridge::mesh", "service {service:?} is alive again: announced");
                if let Err(e) = runtime.block_on(member.reassert()) {
                    tracing::warn!(target: "metabridge::mesh", "cannot announce {service:?} again: {e}");
                }
            }
            _ => {}
        }
    }
    if let Err(e) = runtime.block_on(member.leave()) {
        tracing::warn!(target: "metabridge::mesh", "service {service:?} left the mesh uncleanly: {e}");
    }
}

/// The addresses a replica advertises: the configured ones, else its TCP
/// address, or for one bound to every interface, each interface's.
fn advertised(config: &MeshConfig, tcp: &str) -> Vec<String> {
    if !config.advertise.is_empty() {
        return config.advertise.clone();
    }
    let Ok(bound) = tcp.parse::<SocketAddr>() else {
        return vec![tcp.to_string()];
    };
    if !bound.ip().is_unspecified() {
        return vec![tcp.to_string()];
    }
    let mut all: Vec<String> = nix::ifaddrs::getifaddrs()
        .map(|ifs| {
            ifs.filter_map(|i| i.address)
                .filter_map(|a| {
                    let ip: IpAddr = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                        (Some(v4), _) => IpAddr::V4(v4.ip()),
                        (_, Some(v6)) => IpAddr::V6(v6.ip()),
                        _ => return None,
                    };
                    let wanted = !ip.is_loopback()
                        && (bound.is_ipv6() || ip.is_ipv4())
                        && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                    wanted.then(|| SocketAddr::new(ip, bound.port()).to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all.dedup();
    all
}

/// This host's name, for operators.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}
