//! Configuration, read in one place: every environment variable the
//! runtime obeys, and [`ServiceConfig`], a service's settings (whose
//! defaults come from that environment).
//!
//! | variable | what it sets | read by |
//! | --- | --- | --- |
//! | `METABRIDGE_HOME` | the registry's directory (default `/dev/shm/metabridge-<uid>`) | [`home`] |
//! | `METABRIDGE_TRANSPORT` | a client's transport: `shm`, `tcp`, `auto` (default: what the code chose, else shm, TCP if it cannot); it overrides the code's choice; another value is an error | [`client_transport`] |
//! | `METABRIDGE_TOKEN` | the token of services and clients | [`token`] |
//! | `METABRIDGE_MAX_MESSAGE` (or `METABRIDGE_MAX_FRAME`) | the largest message on both transports | [`max_message`] |
//! | `METABRIDGE_WORKERS` | [`ServiceConfig::workers`] | `ServiceConfig::default` |
//! | `METABRIDGE_TCP_CALL_THREADS` | [`ServiceConfig::tcp_call_threads`] | `ServiceConfig::default` |
//! | `METABRIDGE_TCP_AUTH_TIMEOUT_MS`, `METABRIDGE_TCP_STALL_TIMEOUT_MS` | [`ServiceConfig::tcp_auth_timeout`], [`ServiceConfig::tcp_stall_timeout`] | `ServiceConfig::default` |
//! | `METABRIDGE_LOG_FILE` | [`ServiceConfig::log_file`] | `ServiceConfig::default` |
//! | `RUST_LOG` | the daemon's log filter (turns the log on) | [`log_filter`] |
//! | `METABRIDGE_STATS=0` | no live counters (to measure what they cost) | [`stats_enabled`] |
//! | `METABRIDGE_TCP_MAX_*`, `METABRIDGE_TCP_SHUTDOWN_GRACE_MS` | the TCP server's quotas | [`tcp_server`] |
//! | `METABRIDGE_TLS_CERT`, `METABRIDGE_TLS_KEY` (and `METABRIDGE_TLS_CLIENT_CA` for mutual TLS) | a service's TLS: [`ServiceConfig::tls`] (both or neither) | `ServiceConfig::default` |
//! | `METABRIDGE_TLS_CLIENT_ALLOW` | the clients a mutual-TLS service admits: [`ServiceConfig::tls_client_allow`] | `ServiceConfig::default` |
//! | `METABRIDGE_TLS_CA` or `METABRIDGE_TLS_PIN`, (and `METABRIDGE_TLS_CLIENT_CERT`, `METABRIDGE_TLS_CLIENT_KEY`) | how a TCP client verifies a TLS service (and its own certificate) | [`client_tls`] |
//!
//! The shared-memory crate reads its own `METABRIDGE_SHM_DIR` (the
//! directory of named segments, which the runtime does not use). The
//! variables a parent passes to the program it executes again to serve a
//! service (`daemon.rs`) are that hand-over's protocol, not configuration.

use metabridge_tcp::ServerConfig;
use std::path::PathBuf;
use std::time::Duration;

const HOME: &str = "METABRIDGE_HOME";
const TRANSPORT: &str = "METABRIDGE_TRANSPORT";
const TOKEN: &str = "METABRIDGE_TOKEN";
const MAX_MESSAGE: [&str; 2] = ["METABRIDGE_MAX_MESSAGE", "METABRIDGE_MAX_FRAME"];
const WORKERS: &str = "METABRIDGE_WORKERS";
const TCP_CALL_THREADS: &str = "METABRIDGE_TCP_CALL_THREADS";
const TCP_AUTH_TIMEOUT_MS: &str = "METABRIDGE_TCP_AUTH_TIMEOUT_MS";
const TCP_STALL_TIMEOUT_MS: &str = "METABRIDGE_TCP_STALL_TIMEOUT_MS";
const LOG_FILE: &str = "METABRIDGE_LOG_FILE";
const LOG_FILTER: &str = "RUST_LOG";
const STATS: &str = "METABRIDGE_STATS";

/// The largest message when nothing else is said: 256 MiB.
const DEFAULT_MAX_MESSAGE: usize = 256 << 20;

/// `$name` parsed, if set and parsable.
fn parsed<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `$name`, a number of milliseconds, if set and a number.
fn millis(name: &str) -> Option<Duration> {
    parsed(name).map(Duration::from_millis)
}

/// `$METABRIDGE_HOME`, if set and not empty.
pub(crate) fn home() -> Option<PathBuf> {
    std::env::var_os(HOME)
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The transport `$METABRIDGE_TRANSPORT` imposes on clients: `None` when
/// unset or empty; `shm`, `tcp` or `auto` in any case; anything else is
/// an error. The operator's override: it wins over the transport the
/// code chose.
pub(crate) fn client_transport() -> crate::Result<Option<TransportKind>> {
    let value = match std::env::var(TRANSPORT) {
        Ok(v) if !v.is_empty() => v,
        _ => return Ok(None),
    };
    match value.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Some(TransportKind::Tcp)),
        "shm" => Ok(Some(TransportKind::Shm)),
        "auto" => Ok(Some(TransportKind::Auto)),
        _ => Err(crate::Error::InvalidSetting {
            variable: TRANSPORT,
            value,
            accepted: "shm, tcp or auto",
        }),
    }
}

/// `$METABRIDGE_TOKEN`, if set and not empty.
pub(crate) fn token() -> Option<String> {
    std::env::var(TOKEN).ok().filter(|t| !t.is_empty())
}

/// The largest message, request or result, on either transport: 256 MiB,
/// or `$METABRIDGE_MAX_MESSAGE` (bytes; the older `METABRIDGE_MAX_FRAME`
/// is read too).
pub(crate) fn max_message() -> usize {
    MAX_MESSAGE
        .iter()
        .find_map(|v| parsed(v))
        .unwrap_or(DEFAULT_MAX_MESSAGE)
}

/// `$RUST_LOG`, if set and not empty.
pub(crate) fn log_filter() -> Option<String> {
    std::env::var(LOG_FILTER).ok().filter(|v| !v.is_empty())
}

/// False when `METABRIDGE_STATS=0`: no live counters.
pub(crate) fn stats_enabled() -> bool {
    std::env::var_os(STATS).map_or(true, |v| v != "0")
}

/// The TCP server's settings for `service`: its message limit and
/// deadlines, quotas from `METABRIDGE_TCP_MAX_UNAUTHENTICATED_FRAME`,
/// `METABRIDGE_TCP_MAX_CONNECTIONS`, `METABRIDGE_TCP_MAX_CONNECTIONS_PER_IP`,
/// `METABRIDGE_TCP_MAX_IDLE_PER_IP`, `METABRIDGE_TCP_MAX_UNAUTHENTICATED`
/// and `METABRIDGE_TCP_MAX_UNAUTHENTICATED_PER_IP` (defaults: those of
/// [`ServerConfig`]), and a shutdown grace of
/// `METABRIDGE_TCP_SHUTDOWN_GRACE_MS` within the service's own deadline.
pub(crate) fn tcp_server(service: &ServiceConfig) -> ServerConfig {
    let defaults = ServerConfig::default();
    let or = |name: &str, default: usize| parsed(name).unwrap_or(default);
    ServerConfig {
        // One message limit for both transports.
        max_frame: service.max_message,
        max_unauthenticated_frame: or(
            "METABRIDGE_TCP_MAX_UNAUTHENTICATED_FRAME",
            defaults.max_unauthenticated_frame,
        ),
        max_connections: or("METABRIDGE_TCP_MAX_CONNECTIONS", defaults.max_connections),
        max_connections_per_ip: or(
            "METABRIDGE_TCP_MAX_CONNECTIONS_PER_IP",
            defaults.max_connections_per_ip,
        ),
        max_idle_per_ip: or("METABRIDGE_TCP_MAX_IDLE_PER_IP", defaults.max_idle_per_ip),
        max_unauthenticated: or(
            "METABRIDGE_TCP_MAX_UNAUTHENTICATED",
            defaults.max_unauthenticated,
        ),
        max_unauthenticated_per_ip: or(
            "METABRIDGE_TCP_MAX_UNAUTHENTICATED_PER_IP",
            defaults.max_unauthenticated_per_ip,
        ),
        auth_timeout: service.tcp_auth_timeout,
        stall_timeout: service.tcp_stall_timeout,
        shutdown_grace: millis("METABRIDGE_TCP_SHUTDOWN_GRACE_MS")
            .unwrap_or(service.shutdown_timeout),
        spin: Duration::from_micros(50),
        ..defaults
    }
}

/// Which transport a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// Shared memory when the service's segments can be mapped, else TCP
    /// (the default; `METABRIDGE_TRANSPORT=tcp` forces TCP, whatever the
    /// code chose).
    Auto,
    /// Shared memory only.
    Shm,
    /// TCP only.
    Tcp,
}

/// Tuning of a service's runtime.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Interface of the TCP listener: `127.0.0.1` by default; `0.0.0.0`
    /// exposes the service on the network.
    pub host: String,
    /// TCP port; 0 (default) picks a free one.
    pub port: u16,
    /// Worker threads serving shared-memory channels
    /// (default `$METABRIDGE_WORKERS`, or the number of CPUs).
    pub workers: usize,
    /// Service instances kept, one per distinct constructor value (the
    /// arguments bound to the constructor's parameters, however they were
    /// encoded), default 128, in up to 16 shards. Instances are a cache:
    /// past the capacity the least recently used one is dropped, and its
    /// state with it. A constructor without parameters gives one shared
    /// instance, never evicted.
    pub cache_capacity: usize,
    /// Most bytes of constructor-argument keys the instance cache keeps
    /// (default 64 MiB): the canonical key of each instance and the raw
    /// aliases that reach it, kept or evicted, split evenly between the
    /// cache's shards and its two levels. A shard over its share drops
    /// aliases, then evicts its least recently used instances; a single key
    /// larger than its shard's share still gets its instance (alone in the
    /// shard, without an alias). Instances themselves are not counted:
    /// their size cannot be known.
    pub cache_key_bytes: usize,
    /// A token clients must present (`auth` in the request map); default
    /// `$METABRIDGE_TOKEN` if set. Without one, a service on the default
    /// address (127.0.0.1, port 0) makes up a random token at start and
    /// publishes it in its registry entry, which only this user can read:
    /// this user's clients find and send it by themselves, and other users
    /// on the machine cannot call the service over loopback TCP. A service
    /// given an explicit `host` or `port` and no token needs none (so the
    /// original Python client, which cannot send one, still calls it), and
    /// warns when that address is not loopback.
    pub token: Option<String>,
    /// TCP is exposed where the operator said (set by [`Service::host`](crate::Service::host),
    /// [`Service::port`](crate::Service::port) and the macro's `host`/`port`): the service then
    /// requires only the token it is given, if any. Default false.
    pub tcp_exposed: bool,
    /// Other user ids allowed to open shared-memory channels (the owner's
    /// uid always is). The control socket checks each peer's credentials
    /// (`SO_PEERCRED`); the socket file is 0600 in a 0700 directory, so in
    /// practice only root can use this. Default: none.
    pub allow_uids: Vec<u32>,
    /// Most shared-memory channels open at once (default 1024). A client
    /// asking for more is refused with an error naming this limit, and
    /// falls back to TCP unless it asked for shared memory.
    pub max_channels: usize,
    /// Largest request or result on either transport (default 256 MiB, or
    /// `$METABRIDGE_MAX_MESSAGE`). A larger request is answered with an
    /// error naming the limit; so is a larger result.
    pub max_message: usize,
    /// How long a TCP connection may take to authenticate when the service
    /// requires a token (default 3 s, or `$METABRIDGE_TCP_AUTH_TIMEOUT_MS`):
    /// one that has not by then is closed. Unauthenticated connections have
    /// quotas of their own (64 per address, 256 in all), so that another
    /// user cannot close or lock out the owner's connections. A frame
    /// half-sent for longer also makes its connection the first to close
    /// when the authenticated quotas are full.
    pub tcp_auth_timeout: Duration,
    /// While a TCP request is read or a result written, the longest time no
    /// byte may move (default 10 s, or `$METABRIDGE_TCP_STALL_TIMEOUT_MS`):
    /// a message takes as long as the link needs while bytes keep moving.
    /// The client's own timeout still bounds its call.
    pub tcp_stall_timeout: Duration,
    /// Most extra worker threads started when a slow sync call holds a
    /// worker (its other channels move to a new worker; see ARCHITECTURE,
    /// "Workers"). Default 16. Past it, channels wait behind slow calls.
    pub max_extra_workers: usize,
    /// Most calls over TCP that run at once (default 256, or
    /// `$METABRIDGE_TCP_CALL_THREADS`): each begins on a thread of the
    /// service's pool for TCP calls, started when needed and ended after
    /// 10 s idle, so that a slow sync endpoint holds one of those and never
    /// a runtime thread. Past it, calls wait their turn (without a thread);
    /// `async` endpoints' awaits run on the runtime and do not count.
    pub tcp_call_threads: usize,
    /// After SIGTERM (or `request_stop`), how long calls in progress may
    /// take to finish (default 5 s). Past it the service stops anyway,
    /// reporting the calls it abandoned (`Error::ShutdownTimeout`); a
    /// daemon exits with status 3.
    pub shutdown_timeout: Duration,
    /// Log service start and stop, channel connects and disconnects, and
    /// every call (endpoint, arguments and result cut short, duration)
    /// through `tracing` (the original's `logger=True`). Default false;
    /// `RUST_LOG` turns the same events on without it. A daemon started
    /// with [`run`](crate::run) installs a subscriber for them when either
    /// is set; in a program of yours, yours shows them.
    pub logger: bool,
    /// Where a daemon started with [`run`](crate::run) writes its log
    /// (appended); default: the standard error it inherited from the
    /// parent, or `$METABRIDGE_LOG_FILE`. The log holds call arguments,
    /// so the file is created 0600 and never opened through a symbolic
    /// link; one that exists but is not a regular file of this user's
    /// alone (another owner, group/other access, a second hard link), or
    /// that lies in a directory another user controls, stops the daemon
    /// with [`Error::InsecurePath`](crate::Error::InsecurePath) naming its path, owner and mode.
    pub log_file: Option<std::path::PathBuf>,
    /// Serve TCP with TLS (the `tls` feature; default: from
    /// `$METABRIDGE_TLS_CERT` and `$METABRIDGE_TLS_KEY`, else none). The
    /// port then speaks TLS only: a plaintext client (the original Python
    /// library's among them) is told so and closed. A build without the
    /// feature refuses to start with TLS asked for, never serving
    /// plaintext in its place.
    pub tls: Option<TlsFiles>,
    /// Serve TCP with TLS from PEM bytes given in code (the `tls` feature;
    /// default none): the same as [`tls`](Self::tls), without files (so
    /// not reloaded on SIGHUP). Setting both is an error at start.
    pub tls_pem: Option<TlsPem>,
    /// With a client CA (mutual TLS), the clients admitted: certificate
    /// fingerprints (`sha256:...`) or DNS names their certificate is valid
    /// for (default: every client the CA signed, or
    /// `$METABRIDGE_TLS_CLIENT_ALLOW`, comma-separated). Without a client
    /// CA, a list is an error at start.
    pub tls_client_allow: Vec<String>,
}

/// A service's certificate chain and private key as PEM bytes, and the CA
/// its clients' certificates must chain to, for mutual TLS (see
/// [`ServiceConfig::tls_pem`]).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// The certificate chain, the service's own first.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// Clients must present a certificate signed by a CA of these.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsPem {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &"..")
            .field("client_ca", &self.client_ca.as_ref().map(Vec::len))
            .finish()
    }
}

/// Where a service's certificate chain and private key are (PEM files:
/// regular files of this user, not symlinks, the key readable by this
/// user alone), and the CA its clients' certificates must chain to, for
/// mutual TLS. Read at start, and again on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the service's own first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Clients must present a certificate signed by a CA of this file.
    pub client_ca: Option<PathBuf>,
}

/// The service's TLS files from the environment: both
/// `METABRIDGE_TLS_CERT` and `METABRIDGE_TLS_KEY`, or neither (one alone
/// is reported when the service starts).
fn tls_files_from_env() -> Option<TlsFiles> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match (var(TLS_CERT), var(TLS_KEY)) {
        (None, None) => None,
        (cert, key) => Some(TlsFiles {
            cert: cert.unwrap_or_default(),
            key: key.unwrap_or_default(),
            client_ca: var(TLS_CLIENT_CA),
        }),
    }
}

const TLS_CERT: &str = "METABRIDGE_TLS_CERT";
const TLS_KEY: &str = "METABRIDGE_TLS_KEY";
const TLS_CLIENT_CA: &str = "METABRIDGE_TLS_CLIENT_CA";
const TLS_CLIENT_ALLOW: &str = "METABRIDGE_TLS_CLIENT_ALLOW";
const TLS_CA: &str = "METABRIDGE_TLS_CA";
const TLS_PIN: &str = "METABRIDGE_TLS_PIN";
#[cfg(feature = "tls")]
const TLS_CLIENT_CERT: &str = "METABRIDGE_TLS_CLIENT_CERT";
#[cfg(feature = "tls")]
const TLS_CLIENT_KEY: &str = "METABRIDGE_TLS_CLIENT_KEY";

/// The service's TLS, ready to serve: `None` without TLS files or PEM;
/// an error naming the file or setting when they are incomplete or
/// unusable, or when this build has no TLS.
#[cfg(feature = "tls")]
pub(crate) fn server_tls(
    config: &ServiceConfig,
) -> crate::Result<Option<metabridge_tcp::tls::ServerTls>> {
    use metabridge_tcp::tls::ServerTls;
    let (tls, client_ca) = match (&config.tls, &config.tls_pem) {
        (None, None) if config.tls_client_allow.is_empty() => return Ok(None),
        (None, None) => return Err(allow_without_ca()),
        (Some(_), Some(_)) => {
            return Err(crate::Error::InvalidSetting {
                variable: TLS_CERT,
                value: "TLS files and TLS PEM both given".into(),
                accepted: "one of ServiceConfig::tls (files) and ServiceConfig::tls_pem (bytes)",
            })
        }
        (Some(files), None) => {
            check_pair(files)?;
            let ca = match &files.client_ca {
                Some(ca) => Some(metabridge_tcp::tls::read_certificates(ca)?),
                None => None,
            };
            (ServerTls::from_files(&files.cert, &files.key)?, ca)
        }
        (None, Some(pem)) => (
            ServerTls::from_pem(&pem.cert, &pem.key)?,
            pem.client_ca.clone(),
        ),
    };
    match client_ca {
        Some(ca) => Ok(Some(
            tls.require_client_certs_pem(&ca, &config.tls_client_allow)?,
        )),
        None if config.tls_client_allow.is_empty() => Ok(Some(tls)),
        None => Err(allow_without_ca()),
    }
}

#[cfg(feature = "tls")]
fn allow_without_ca() -> crate::Error {
    crate::Error::InvalidSetting {
        variable: TLS_CLIENT_ALLOW,
        value: "a list of allowed clients without a client CA".into(),
        accepted:
            "a list with METABRIDGE_TLS_CLIENT_CA (TlsFiles::client_ca, TlsPem::client_ca), or none",
    }
}

/// See the `tls` build's `server_tls`: without the feature, TLS asked for
/// is an error (never plaintext in its place).
#[cfg(not(feature = "tls"))]
pub(crate) fn server_tls(
    config: &ServiceConfig,
) -> crate::Result<Option<std::convert::Infallible>> {
    if config.tls.is_none() && config.tls_pem.is_none() && config.tls_client_allow.is_empty() {
        return Ok(None);
    }
    Err(no_tls_in_this_build(TLS_CERT))
}

#[cfg(not(feature = "tls"))]
fn no_tls_in_this_build(variable: &'static str) -> crate::Error {
    crate::Error::InvalidSetting {
        variable,
        value: "TLS asked for".into(),
        accepted: "nothing: this build has no TLS (build metabridge with its `tls` feature)",
    }
}

#[cfg(feature = "tls")]
fn check_pair(files: &TlsFiles) -> crate::Result<()> {
    let missing = |variable: &'static str| crate::Error::InvalidSetting {
        variable,
        value: String::new(),
        accepted:
            "a PEM file's path: a TLS service needs both METABRIDGE_TLS_CERT and METABRIDGE_TLS_KEY",
    };
    if files.cert.as_os_str().is_empty() {
        return Err(missing(TLS_CERT));
    }
    if files.key.as_os_str().is_empty() {
        return Err(missing(TLS_KEY));
    }
    Ok(())
}

/// How a client verifies a TLS service when its code gave nothing: from
/// `$METABRIDGE_TLS_CA` (a CA bundle) or `$METABRIDGE_TLS_PIN` (a
/// certificate fingerprint), with `$METABRIDGE_TLS_CLIENT_CERT` and
/// `$METABRIDGE_TLS_CLIENT_KEY` for mutual TLS; `None` when none is set.
#[cfg(feature = "tls")]
pub fn client_tls() -> crate::Result<Option<metabridge_tcp::tls::ClientTls>> {
    use metabridge_tcp::tls::ClientTls;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let tls =
        match (var(TLS_CA), var(TLS_PIN)) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err(crate::Error::InvalidSetting {
                variable: TLS_PIN,
                value: "set together with METABRIDGE_TLS_CA".into(),
                accepted:
                    "one of METABRIDGE_TLS_CA (a CA bundle) and METABRIDGE_TLS_PIN (a fingerprint)",
            }),
            (Some(ca), None) => ClientTls::ca_file(ca)?,
            (None, Some(pin)) => ClientTls::pinned(&pin)?,
        };
    Ok(Some(match (var(TLS_CLIENT_CERT), var(TLS_CLIENT_KEY)) {
        (Some(cert), Some(key)) => tls.client_cert_files(cert, key)?,
        (None, None) => tls,
        _ => {
            return Err(crate::Error::InvalidSetting {
                variable: TLS_CLIENT_CERT,
                value: "one of METABRIDGE_TLS_CLIENT_CERT and METABRIDGE_TLS_CLIENT_KEY".into(),
                accepted: "both (a client certificate and its key) or neither",
            })
        }
    }))
}

/// Without the `tls` feature a client asked for TLS by the environment
/// fails to open rather than speaking plaintext.
#[cfg(not(feature = "tls"))]
pub(crate) fn refuse_client_tls_env() -> crate::Result<()> {
    for variable in [TLS_CA, TLS_PIN] {
        if std::env::var_os(variable).is_some_and(|v| !v.is_empty()) {
            return Err(no_tls_in_this_build(variable));
        }
    }
    Ok(())
}

impl ServiceConfig {
    /// True when TCP was left at its default address (127.0.0.1, any
    /// port) and not exposed on purpose: then the service guards it with a
    /// token of its own.
    pub fn tcp_is_default(&self) -> bool {
        !self.tcp_exposed && self.host == "127.0.0.1" && self.port == 0
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            host: "127.0.0.1".into(),
            port: 0,
            workers: parsed::<usize>(WORKERS)
                .filter(|&n| n > 0)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2)
                }),
            cache_capacity: 128,
            cache_key_bytes: 64 << 20,
            token: token(),
            tcp_exposed: false,
            allow_uids: Vec::new(),
            max_channels: 1024,
            max_extra_workers: 16,
            tcp_call_threads: parsed::<usize>(TCP_CALL_THREADS)
                .filter(|&n| n > 0)
                .unwrap_or(256),
            max_message: max_message(),
            tcp_auth_timeout: millis(TCP_AUTH_TIMEOUT_MS)
                .unwrap_or(metabridge_tcp::server::AUTH_TIMEOUT),
            tcp_stall_timeout: millis(TCP_STALL_TIMEOUT_MS)
                .unwrap_or(metabridge_tcp::server::STALL_TIMEOUT),
            shutdown_timeout: Duration::from_secs(5),
            logger: false,
            log_file: std::env::var_os(LOG_FILE)
                .filter(|f| !f.is_empty())
                .map(Into::into),
            tls: tls_files_from_env(),
            tls_pem: None,
            tls_client_allow: std::env::var(TLS_CLIENT_ALLOW)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
