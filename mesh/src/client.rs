//! A client of a service by name across the mesh: `connect(name).mesh(config)`.
//!
//! A call goes, in this order, to the replica on this host (through the
//! local registry, over shared memory), else to the live remote replica
//! with the fewest calls outstanding from this client, over MeshClient's
//! TLS TCP. The view of replicas is the liveliness subscriber's
//! ([`Replicas`]); what a replica advertises is a hint: the connection is
//! verified with this client's own CA or pins and token, and a replica
//! that fails verification leaves this client's view with a warning.
//!
//! At most once: a call that may have reached a replica (the replica died
//! under it, or it timed out) is never sent again, unless its endpoint is
//! marked idempotent by the service; a call that surely did not (refused
//! connection, failed verification) goes to the next replica.

use crate::{MeshConfig, MeshError, Replica, Replicas};
use metabridge::{CallArgs, Client, Connect, Error, IntoArgs, PeerGone};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a call waits for a first replica to be seen, by default.
const DISCOVERY: Duration = Duration::from_secs(3);
/// How often a client without a local replica looks for one again.
const LOCAL_RECHECK: Duration = Duration::from_secs(1);

/// `.mesh(config)` on a [`Connect`].
pub trait ConnectMesh {
    /// Finds the service by name in `config`'s mesh (see the module docs).
    fn mesh(self, config: MeshConfig) -> MeshConnect;
}

impl ConnectMesh for Connect {
    fn mesh(self, config: MeshConfig) -> MeshConnect {
        MeshConnect {
            base: self,
            config,
            tls: None,
            discovery: DISCOVERY,
            local: true,
        }
    }
}

/// Options of a mesh client; [`open`](MeshConnect::open) makes it.
#[must_use = "a mesh client is made only by `.open()`"]
pub struct MeshConnect {
    base: Connect,
    config: MeshConfig,
    tls: Option<metabridge::tls::ClientTls>,
    discovery: Duration,
    local: bool,
}

impl MeshConnect {
    /// How remote replicas are verified: a CA bundle or pins (default
    /// `$METABRIDGE_TLS_CA` or `$METABRIDGE_TLS_PIN`; one of them is
    /// required: what a replica advertises is never trusted).
    pub fn tls(mut self, tls: metabridge::tls::ClientTls) -> MeshConnect {
        self.tls = Some(tls);
        self
    }

    /// How long a call waits for a first replica to appear (default 3 s,
    /// within the call's timeout).
    pub fn discovery(mut self, wait: Duration) -> MeshConnect {
        self.discovery = wait;
        self
    }

    /// Whether a replica on this host (in this machine's registry) is
    /// preferred (default true).
    pub fn prefer_local(mut self, local: bool) -> MeshConnect {
        self.local = local;
        self
    }

    /// Joins the mesh as a client and starts following the replicas.
    pub fn open(self) -> metabridge::Result<MeshClient> {
        let name = self.base.service_name().to_string();
        let mesh = self.config.describe();
        let setting = |e: MeshError| Error::Announce {
            service: name.clone(),
            why: e.to_string(),
        };
        let tls = match self.tls {
            Some(tls) => tls,
            None => metabridge::tls::client_from_env()?.ok_or_else(|| Error::Announce {
                service: name.clone(),
                why: "a mesh client verifies replicas with its own CA or pins: give \
                      MeshConnect::tls(..), METABRIDGE_TLS_CA or METABRIDGE_TLS_PIN"
                    .into(),
            })?,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("metabridge-mesh-client")
            .enable_all()
            .build()?;
        let view = runtime
            .block_on(Replicas::watch(&self.config, &name))
            .map_err(setting)?;
        let lease = self.config.lease;
        let shared = Arc::new(Shared {
            timeout: self.base.call_timeout(),
            base: self.base.tls(tls),
            name,
            mesh,
            discovery: self.discovery,
            rest: lease * 2,
            prefer_local: self.local,
            local: Mutex::new(Local {
                client: None,
                checked: None,
            }),
            remotes: Mutex::new(RemoteSet::default()),
            turn: AtomicUsize::new(0),
            view,
            runtime,
        });
        // A replica that leaves the view (dead, or silent past its lease)
        // takes the calls in flight to it along: they end now, as
        // `PeerGone`, instead of at their timeout.
        let mut changes = shared.view.changes();
        let watched = Arc::downgrade(&shared);
        shared.runtime.spawn(async move {
            while changes.changed().await.is_ok() {
                match watched.upgrade() {
                    Some(s) => s.end_calls_to_departed(),
                    None => return,
                }
            }
        });
        Ok(MeshClient { shared })
    }
}

/// A client of one service across the mesh; cheap to clone, usable from
/// many threads.
#[derive(Clone)]
pub struct MeshClient {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    /// The mesh, described for errors.
    mesh: String,
    /// The options every replica's client is opened with.
    base: Connect,
    timeout: Duration,
    discovery: Duration,
    /// How long a replica that failed a call is passed over.
    rest: Duration,
    prefer_local: bool,
    local: Mutex<Local>,
    remotes: Mutex<RemoteSet>,
    /// Rotates the choice among replicas with as few calls outstanding.
    turn: AtomicUsize,
    view: Replicas,
    runtime: tokio::runtime::Runtime,
}

/// The replica on this host, if there is one.
struct Local {
    client: Option<Client>,
    /// When the registry was last asked.
    checked: Option<Instant>,
}

/// This client's remote replicas, rebuilt from the view when it changes.
#[derive(Default)]
struct RemoteSet {
    /// The view's version this was built from.
    version: Option<u64>,
    live: Vec<Arc<Remote>>,
    /// Instances that failed verification, and why: never called again.
    refused: HashMap<String, String>,
    /// Instances passed over until then (a call to them failed).
    resting: HashMap<String, Instant>,
}

/// One remote replica.
struct Remote {
    replica: Replica,
    /// Opened at its first call.
    client: Mutex<Option<Client>>,
    /// Calls of this client in flight to it.
    outstanding: AtomicUsize,
}

/// What a failed attempt means for the call.
enum Attempt {
    /// It surely did not reach the replica: try the next.
    NotSent,
    /// It may have run: never sent again (unless idempotent).
    MaybeRan,
    /// The call's own answer (an endpoint's error, say).
    Final,
}

impl MeshClient {
    /// Calls `endpoint` with positional `args`, on one replica.
    pub fn call<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: impl IntoArgs,
    ) -> metabridge::Result<R> {
        let mut encoded = Vec::new();
        args.encode_args(&mut encoded)?;
        self.call_raw(endpoint, &encoded, &[0x80])
    }

    /// Calls `endpoint` with positional and keyword arguments.
    pub fn call_with<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: &CallArgs,
    ) -> metabridge::Result<R> {
        self.call_raw(endpoint, &args.encoded_args(), &args.encoded_kwargs())
    }

    /// Calls `endpoint` with arguments already encoded (a MessagePack
    /// array and map).
    pub fn call_raw<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: &[u8],
        kwargs: &[u8],
    ) -> metabridge::Result<R> {
        let s = &*self.shared;
        let deadline = Instant::now() + s.timeout;
        if let Some(local) = s.local_client() {
            match local.call_raw::<R>(endpoint, args, kwargs) {
                Err(Error::ServiceNotFound { .. }) => s.forget_local(),
                Err(e @ (Error::PeerGone(_) | Error::Timeout(_))) if s.idempotent(endpoint) => {
                    tracing::warn!(target: "metabridge::mesh", "{endpoint} on the local replica of {:?} failed ({e}); idempotent, trying a remote one", s.name);
                    s.forget_local();
                }
                done => return done,
            }
        }
        let mut tried: HashSet<String> = HashSet::new();
        let mut last: Option<Error> = None;
        // Waiting for a replica is for a call that found none yet, or an
        // idempotent one to retry; one refused everywhere ends at once.
        let mut may_wait = true;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(remote) = s.choose(&tried) else {
                if may_wait && !left.is_zero() && s.wait_for_replica(&tried, left) {
                    may_wait = false;
                    continue;
                }
                return Err(last.unwrap_or_else(|| s.not_found()));
            };
            if left.is_zero() {
                return Err(last.unwrap_or_else(|| s.not_found()));
            }
            let instance = remote.replica.instance.clone();
            tried.insert(instance.clone());
            let client = match s.open(&remote) {
                Ok(c) => c.with_timeout(left),
                Err(e) => {
                    s.drop_replica(&instance, &e);
                    may_wait = false;
                    last = Some(e);
                    continue;
                }
            };
            remote.outstanding.fetch_add(1, Ordering::Relaxed);
            let result = client.call_raw::<R>(endpoint, args, kwargs);
            remote.outstanding.fetch_sub(1, Ordering::Relaxed);
            let e = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match classify(&e) {
                Attempt::Final => return Err(e),
                Attempt::NotSent => {
                    s.drop_replica(&instance, &e);
                    may_wait = false;
                    last = Some(e);
                }
                Attempt::MaybeRan => {
                    s.rest_replica(&instance);
                    let e = match e {
                        Error::PeerGone(cause) => Error::PeerGone(PeerGone::Replica {
                            service: s.name.clone(),
                            replica: instance.clone(),
                            why: cause.to_string(),
                        }),
                        other => other,
                    };
                    if !remote
                        .replica
                        .advert
                        .idempotent
                        .iter()
                        .any(|i| i == endpoint)
                    {
                        return Err(e);
                    }
                    tracing::warn!(target: "metabridge::mesh", "{endpoint} on replica {instance} of {:?} failed ({e}); idempotent, trying another", s.name);
                    may_wait = true;
                    last = Some(e);
                }
            }
        }
    }

    /// Calls from async code (a tokio runtime): the call of
    /// [`call`](Self::call), replica choice and failover included, run on
    /// tokio's blocking pool (as a TCP call of `Client::call_async` is), so
    /// that it never blocks a worker thread.
    ///
    /// **Cancellation.** Dropping the future does not stop a call already
    /// handed to the pool: it runs to its end (at most once, as any call)
    /// and its answer is discarded.
    ///
    /// ```no_run
    /// # async fn f(client: metabridge_mesh::MeshClient) -> metabridge::Result<()> {
    /// let n: u32 = client.call_async("record", ("id-1",)).await?;
    /// # Ok(()) }
    /// ```
    pub fn call_async<R, A>(
        &self,
        endpoint: &str,
        args: A,
    ) -> impl std::future::Future<Output = metabridge::Result<R>> + Send + 'static
    where
        R: DeserializeOwned + Send + 'static,
        A: IntoArgs + Send + 'static,
    {
        let client = self.clone();
        let endpoint = endpoint.to_owned();
        async move {
            let mut encoded = Vec::new();
            args.encode_args(&mut encoded)?;
            tokio::task::spawn_blocking(move || client.call_raw::<R>(&endpoint, &encoded, &[0x80]))
                .await
                .unwrap_or_else(|e| {
                    Err(Error::Io(std::io::Error::other(format!(
                        "the call's task on the blocking pool failed: {e}"
                    ))))
                })
        }
    }

    /// The live replicas this client sees (instance, advert).
    pub fn replicas(&self) -> Vec<Replica> {
        self.shared.view.replicas()
    }

    /// Waits until the client sees at least `n` replicas, for at most
    /// `timeout`; whether it did.
    pub fn wait_for_replicas(&self, n: usize, timeout: Duration) -> bool {
        let s = &*self.shared;
        s.runtime
            .block_on(s.view.wait_until(timeout, |r| r.len() >= n))
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl Shared {
    /// The local replica's client, if this host has one (the registry is
    /// asked again at most every [`LOCAL_RECHECK`]).
    fn local_client(&self) -> Option<Client> {
        if !self.prefer_local {
            return None;
        }
        let mut local = lock(&self.local);
        if let Some(c) = &local.client {
            return Some(c.clone());
        }
        if local.checked.is_some_and(|t| t.elapsed() < LOCAL_RECHECK) {
            return None;
        }
        local.checked = Some(Instant::now());
        // Opening looks the name up in the client's own registry (its
        // `.home()`, else `$METABRIDGE_HOME`): not found there, no local replica.
        let client = self
            .base
            .clone()
            .transport(metabridge::TransportKind::Auto)
            .open()
            .ok()?;
        local.client = Some(client.clone());
        Some(client)
    }

    fn forget_local(&self) {
        let mut local = lock(&self.local);
        local.client = None;
        local.checked = Some(Instant::now());
    }

    /// Ends the calls in flight to replicas that left the view (see
    /// `MeshConnect::open`).
    fn end_calls_to_departed(&self) {
        let present: HashSet<String> = self
            .view
            .replicas()
            .into_iter()
            .map(|r| r.instance)
            .collect();
        let set = lock(&self.remotes);
        for r in &set.live {
            if present.contains(&r.replica.instance) || r.outstanding.load(Ordering::Relaxed) == 0 {
                continue;
            }
            if let Some(client) = lock(&r.client).as_ref() {
                let ended = client.abort_calls();
                if ended > 0 {
                    tracing::warn!(target: "metabridge::mesh", "replica {} of {:?} left the mesh: {ended} call(s) in flight to it ended", r.replica.instance, self.name);
                }
            }
        }
    }

    /// The replica to call next: live, not refused, not resting, not tried
    /// by this call, with the fewest calls outstanding (ties in turn).
    fn choose(&self, tried: &HashSet<String>) -> Option<Arc<Remote>> {
        let mut set = lock(&self.remotes);
        let version = self.view.version();
        if set.version != Some(version) {
            let old: HashMap<String, Arc<Remote>> = set
                .live
                .drain(..)
                .map(|r| (r.replica.instance.clone(), r))
                .collect();
            set.live = self
                .view
                .replicas()
                .into_iter()
                .map(|replica| match old.get(&replica.instance) {
                    Some(r) if r.replica == replica => r.clone(),
                    _ => Arc::new(Remote {
                        replica,
                        client: Mutex::new(None),
                        outstanding: AtomicUsize::new(0),
                    }),
                })
                .collect();
            set.version = Some(version);
        }
        let now = Instant::now();
        set.resting.retain(|_, until| *until > now);
        // One load of each count: the choice is made on one snapshot.
        let candidates: Vec<(&Arc<Remote>, usize)> = set
            .live
            .iter()
            .filter(|r| {
                let i = &r.replica.instance;
                !tried.contains(i) && !set.refused.contains_key(i) && !set.resting.contains_key(i)
            })
            .map(|r| (r, r.outstanding.load(Ordering::Relaxed)))
            .collect();
        let fewest = candidates.iter().map(|(_, n)| *n).min()?;
        let least: Vec<&Arc<Remote>> = candidates
            .iter()
            .filter(|(_, n)| *n == fewest)
            .map(|(r, _)| *r)
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Some(least[turn % least.len()].clone())
    }

    /// The remote replica's client, opened on first use at the first of
    /// its addresses that answers.
    fn open(&self, remote: &Remote) -> metabridge::Result<Client> {
        let mut slot = lock(&remote.client);
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let mut last = None;
        for address in &remote.replica.advert.addresses {
            match self.base.clone().at(address).open() {
                Ok(c) => {
                    *slot = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::ServiceNotFound {
            name: self.name.clone(),
            reason: format!("replica {} advertised no address", remote.replica.instance),
        }))
    }

    /// A replica that refused this client (verification, token) leaves its
    /// view for good; one that did not answer rests.
    fn drop_replica(&self, instance: &str, e: &Error) {
        let verification = matches!(e, Error::Tls(_) | Error::Refused(_) | Error::Protocol(_));
        if verification {
            tracing::warn!(target: "metabridge::mesh", "replica {instance} of {:?} failed verification and is dropped: {e}", self.name);
            lock(&self.remotes)
                .refused
                .insert(instance.to_string(), e.to_string());
        } else {
            tracing::warn!(target: "metabridge::mesh", "replica {instance} of {:?} cannot be reached, passed over for {:?}: {e}", self.name, self.rest);
            self.rest_replica(instance);
        }
    }

    fn rest_replica(&self, instance: &str) {
        let mut set = lock(&self.remotes);
        set.resting
            .insert(instance.to_string(), Instant::now() + self.rest);
        if let Some(r) = set.live.iter().find(|r| r.replica.instance == instance) {
            if let Some(c) = lock(&r.client).take() {
                c.close();
            }
        }
    }

    /// Waits (at most the discovery wait, within `left`) for a replica
    /// this call has not tried; whether one came.
    fn wait_for_replica(&self, tried: &HashSet<String>, left: Duration) -> bool {
        let wait = left.min(self.discovery);
        self.runtime.block_on(
            self.view
                .wait_until(wait, |r| r.iter().any(|r| !tried.contains(&r.instance))),
        )
    }

    /// Whether any live replica marks `endpoint` idempotent.
    fn idempotent(&self, endpoint: &str) -> bool {
        self.view
            .replicas()
            .iter()
            .any(|r| r.advert.idempotent.iter().any(|e| e == endpoint))
    }

    fn not_found(&self) -> Error {
        let set = lock(&self.remotes);
        let mut reason = format!("no live replica in {}", self.mesh);
        if !set.refused.is_empty() {
            let refused: Vec<String> = set
                .refused
                .iter()
                .map(|(i, why)| format!("{i}: {why}"))
                .collect();
            reason.push_str(&format!(
                "; dropped after failing verification: {}",
                refused.join("; ")
            ));
        }
        Error::ServiceNotFound {
            name: self.name.clone(),
            reason,
        }
    }
}

/// What a failed call means for the next step (see [`Attempt`]).
fn classify(e: &Error) -> Attempt {
    use std::io::ErrorKind::*;
    match e {
        Error::Tls(_)
        | Error::Refused(_)
        | Error::ServiceNotFound { .. }
        | Error::Unreachable { .. } => Attempt::NotSent,
        Error::Io(io)
            if matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            ) =>
        {
            Attempt::NotSent
        }
        Error::PeerGone(_) | Error::Timeout(_) | Error::Io(_) => Attempt::MaybeRan,
        _ => Attempt::Final,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
