//! [`MeshConfig`]: safe defaults, turned into a zenoh configuration.

use crate::MeshError;
use std::time::Duration;

/// How a process joins the mesh.
///
/// ```
/// let config = metabridge_mesh::MeshConfig::default();
/// assert_eq!(config.lease, std::time::Duration::from_secs(2));
/// assert!(config.listen.is_empty() && config.connect.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Zenoh endpoints to listen on (`tcp/10.0.0.1:7447`, port 0 for any);
    /// default none, which leaves zenoh's own (any port on every
    /// interface). Peers that gossip finds connect to each other there,
    /// so every member needs one the others can reach.
    pub listen: Vec<String>,
    /// Seed peers to connect to; default none. Gossip finds the rest.
    pub connect: Vec<String>,
    /// How long a silent peer stays a member (default 2 s; below 1 s
    /// under load, members were reported gone while alive).
    pub lease: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            listen: Vec::new(),
            connect: Vec::new(),
            lease: Duration::from_secs(2),
        }
    }
}

impl MeshConfig {
    /// The zenoh configuration: peer mode, gossip on, multicast scouting
    /// off, the endpoints and the lease.
    pub(crate) fn zenoh(&self) -> Result<zenoh::Config, MeshError> {
        if self.lease < Duration::from_secs(1) {
            tracing::warn!(
                target: "metabridge::mesh",
                "a mesh lease of {:?} is below 1 s: live members may be reported gone under load",
                self.lease
            );
        }
        let mut config = zenoh::Config::default();
        let mut set = |key: &'static str, value: String| {
            config
                .insert_json5(key, &value)
                .map_err(|e| MeshError::Setting {
                    key,
                    why: e.to_string(),
                })
        };
        let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        set("mode", "\"peer\"".into())?;
        set("scouting/multicast/enabled", "false".into())?;
        set("scouting/gossip/enabled", "true".into())?;
        if !self.listen.is_empty() {
            set("listen/endpoints", list(&self.listen))?;
        }
        set("connect/endpoints", list(&self.connect))?;
        set(
            "transport/link/tx/lease",
            self.lease.as_millis().to_string(),
        )?;
        Ok(config)
    }
}
