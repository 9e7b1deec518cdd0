//! Defining a service without the macro: a builder of closures.
//!
//! `#[metabridge::service]` expands to exactly these calls; writing them by
//! hand gives the same service.

use crate::args::Args;
use crate::config::{ServiceConfig, TlsFiles, TlsPem};
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
    /// Endpoints a client may retry on another replica ([`Service::idempotent`]).
    pub(crate) idempotent: std::collections::BTreeSet<String>,
    /// Who makes it known beyond this machine ([`Service::announce`]).
    pub(crate) announcers: Vec<Arc<dyn crate::Announcer>>,
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
            idempotent: Default::default(),
            announcers: Vec::new(),
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

    /// Serves TCP with TLS from PEM files (the `tls` feature; see
    /// [`ServiceConfig::tls`]); `#[service(tls(cert = "..", key = ".."))]`
    /// calls it.
    ///
    /// ```
    /// # struct Api;
    /// let service = metabridge::Service::<Api>::new("api").host("0.0.0.0").tls(metabridge::TlsFiles {
    ///     cert: "/etc/api/cert.pem".into(),
    ///     key: "/etc/api/key.pem".into(),
    ///     client_ca: None,
    /// });
    /// let _ = service.configure(|c| assert!(c.tls.is_some()));
    /// ```
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.config.tls = Some(files);
        self
    }

    /// Serves TCP with TLS from a certificate chain and key given as PEM
    /// bytes (the `tls` feature; see [`ServiceConfig::tls_pem`]).
    pub fn tls_pem(mut self, cert: &[u8], key: &[u8]) -> Self {
        self.config.tls_pem = Some(TlsPem {
            cert: cert.to_vec(),
            key: key.to_vec(),
            client_ca: None,
        });
        self
    }

    /// Marks `endpoint` idempotent: running it twice does what running it
    /// once does, so a client of several replicas may retry it on another
    /// when a call's outcome is unknown (the replica died under it). Other
    /// endpoints are never retried. `#[metabridge::function(idempotent)]`
    /// calls it.
    ///
    /// ```
    /// # struct Api;
    /// let service = metabridge::Service::<Api>::new("api").idempotent("get");
    /// assert_eq!(service.idempotent_endpoints(), vec!["get".to_string()]);
    /// ```
    pub fn idempotent(mut self, endpoint: &str) -> Self {
        self.idempotent.insert(endpoint.to_owned());
        self
    }

    /// The endpoints marked idempotent, in order.
    pub fn idempotent_endpoints(&self) -> Vec<String> {
        self.idempotent.iter().cloned().collect()
    }

    /// Makes the service known beyond this machine once it serves (a mesh:
    /// `metabridge_mesh::ServiceMesh::mesh` calls it). The announcer checks
    /// the configuration first: a service it cannot announce does not
    /// start.
    pub fn announce(mut self, announcer: impl crate::Announcer) -> Self {
        self.announcers.push(Arc::new(announcer));
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
