//! [`MeshConfig`]: safe defaults, read from a setting or a file, turned
//! into a zenoh configuration.

use crate::MeshError;
use std::path::PathBuf;
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
    /// Zenoh's own transport authentication, if the mesh uses it.
    pub auth: Option<MeshAuth>,
    /// The `host:port` addresses a replica advertises; default: its TCP
    /// address, or, bound to every interface, each interface's address
    /// with its port.
    pub advertise: Vec<String>,
    /// A zenoh configuration file (JSON5) used as the base: the operator's
    /// own settings (TLS links, routers, ...). The fields above are
    /// applied over it where they are set.
    pub zenoh_file: Option<PathBuf>,
}

/// Zenoh's user/password authentication of the links between members:
/// this member's credentials, and the `user:password` lines it admits.
#[derive(Clone, Debug)]
pub struct MeshAuth {
    /// This member's user name.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The file of `user:password` lines this member accepts from others.
    pub dictionary_file: PathBuf,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            listen: Vec::new(),
            connect: Vec::new(),
            lease: Duration::from_secs(2),
            auth: None,
            advertise: Vec::new(),
            zenoh_file: None,
        }
    }
}

/// The environment variable a program's services and clients join by.
pub const MESH_ENV: &str = "METABRIDGE_MESH";

impl MeshConfig {
    /// A configuration from one setting (`$METABRIDGE_MESH`,
    /// `#[service(mesh = "..")]`): a zenoh configuration file, or a
    /// comma-separated list of items: an endpoint (`tcp/10.0.0.1:7447`, a
    /// seed to connect to), `listen=<endpoint>`, `lease=<ms>`,
    /// `advertise=<host:port>`.
    ///
    /// ```
    /// use metabridge_mesh::MeshConfig;
    /// let c = MeshConfig::from_setting("listen=tcp/0.0.0.0:7447,tcp/10.0.0.2:7447,lease=3000").unwrap();
    /// assert_eq!(c.listen, ["tcp/0.0.0.0:7447"]);
    /// assert_eq!(c.connect, ["tcp/10.0.0.2:7447"]);
    /// assert_eq!(c.lease, std::time::Duration::from_secs(3));
    /// assert!(MeshConfig::from_setting("lease=soon").is_err());
    /// ```
    pub fn from_setting(setting: &str) -> Result<MeshConfig, MeshError> {
        let setting = setting.trim();
        let mut config = MeshConfig::default();
        if setting.is_empty() {
            return Err(MeshError::Setting {
                key: MESH_ENV,
                why: "empty: give seed endpoints (tcp/host:port) or a zenoh configuration file"
                    .into(),
            });
        }
        let looks_like_file = !setting.contains(',')
            && !setting.contains('=')
            && !setting.starts_with("tcp/")
            && !setting.starts_with("tls/");
        if looks_like_file {
            let path = PathBuf::from(setting);
            if !path.is_file() {
                return Err(MeshError::Setting {
                    key: MESH_ENV,
                    why: format!(
                        "{setting:?} is neither an endpoint (tcp/host:port) nor a readable file"
                    ),
                });
            }
            config.zenoh_file = Some(path);
            return Ok(config);
        }
        for item in setting.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some(("listen", e)) => config.listen.push(endpoint(e)?),
                Some(("advertise", a)) => config.advertise.push(a.to_string()),
                Some(("lease", ms)) => {
                    let ms: u64 = ms.parse().map_err(|_| MeshError::Setting {
                        key: "lease",
                        why: format!("{ms:?} is not a number of milliseconds"),
                    })?;
                    config.lease = Duration::from_millis(ms);
                }
                Some((key, _)) => {
                    return Err(MeshError::Setting {
                        key: MESH_ENV,
                        why: format!(
                        "unknown item {key:?}: expected an endpoint, listen=, lease= or advertise="
                    ),
                    })
                }
                None => config.connect.push(endpoint(item)?),
            }
        }
        Ok(config)
    }

    /// The configuration `$METABRIDGE_MESH` gives, if it is set.
    pub fn from_env() -> Result<Option<MeshConfig>, MeshError> {
        match std::env::var(MESH_ENV) {
            Ok(v) if !v.trim().is_empty() => MeshConfig::from_setting(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// A description for errors and logs: the seeds, or the file.
    pub fn describe(&self) -> String {
        match (&self.zenoh_file, self.connect.is_empty()) {
            (Some(f), _) => format!("the mesh of {}", f.display()),
            (None, false) => format!("the mesh of seeds {}", self.connect.join(", ")),
            (None, true) => "the mesh (no seeds given)".to_string(),
        }
    }

    /// Opens a zenoh session with this configuration. A listen endpoint
    /// that another member on this host already holds (two services given
    /// one setting) is not fatal: the session listens on ports zenoh picks
    /// at the same addresses instead, and gossip tells the others where.
    pub(crate) async fn open_session(&self) -> Result<zenoh::Session, MeshError> {
        match zenoh::open(self.zenoh()?).await {
            Ok(session) => Ok(session),
            Err(e)
                if !self.listen.is_empty() && e.to_string().contains("Address already in use") =>
            {
                let picked = MeshConfig {
                    listen: self.listen.iter().map(|e| any_port(e)).collect(),
                    ..self.clone()
                };
                tracing::warn!(
                    target: "metabridge::mesh",
                    "{} is taken on this host (another member listens there): listening on {} instead",
                    self.listen.join(","),
                    picked.listen.join(",")
                );
                zenoh::open(picked.zenoh()?).await.map_err(MeshError::zenoh)
            }
            Err(e) => Err(MeshError::zenoh(e)),
        }
    }

    /// The zenoh configuration: peer mode, gossip on, multicast scouting
    /// off, the endpoints, the lease and the authentication, over the
    /// operator's file if one was given.
    pub(crate) fn zenoh(&self) -> Result<zenoh::Config, MeshError> {
        if self.lease < Duration::from_secs(1) {
            tracing::warn!(
                target: "metabridge::mesh",
                "a mesh lease of {:?} is below 1 s: live members may be reported gone under load",
                self.lease
            );
        }
        let mut config = match &self.zenoh_file {
            Some(path) => zenoh::Config::from_file(path).map_err(|e| MeshError::Setting {
                key: "zenoh configuration file",
                why: format!("{}: {e}", path.display()),
            })?,
            None => zenoh::Config::default(),
        };
        let mut set = |key: &'static str, value: String| {
            config
                .insert_json5(key, &value)
                .map_err(|e| MeshError::Setting {
                    key,
                    why: e.to_string(),
                })
        };
        let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        let string = |v: &str| serde_json::to_string(v).unwrap_or_default();
        if self.zenoh_file.is_none() {
            set("mode", "\"peer\"".into())?;
            set("scouting/multicast/enabled", "false".into())?;
            set("scouting/gossip/enabled", "true".into())?;
            set(
                "transport/link/tx/lease",
                self.lease.as_millis().to_string(),
            )?;
            // A seed that is down at start is retried, not fatal: the
            // member serves locally meanwhile.
            set("connect/exit_on_failure", "false".into())?;
        }
        if !self.listen.is_empty() {
            set("listen/endpoints", list(&self.listen))?;
        }
        if !self.connect.is_empty() {
            set("connect/endpoints", list(&self.connect))?;
        }
        if let Some(auth) = &self.auth {
            set("transport/auth/usrpwd/user", string(&auth.user))?;
            set("transport/auth/usrpwd/password", string(&auth.password))?;
            set(
                "transport/auth/usrpwd/dictionary_file",
                string(&auth.dictionary_file.to_string_lossy()),
            )?;
        }
        Ok(config)
    }
}

/// An endpoint as zenoh writes them (`<protocol>/<address>`).
fn endpoint(e: &str) -> Result<String, MeshError> {
    match e.split_once('/') {
        Some((proto, addr)) if !proto.is_empty() && !addr.is_empty() => Ok(e.to_string()),
        _ => Err(MeshError::Setting {
            key: "endpoint",
            why: format!("{e:?} is not a zenoh endpoint: write tcp/<host>:<port>"),
        }),
    }
}

/// A listen endpoint `proto/host:port` with the port left to zenoh (one
/// with zenoh's `#` or `?` options is kept as it is).
fn any_port(endpoint: &str) -> String {
    if endpoint.contains(['#', '?']) {
        return endpoint.to_string();
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}:0"),
        _ => endpoint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::any_port;

    #[test]
    fn a_taken_listen_endpoint_keeps_its_address_and_lets_zenoh_pick_the_port() {
        assert_eq!(any_port("tcp/10.0.0.1:7447"), "tcp/10.0.0.1:0");
        assert_eq!(any_port("tcp/[fe80::1]:7447"), "tcp/[fe80::1]:0");
        assert_eq!(
            any_port("tcp/10.0.0.1:7447#iface=eth0"),
            "tcp/10.0.0.1:7447#iface=eth0"
        );
        assert_eq!(any_port("tcp/host"), "tcp/host");
    }
}
