//! Defining a service without the macro: a builder of closures.
//!
//! `#[metabridge::service]` expands to exactly these calls; writing them by
//! hand gives the same service.

use crate::args::Args;
use crate::envelope;
use crate::error::{CallError, Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future of an `async` endpoint: resolves to the encoded response.
pub type EndpointFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, CallError>> + Send>>;

pub(crate) type CtorFn<S> = dyn Fn(&mut Args<'_>) -> Result<S, CallError> + Send + Sync;
pub(crate) type SyncFn<S> =
    dyn Fn(&S, &mut Args<'_>, &mut Reply<'_>) -> Result<(), CallError> + Send + Sync;
pub(crate) type AsyncFn<S> =
    dyn Fn(Arc<S>, &mut Args<'_>) -> Result<EndpointFuture, CallError> + Send + Sync;

/// One endpoint's code.
pub(crate) enum Endpoint<S> {
    Sync(Arc<SyncFn<S>>),
    Async(Arc<AsyncFn<S>>),
}

impl<S> Clone for Endpoint<S> {
    fn clone(&self) -> Self {
        match self {
            Endpoint::Sync(f) => Endpoint::Sync(f.clone()),
            Endpoint::Async(f) => Endpoint::Async(f.clone()),
        }
    }
}

/// Where an endpoint writes its answer.
///
/// ```
/// use metabridge::Reply;
/// let bytes = Reply::encode_ok(&"hi").unwrap();
/// assert_eq!(metabridge::envelope::decode_result::<String>(&bytes).unwrap(), "hi");
/// ```
pub struct Reply<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
}

impl Reply<'_> {
    /// Answers with `value`.
    pub fn ok<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CallError> {
        envelope::encode_ok(self.buf, value)
    }

    /// Answers with the value of `Ok`, or the error of `Err` (its type name
    /// and message).
    pub fn result<T: Serialize, E: Display>(
        &mut self,
        result: Result<T, E>,
    ) -> Result<(), CallError> {
        match result {
            Ok(v) => self.ok(&v),
            Err(e) => Err(CallError::from_error(&e)),
        }
    }

    /// Answers with a value that `write` appends as MessagePack (for
    /// hosts that encode values themselves, like the Python package).
    pub fn ok_with(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), CallError>,
    ) -> Result<(), CallError> {
        envelope::encode_ok_with(self.buf, write)
    }

    /// The encoded answer whose value `write` appends, for an `async`
    /// endpoint.
    pub fn encode_ok_with(
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), CallError>,
    ) -> Result<Vec<u8>, CallError> {
        let mut buf = Vec::with_capacity(64);
        envelope::encode_ok_with(&mut buf, write)?;
        Ok(buf)
    }

    /// The encoded answer `value`, for an `async` endpoint.
    pub fn encode_ok<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CallError> {
        let mut buf = Vec::with_capacity(64);
        envelope::encode_ok(&mut buf, value)?;
        Ok(buf)
    }

    /// The encoded answer of a `Result`, for an `async` endpoint.
    pub fn encode_result<T: Serialize, E: Display>(
        result: Result<T, E>,
    ) -> Result<Vec<u8>, CallError> {
        match result {
            Ok(v) => Self::encode_ok(&v),
            Err(e) => Err(CallError::from_error(&e)),
        }
    }
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
    /// TCP is exposed where the operator said (set by [`Service::host`],
    /// [`Service::port`] and the macro's `host`/`port`): the service then
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
    pub tcp_auth_timeout: std::time::Duration,
    /// While a TCP request is read or a result written, the longest time no
    /// byte may move (default 10 s, or `$METABRIDGE_TCP_STALL_TIMEOUT_MS`):
    /// a message takes as long as the link needs while bytes keep moving.
    /// The client's own timeout still bounds its call.
    pub tcp_stall_timeout: std::time::Duration,
    /// Most extra worker threads started when a slow sync call holds a
    /// worker (its other channels move to a new worker; see ARCHITECTURE,
    /// "Workers"). Default 16. Past it, channels wait behind slow calls.
    pub max_extra_workers: usize,
    /// After SIGTERM (or `request_stop`), how long calls in progress may
    /// take to finish (default 5 s). Past it the service stops anyway,
    /// reporting the calls it abandoned (`Error::ShutdownTimeout`); a
    /// daemon exits with status 3.
    pub shutdown_timeout: std::time::Duration,
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
    /// with [`Error::InsecurePath`] naming its path, owner and mode.
    pub log_file: Option<std::path::PathBuf>,
}

impl ServiceConfig {
    /// True when TCP was left at its default address (127.0.0.1, any
    /// port) and not exposed on purpose: then the service guards it with a
    /// token of its own.
    pub fn tcp_is_default(&self) -> bool {
        !self.tcp_exposed && self.host == "127.0.0.1" && self.port == 0
    }
}

/// `$name`, a number of milliseconds, if set and a number.
fn env_ms(name: &str) -> Option<std::time::Duration> {
    let ms = std::env::var(name).ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

impl Default for ServiceConfig {
    fn default() -> Self {
        let workers = std::env::var("METABRIDGE_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            });
        ServiceConfig {
            host: "127.0.0.1".into(),
            port: 0,
            workers,
            cache_capacity: 128,
            cache_key_bytes: 64 << 20,
            token: std::env::var("METABRIDGE_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            tcp_exposed: false,
            allow_uids: Vec::new(),
            max_channels: 1024,
            max_extra_workers: 16,
            max_message: crate::error::default_max_message(),
            tcp_auth_timeout: env_ms("METABRIDGE_TCP_AUTH_TIMEOUT_MS")
                .unwrap_or(metabridge_tcp::server::AUTH_TIMEOUT),
            tcp_stall_timeout: env_ms("METABRIDGE_TCP_STALL_TIMEOUT_MS")
                .unwrap_or(metabridge_tcp::server::STALL_TIMEOUT),
            shutdown_timeout: std::time::Duration::from_secs(5),
            logger: false,
            log_file: std::env::var_os("METABRIDGE_LOG_FILE")
                .filter(|f| !f.is_empty())
                .map(Into::into),
        }
    }
}

/// A service definition: a name, a constructor and endpoints.
///
/// ```
/// use metabridge::{Service, Args, Reply};
/// struct Greeter { greeting: String }
/// let service = Service::<Greeter>::new("greeter")
///     .constructor(|a: &mut Args<'_>| {
///         let greeting: String = a.next("greeting")?;
///         a.finish(&["greeting"])?;
///         Ok(Greeter { greeting })
///     })
///     .endpoint("greet", |s: &Greeter, a: &mut Args<'_>, out: &mut Reply<'_>| {
///         let name: String = a.next("name")?;
///         a.finish(&["name"])?;
///         out.ok(&format!("{} {name}", s.greeting))
///     });
/// assert_eq!(service.name(), "greeter");
/// assert_eq!(service.endpoint_names(), vec!["greet".to_string()]);
/// ```
pub struct Service<S> {
    pub(crate) name: String,
    pub(crate) config: ServiceConfig,
    pub(crate) ctor: Option<Arc<CtorFn<S>>>,
    /// The constructor's parameter names, in order, if known: instances
    /// are then keyed by the arguments bound to them (see
    /// [`Service::constructor_params`]).
    pub(crate) ctor_params: Option<Arc<[String]>>,
    pub(crate) endpoints: HashMap<String, Endpoint<S>>,
    /// Parameter names of endpoints, where declared ([`Service::params`]).
    pub(crate) params: HashMap<String, Vec<String>>,
}

impl<S: Send + Sync + 'static> Service<S> {
    /// A service called `name`, with no endpoints yet. The name is not
    /// checked here (see [`try_new`](Service::try_new) and
    /// [`validate_name`](Service::validate_name)).
    pub fn new(name: &str) -> Service<S> {
        Service {
            name: name.to_owned(),
            config: ServiceConfig::default(),
            ctor: None,
            ctor_params: None,
            endpoints: HashMap::new(),
            params: HashMap::new(),
        }
    }

    /// A service called `name`, or [`Error::InvalidServiceName`] if the
    /// name is not valid (see [`validate_service_name`]).
    ///
    /// ```
    /// use metabridge::{Error, Service};
    /// assert!(Service::<()>::try_new("demo-service").is_ok());
    /// assert!(matches!(Service::<()>::try_new(""), Err(Error::InvalidServiceName { .. })));
    /// assert!(matches!(Service::<()>::try_new("a/b"), Err(Error::InvalidServiceName { .. })));
    /// ```
    pub fn try_new(name: &str) -> Result<Service<S>> {
        validate_service_name(name)?;
        Ok(Service::new(name))
    }

    /// Checks the service's name (see [`validate_service_name`]).
    pub fn validate_name(&self) -> Result<()> {
        validate_service_name(&self.name)
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same service under another name (to run several copies).
    pub fn rename(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// The TCP interface (`"0.0.0.0"` to expose it on the network).
    pub fn host(mut self, host: &str) -> Self {
        self.config.host = host.to_owned();
        self.config.tcp_exposed = true;
        self
    }

    /// The TCP port (0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.config.port = port;
        self.config.tcp_exposed = true;
        self
    }

    /// Replaces the whole runtime configuration.
    pub fn config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes the runtime configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut ServiceConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// The constructor: builds an instance from the client's constructor
    /// arguments. Without one, the service cannot be instantiated.
    pub fn constructor(
        mut self,
        f: impl Fn(&mut Args<'_>) -> Result<S, CallError> + Send + Sync + 'static,
    ) -> Self {
        self.ctor = Some(Arc::new(f));
        self
    }

    /// Names the constructor's parameters, in order. Instances are then
    /// keyed by the constructor arguments *bound to these parameters*: a
    /// client that passes `("a", 1)` positionally and one that passes
    /// `prefix="a", scale=1` by keyword share one instance. Without it
    /// (a builder that does not call it), instances are keyed by the
    /// positional arguments and the keyword arguments separately (in any
    /// key order). An empty list means one shared instance for every
    /// client. `#[metabridge::service]` calls it with `new`'s parameters.
    pub fn constructor_params(mut self, names: &[&str]) -> Self {
        self.ctor_params = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }

    /// A synchronous endpoint.
    pub fn endpoint(
        mut self,
        name: &str,
        f: impl Fn(&S, &mut Args<'_>, &mut Reply<'_>) -> Result<(), CallError> + Send + Sync + 'static,
    ) -> Self {
        self.endpoints
            .insert(name.to_owned(), Endpoint::Sync(Arc::new(f)));
        self
    }

    /// An `async` endpoint: binds its arguments at once, then returns the
    /// future that computes the encoded answer on the service's tokio
    /// runtime.
    pub fn endpoint_async(
        mut self,
        name: &str,
        f: impl Fn(Arc<S>, &mut Args<'_>) -> Result<EndpointFuture, CallError> + Send + Sync + 'static,
    ) -> Self {
        self.endpoints
            .insert(name.to_owned(), Endpoint::Async(Arc::new(f)));
        self
    }

    /// Declares the parameter names of endpoint `endpoint`, for tools
    /// (`metabridge endpoints`); the macro declares them for you.
    pub fn params(mut self, endpoint: &str, names: &[&str]) -> Self {
        self.params.insert(
            endpoint.to_owned(),
            names.iter().map(|n| n.to_string()).collect(),
        );
        self
    }

    /// Logs starts, stops, connects and calls through `tracing` (see
    /// [`ServiceConfig::logger`]).
    pub fn logger(mut self, on: bool) -> Self {
        self.config.logger = on;
        self
    }

    /// Where a daemon of this service writes its log (see
    /// [`ServiceConfig::log_file`]).
    pub fn log_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.log_file = Some(path.into());
        self
    }

    /// Makes endpoint `target` reachable as `alias` too (the seed exposes a
    /// method under its endpoint name and its own name).
    pub fn alias(mut self, alias: &str, target: &str) -> Self {
        if let Some(e) = self.endpoints.get(target).cloned() {
            self.endpoints.insert(alias.to_owned(), e);
        }
        if let Some(p) = self.params.get(target).cloned() {
            self.params.insert(alias.to_owned(), p);
        }
        self
    }

    /// The sorted endpoint names (aliases included).
    pub fn endpoint_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.endpoints.keys().cloned().collect();
        names.sort();
        names
    }
}

// The name rule lives in `metabridge-names`, which the macro's
// compile-time check uses too.
pub use metabridge_names::MAX_SERVICE_NAME_LEN;

/// Checks a service name. Valid: 1 to [`MAX_SERVICE_NAME_LEN`] (64) bytes
/// of UTF-8 without control characters (NUL, newline, ...), without
/// invisible or direction-changing characters (Unicode format characters
/// such as U+200B ZERO WIDTH SPACE, U+202E RIGHT-TO-LEFT OVERRIDE or
/// U+FEFF, the other default-ignorable code points, and spaces other than
/// the ASCII space: two names must not look alike in `metabridge list`),
/// without `/` or `\\`, not `.` or `..`, and without leading or trailing
/// whitespace. (Names become file names in `$METABRIDGE_HOME`.)
/// `#[metabridge::service]` checks a literal name at compile time, and
/// the Python package's `create` checks its name, by the same rule (crate
/// `metabridge-names`).
///
/// ```
/// use metabridge::validate_service_name as valid;
/// assert!(valid("demo-service").is_ok());
/// assert!(valid("serviço de teste").is_ok());
/// for bad in ["", "a/b", "a\0b", "..", " padded", &"x".repeat(65), "a\u{200B}b"] {
///     assert!(valid(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn validate_service_name(name: &str) -> Result<()> {
    match metabridge_names::service_name_problem(name) {
        None => Ok(()),
        Some(problem) => Err(Error::InvalidServiceName {
            name: name.to_owned(),
            problem,
        }),
    }
}

#[cfg(test)]
mod tests;
