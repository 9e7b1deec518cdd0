//! A service's side of the mesh: its liveliness token and the advert it
//! answers with.

use crate::keys::{advert_key, service_key};
use crate::{MeshConfig, MeshError};
use serde::{Deserialize, Serialize};

/// What a client needs to reach one replica: hints, never trusted as such
/// (a client verifies the replica with its own CA or pins), and never the
/// token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// `host:port` addresses of its exposed TCP port.
    pub addresses: Vec<String>,
    /// The SHA-256 fingerprint of the certificate it serves (`sha256:...`).
    pub tls_fingerprint: Option<String>,
    /// The host it runs on, for operators (`metabridge list --mesh`).
    pub host: String,
    /// Its endpoints marked idempotent: only these may be retried on
    /// another replica.
    #[serde(default)]
    pub idempotent: Vec<String>,
    /// When it started serving (seconds since the epoch; 0 if unknown).
    #[serde(default)]
    pub started: u64,
    /// Calls it answered so far, from its live counters when asked.
    #[serde(default)]
    pub calls: Option<u64>,
}

/// A replica's membership: the token and the advert's queryable live as
/// long as this does (dropping it, or the process ending, leaves the mesh).
pub struct Member {
    session: zenoh::Session,
    instance: String,
    /// `metabridge/<service>/<instance>`.
    token_key: String,
    /// `None` while withdrawn ([`withdraw`](Member::withdraw)).
    token: Option<zenoh::liveliness::LivelinessToken>,
    _advert: zenoh::query::Queryable<()>,
}

impl Member {
    /// Joins the mesh as a replica of `service`, advertising `advert`,
    /// under a fresh instance id.
    pub async fn join(
        config: &MeshConfig,
        service: &str,
        advert: Advert,
    ) -> Result<Member, MeshError> {
        Member::join_with(config, service, move || advert.clone()).await
    }

    /// As [`join`](Self::join), the advert made afresh for each query (its
    /// live call count, say).
    pub async fn join_with(
        config: &MeshConfig,
        service: &str,
        advert: impl Fn() -> Advert + Send + Sync + 'static,
    ) -> Result<Member, MeshError> {
        Member::join_for(config, service, std::process::id(), advert).await
    }

    /// As [`join_with`](Self::join_with), for the serving process `pid`
    /// (a helper joins for the service it serves: the instance id names
    /// the service's process, not the helper's).
    pub async fn join_for(
        config: &MeshConfig,
        service: &str,
        pid: u32,
        advert: impl Fn() -> Advert + Send + Sync + 'static,
    ) -> Result<Member, MeshError> {
        let key = service_key(service)?;
        let session = config.open_session().await?;
        let instance = format!("{pid}-{}", session.zid());
        let reply_key = advert_key(&key, &instance);
        let answer_key = reply_key.clone();
        let advert_queryable = session
            .declare_queryable(&reply_key)
            .callback(move |query| {
                let Ok(body) = serde_json::to_vec(&advert()) else {
                    return;
                };
                // The reply is sent from zenoh's runtime; a failed one only
                // leaves that client without this replica.
                zenoh::Wait::wait(query.reply(answer_key.clone(), body)).ok();
            })
            .await
            .map_err(MeshError::zenoh)?;
        // The token last: a client that sees it can already ask the advert.
        let token_key = format!("{key}/{instance}");
        let token = session
            .liveliness()
            .declare_token(&token_key)
            .await
            .map_err(MeshError::zenoh)?;
        Ok(Member {
            session,
            instance,
            token_key,
            token: Some(token),
            _advert: advert_queryable,
        })
    }

    /// Withdraws the liveliness token (clients drop this replica from their
    /// view) while staying in the session; [`reassert`](Self::reassert)
    /// declares it again.
    pub async fn withdraw(&mut self) -> Result<(), MeshError> {
        match self.token.take() {
            Some(t) => t.undeclare().await.map_err(MeshError::zenoh),
            None => Ok(()),
        }
    }

    /// Declares the token again after [`withdraw`](Self::withdraw).
    pub async fn reassert(&mut self) -> Result<(), MeshError> {
        if self.token.is_none() {
            let token = self
                .session
                .liveliness()
                .declare_token(&self.token_key)
                .await
                .map_err(MeshError::zenoh)?;
            self.token = Some(token);
        }
        Ok(())
    }

    /// Whether the token is declared now.
    pub fn announced(&self) -> bool {
        self.token.is_some()
    }

    /// How many other zenoh peers this member is linked to now.
    pub async fn peers(&self) -> usize {
        self.session.info().peers_zid().await.count()
    }

    /// This replica's instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Leaves the mesh: the token is withdrawn at once.
    pub async fn leave(self) -> Result<(), MeshError> {
        self.session.close().await.map_err(MeshError::zenoh)
    }
}
