//! A client's live view of a service's replicas: a liveliness subscriber
//! (with history, so replicas already there are seen) and, for each
//! token, a query for its advert.
//!
//! Invariant: a replica is in the view only while its token is live. A
//! token's advert is asked after it appears; a token withdrawn before the
//! answer comes is not added when it does (`live` is checked under the
//! same lock as the insertion).

use crate::keys::{advert_key, service_key};
use crate::{Advert, MeshConfig, MeshError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zenoh::sample::SampleKind;

/// How long a new replica has to answer for its advert.
const ADVERT_TIMEOUT: Duration = Duration::from_secs(2);

/// One live replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Its instance id (fresh per process start).
    pub instance: String,
    /// What it advertised.
    pub advert: Advert,
}

#[derive(Default)]
struct ViewState {
    /// Instances whose token is live now.
    live: BTreeSet<String>,
    /// Those of them whose advert came.
    replicas: BTreeMap<String, Replica>,
}

/// The live replicas of one service.
pub struct Replicas {
    state: Arc<Mutex<ViewState>>,
    changed: tokio::sync::watch::Receiver<u64>,
    session: zenoh::Session,
    follower: tokio::task::JoinHandle<()>,
}

impl Replicas {
    /// Starts following `service`'s replicas (inside a tokio runtime).
    pub async fn watch(config: &MeshConfig, service: &str) -> Result<Replicas, MeshError> {
        let key = service_key(service)?;
        let session = config.open_session().await?;
        let subscriber = session
            .liveliness()
            .declare_subscriber(format!("{key}/*"))
            .history(true)
            .await
            .map_err(MeshError::zenoh)?;
        let state = Arc::new(Mutex::new(ViewState::default()));
        let (tell, changed) = tokio::sync::watch::channel(0u64);
        let tell = Arc::new(tell);
        let follower = {
            let (state, session, tell) = (state.clone(), session.clone(), tell.clone());
            tokio::spawn(async move {
                while let Ok(sample) = subscriber.recv_async().await {
                    let token = sample.key_expr().as_str();
                    let Some(instance) = token.strip_prefix(&format!("{key}/")) else {
                        continue;
                    };
                    let instance = instance.to_string();
                    match sample.kind() {
                        SampleKind::Put => {
                            lock(&state).live.insert(instance.clone());
                            let (state, session, tell, key) =
                                (state.clone(), session.clone(), tell.clone(), key.clone());
                            tokio::spawn(async move {
                                match ask_advert(&session, &key, &instance).await {
                                    Ok(advert) => {
                                        let mut s = lock(&state);
                                        if s.live.contains(&instance) {
                                            s.replicas.insert(
                                                instance.clone(),
                                                Replica { instance, advert },
                                            );
                                            drop(s);
                                            tell.send_modify(|v| *v += 1);
                                        }
                                    }
                                    Err(e) => tracing::warn!(
                                        target: "metabridge::mesh",
                                        "replica {instance} left out of the view: {e}"
                                    ),
                                }
                            });
                        }
                        SampleKind::Delete => {
                            let mut s = lock(&state);
                            s.live.remove(&instance);
                            s.replicas.remove(&instance);
                            drop(s);
                            tell.send_modify(|v| *v += 1);
                        }
                    }
                }
            })
        };
        Ok(Replicas {
            state,
            changed,
            session,
            follower,
        })
    }

    /// A number that changes whenever the view does.
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// A receiver told of every change of the view.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.clone()
    }

    /// The replicas live now, by instance id.
    pub fn replicas(&self) -> Vec<Replica> {
        lock(&self.state).replicas.values().cloned().collect()
    }

    /// Waits until `done(replicas)` holds, for at most `timeout`; whether
    /// it did.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[Replica]) -> bool,
    ) -> bool {
        let mut changed = self.changed.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if done(&self.replicas()) {
                    return;
                }
                if changed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Stops following.
    pub async fn close(self) -> Result<(), MeshError> {
        self.follower.abort();
        self.session.close().await.map_err(MeshError::zenoh)
    }
}

/// The advert of one instance, from its queryable.
async fn ask_advert(
    session: &zenoh::Session,
    key: &str,
    instance: &str,
) -> Result<Advert, MeshError> {
    let replies = session
        .get(advert_key(key, instance))
        .timeout(ADVERT_TIMEOUT)
        .await
        .map_err(MeshError::zenoh)?;
    let bad = |why: String| MeshError::BadAdvert {
        instance: instance.to_string(),
        why,
    };
    let reply = replies
        .recv_async()
        .await
        .map_err(|_| bad("no answer within the advert timeout".into()))?;
    let sample = reply.result().map_err(|e| bad(format!("{e:?}")))?;
    serde_json::from_slice(&sample.payload().to_bytes()).map_err(|e| bad(e.to_string()))
}

fn lock(state: &Mutex<ViewState>) -> std::sync::MutexGuard<'_, ViewState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every replica of every service in the mesh now, with its service's
/// name: the live tokens (asked once, waiting up to `wait` for answers)
/// and their adverts. For operators (`metabridge list --mesh`).
pub async fn survey(
    config: &MeshConfig,
    wait: Duration,
) -> Result<Vec<(String, Replica)>, MeshError> {
    let session = config.open_session().await?;
    // The links come up in the background, to the seeds and then to the
    // peers gossip names: wait until the count of peers holds still.
    let deadline = tokio::time::Instant::now() + wait;
    let (mut peers, mut still) = (0, 0);
    while tokio::time::Instant::now() < deadline && (peers == 0 || still < 10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = session.info().peers_zid().await.count();
        still = if now == peers { still + 1 } else { 0 };
        peers = now;
    }
    let tokens = session
        .liveliness()
        .get("metabridge/*/*")
        .timeout(wait)
        .await
        .map_err(MeshError::zenoh)?;
    let mut found = Vec::new();
    while let Ok(reply) = tokens.recv_async().await {
        let Ok(sample) = reply.result() else { continue };
        let mut parts = sample.key_expr().as_str().splitn(3, '/');
        let (Some("metabridge"), Some(service), Some(instance)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        found.push((service.to_string(), instance.to_string()));
    }
    let mut all = Vec::new();
    for (service, instance) in found {
        let key = format!("metabridge/{service}");
        match ask_advert(&session, &key, &instance).await {
            Ok(advert) => all.push((service, Replica { instance, advert })),
            Err(e) => tracing::warn!(target: "metabridge::mesh", "{e}"),
        }
    }
    session.close().await.map_err(MeshError::zenoh)?;
    all.sort_by(|a, b| (&a.0, &a.1.instance).cmp(&(&b.0, &b.1.instance)));
    Ok(all)
}
