//! The client: find a service, open channels lazily, call endpoints.
//!
//! The path of one call: [`Client::call`] encodes the request envelope
//! into the connection's buffer, the transport (a shared-memory channel
//! from the pool, or a pooled TCP socket) carries it, and the response is
//! decoded from the reply ring in place.
//!
//! A client may be copied into a child by `fork()` (a preloading server,
//! `multiprocessing` with `fork`). Its channels and sockets then belong
//! to the parent: two processes writing one ring or one socket would get
//! each other's replies. Each connection records the fork generation it
//! was opened under (see `platform::fork_generation`); a call that finds
//! the connection of another generation opens a new one for this process
//! first, and the inherited one is never used, closed or freed here
//! (dropping it would mark its rings closed under the parent): it is
//! leaked, a few kilobytes and the parent's mappings per client and fork.

use crate::args::{CallArgs, IntoArgs};
use crate::config::TransportKind;
use crate::envelope;
use crate::error::{Error, Failure, PeerGone, Result, TimedOut};
use crate::registry::{self, Entry, Registry};
use crate::resolve::{FixedAddress, LocalRegistry, Resolver};
use crate::transport::{Limits, Transport};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Options of a connection; made by [`connect`].
///
/// ```no_run
/// let client = metabridge::connect("demo-service")
///     .kwarg("argumento", "Olá,")
///     .timeout(std::time::Duration::from_secs(2))
///     .open()?;
/// let greeting: String = client.call("get", ("mundo!",))?;
/// # Ok::<(), metabridge::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Connect {
    name: String,
    ctor: CallArgs,
    timeout: Duration,
    transport: TransportKind,
    address: Option<String>,
    token: Option<String>,
    /// `token` was given by `.token()` (not taken from the environment).
    token_given: bool,
    max_channels: usize,
    max_message: usize,
    error: Option<Arc<Error>>,
    home: Option<std::path::PathBuf>,
    #[cfg(feature = "tls")]
    tls: Option<metabridge_tcp::tls::ClientTls>,
}

/// Starts connecting to the service `name`; finish with
/// [`Connect::open`].
pub fn connect(name: &str) -> Connect {
    Connect {
        name: name.to_owned(),
        ctor: CallArgs::new(),
        timeout: Duration::from_secs(30),
        transport: TransportKind::Auto,
        address: None,
        token: crate::config::token(),
        token_given: false,
        max_channels: 16,
        max_message: crate::config::max_message(),
        error: None,
        home: None,
        #[cfg(feature = "tls")]
        tls: None,
    }
}

impl Connect {
    /// Adds a positional constructor argument. (A value that cannot be
    /// encoded makes [`open`](Self::open) fail.)
    pub fn arg<T: Serialize>(mut self, value: T) -> Connect {
        match self.ctor.clone().arg(value) {
            Ok(c) => self.ctor = c,
            Err(e) => self.error = self.error.or(Some(Arc::new(e))),
        }
        self
    }

    /// Adds a keyword constructor argument.
    pub fn kwarg<T: Serialize>(mut self, name: &str, value: T) -> Connect {
        match self.ctor.clone().kwarg(name, value) {
            Ok(c) => self.ctor = c,
            Err(e) => self.error = self.error.or(Some(Arc::new(e))),
        }
        self
    }

    /// Sets all constructor arguments at once.
    pub fn ctor_args(mut self, args: CallArgs) -> Connect {
        self.ctor = args;
        self
    }

    /// How long a call (and setting up a channel) may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Connect {
        self.timeout = timeout;
        self
    }

    /// Chooses the transport (default `Auto`). `$METABRIDGE_TRANSPORT`,
    /// the operator's override, wins over it.
    pub fn transport(mut self, kind: TransportKind) -> Connect {
        self.transport = kind;
        self
    }

    /// Connects by TCP address (`host:port`) instead of looking the name
    /// up in the local registry: for services on other hosts.
    pub fn at(mut self, address: &str) -> Connect {
        self.address = Some(address.to_owned());
        self.transport = TransportKind::Tcp;
        self
    }

    /// The token to present (default `$METABRIDGE_TOKEN`).
    pub fn token(mut self, token: &str) -> Connect {
        self.token = Some(token.to_owned());
        self.token_given = true;
        self
    }

    /// Looks the service up in the registry of this directory instead of
    /// `$METABRIDGE_HOME`.
    pub fn home(mut self, dir: impl Into<std::path::PathBuf>) -> Connect {
        self.home = Some(dir.into());
        self
    }

    /// Most shared-memory channels (or sockets) open at once (default 16).
    pub fn max_channels(mut self, n: usize) -> Connect {
        self.max_channels = n.max(1);
        self
    }

    /// Largest request or result this client sends or accepts, on either
    /// transport (default 256 MiB, or `$METABRIDGE_MAX_MESSAGE`): past it a
    /// call fails with [`Error::MessageTooLarge`]. The service has its own
    /// limit (`ServiceConfig::max_message`).
    pub fn max_message(mut self, bytes: usize) -> Connect {
        self.max_message = bytes;
        self
    }

    /// The transport this connection uses: `$METABRIDGE_TRANSPORT` if set
    /// (the operator's override), else the one chosen in code (a service
    /// given by address cannot be reached over shared memory: forcing it
    /// is an `Unreachable` error when the client opens).
    fn effective_transport(&self) -> Result<TransportKind> {
        Ok(crate::config::client_transport()?.unwrap_or(self.transport))
    }

    /// Speaks TLS over TCP, verifying the service as `tls` says (a CA
    /// bundle with the host name checked, or a pinned fingerprint; the
    /// `tls` feature). Without it, the client verifies a TLS service by
    /// `$METABRIDGE_TLS_CA` or `$METABRIDGE_TLS_PIN`, and a service of this
    /// machine's registry by the fingerprint it published there.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: metabridge_tcp::tls::ClientTls) -> Connect {
        self.tls = Some(tls);
        self
    }

    /// The name of the service this connects to.
    pub fn service_name(&self) -> &str {
        &self.name
    }

    /// How long a call may take (see [`timeout`](Self::timeout)).
    pub fn call_timeout(&self) -> Duration {
        self.timeout
    }

    /// Finds the service and returns a client. No channel is opened until
    /// the first call needs one.
    pub fn open(self) -> Result<Client> {
        if let Some(e) = self.error {
            return Err(crate::ProtocolError::ConstructorArgument(e).into());
        }
        let kind = self.effective_transport()?;
        #[cfg(feature = "tls")]
        let tls = match self.tls {
            Some(tls) => Some(tls),
            None => crate::config::client_tls()?,
        };
        #[cfg(not(feature = "tls"))]
        crate::config::refuse_client_tls_env()?;
        let ctor = envelope::encode_ctor(&self.ctor.encoded_args(), &self.ctor.encoded_kwargs());
        let resolver: Box<dyn Resolver> = match self.address {
            Some(tcp) => Box::new(FixedAddress { tcp }),
            None => Box::new(LocalRegistry {
                home: self.home.unwrap_or_else(registry::home_dir),
            }),
        };
        let target = Target {
            name: self.name.clone(),
            resolver,
            kind,
            token: self.token,
            token_given: self.token_given,
            limits: Limits {
                channels: self.max_channels,
                timeout: self.timeout,
                message: self.max_message,
                #[cfg(feature = "tls")]
                tls,
            },
        };
        crate::platform::watch_forks();
        let first = target.connect()?;
        Ok(Client {
            timeout: self.timeout,
            inner: Arc::new(Inner {
                name: self.name,
                ctor_tail: envelope::ctor_tail(&ctor),
                ctor,
                current: AtomicPtr::new(Box::into_raw(Box::new(first))),
                target,
                closed: AtomicBool::new(false),
            }),
        })
    }
}

/// Where and how a client reaches its service: enough to find it again
/// after a restart.
struct Target {
    name: String,
    /// Finds the service each time the client (re)connects.
    resolver: Box<dyn Resolver>,
    kind: TransportKind,
    token: Option<String>,
    token_given: bool,
    limits: Limits,
}

impl Target {
    /// Resolves the service and opens a transport to it.
    fn connect(&self) -> Result<Connection> {
        let generation = crate::platform::fork_generation();
        let address = self.resolver.resolve(&self.name)?;
        // A service that published its token to this user: use it, unless
        // the caller gave one explicitly.
        let token = match (&address.token, self.token_given) {
            (Some(t), false) => Some(t.clone()),
            _ => self.token.clone(),
        };
        let transport = Transport::open(self.kind, &address, &self.limits, token.as_deref());
        // A registered service whose address does not answer is gone; a
        // fixed address reports its own error.
        let transport = match address.local {
            Some(_) => transport.map_err(|e| self.gone(e))?,
            None => transport?,
        };
        Ok(Connection {
            transport,
            token,
            gone: AtomicBool::new(false),
            generation,
            previous: AtomicPtr::new(ptr::null_mut()),
            replacing: Mutex::new(()),
        })
    }

    /// A failure to reach the service as one kind of error, with its name:
    /// a socket that is not there or refuses means the service is gone.
    fn gone(&self, e: Error) -> Error {
        match e {
            Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Error::ServiceNotFound {
                    name: self.name.clone(),
                    reason: format!("its registered address does not answer ({io})"),
                }
            }
            Error::PeerGone(cause) => Error::PeerGone(PeerGone::Service {
                name: self.name.clone(),
                cause: Box::new(cause),
            }),
            other => other,
        }
    }
}

/// One connection to one incarnation of the service.
struct Connection {
    transport: Transport,
    token: Option<String>,
    /// The service went away under this connection: the next call looks
    /// the name up again.
    gone: AtomicBool,
    /// The fork generation of the process that opened it: only that
    /// process may use it (or close or free it).
    generation: u64,
    /// The connection this one replaced, or null: kept (threads may still
    /// use it) until the client drops. Set before this one is published.
    previous: AtomicPtr<Connection>,
    /// One thread of the owning process replaces this connection at a
    /// time (a process that inherited it never takes this lock: a thread
    /// of the parent may have held it at the fork, and never lets go in
    /// the child).
    replacing: Mutex<()>,
}

impl Connection {
    /// Opened by this process (not inherited across `fork`).
    #[inline]
    fn ours(&self) -> bool {
        self.generation == crate::platform::fork_generation()
    }
}

struct Inner {
    name: String,
    /// The constructor's raw `[args, kwargs]`, encoded once.
    ctor: Vec<u8>,
    /// The same as the tail of a request map (keys included).
    ctor_tail: Vec<u8>,
    /// The current connection; replaced when the service restarted or the
    /// process is a forked child. A plain pointer, loaded with one atomic
    /// read per call: a connection replaced stays reachable through
    /// `previous` of its successor until the client drops, so a pointer
    /// loaded by any thread stays valid. (No lock of the client guards
    /// this: a forked child would inherit one a parent's thread held.)
    current: AtomicPtr<Connection>,
    target: Target,
    closed: AtomicBool,
}

impl Inner {
    /// Carries one request on the current connection. A connection whose
    /// service went away is replaced first (the name looked up again); a
    /// call that fails because the service went away *during* it fails
    /// with `PeerGone` and is never replayed (it may have run).
    fn round_trip<R>(
        &self,
        endpoint: &str,
        encode: impl FnOnce(&mut Vec<u8>, Option<&str>) -> Result<()>,
        decode: impl FnOnce(&[u8]) -> Result<R>,
        timeout: Duration,
    ) -> Result<R> {
        self.round_trip_interruptible(endpoint, encode, decode, timeout, None)
    }

    /// A call of `endpoint` with positional `args`, its response decoded
    /// by `decode`.
    fn call_positional<T>(
        &self,
        endpoint: &str,
        args: &impl IntoArgs,
        decode: impl FnOnce(&[u8]) -> Result<T>,
        timeout: Duration,
    ) -> Result<T> {
        self.round_trip(
            endpoint,
            |buf, token| {
                envelope::encode_call_with(
                    buf,
                    endpoint,
                    |b| args.encode_args(b),
                    envelope::EMPTY_MAP,
                    &self.ctor_tail,
                    token,
                )
            },
            decode,
            timeout,
        )
    }

    /// As [`round_trip`](Self::round_trip), asking `interrupt` while it
    /// waits (see `Client::call_encoded`). `endpoint` names the call in
    /// a timeout.
    fn round_trip_interruptible<R>(
        &self,
        endpoint: &str,
        encode: impl FnOnce(&mut Vec<u8>, Option<&str>) -> Result<()>,
        decode: impl FnOnce(&[u8]) -> Result<R>,
        timeout: Duration,
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<R> {
        let mut conn = self.connection();
        // Two relaxed loads: the service went away, or this process is a
        // fork of the one that opened the connection.
        if conn.gone.load(Ordering::Relaxed) || !conn.ours() {
            self.replace(conn)?;
            conn = self.connection();
        }
        let token = conn.token.as_deref();
        let carried =
            conn.transport
                .round_trip(|buf| encode(buf, token), decode, timeout, interrupt);
        self.outcome(conn, endpoint, timeout, carried)
    }

    /// A call's result as the client reports it: a service gone under the
    /// call marks the connection for replacement; a timeout names the call.
    fn outcome<R>(
        &self,
        conn: &Connection,
        endpoint: &str,
        timeout: Duration,
        carried: Result<R>,
    ) -> Result<R> {
        match carried {
            Err(e) if is_gone(&e) => {
                conn.gone.store(true, Ordering::Relaxed);
                Err(self.target.gone(e))
            }
            Err(Error::Timeout(TimedOut::ShmReply { .. } | TimedOut::TcpReply)) => {
                Err(Error::Timeout(TimedOut::Call {
                    service: self.name.clone(),
                    endpoint: endpoint.to_owned(),
                    transport: conn.transport.name(),
                    after: timeout,
                }))
            }
            other => other,
        }
    }

    /// Replaces `old`, the current connection whose service went away or
    /// that this process inherited across `fork`, by a new one.
    fn replace(&self, old: &Connection) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PeerGone::ClientClosed.into());
        }
        let old_ptr = old as *const Connection as *mut Connection;
        if !old.ours() {
            // Inherited: never lock, use or close it. Threads of this
            // process that meet it at once each open a connection; the
            // first installs its own, the others drop theirs (which are
            // theirs to close).
            let fresh = self.target.connect()?;
            self.install(old_ptr, fresh);
            return Ok(());
        }
        let _one = old.replacing.lock().unwrap_or_else(|p| p.into_inner());
        if self.current.load(Ordering::Acquire) != old_ptr {
            return Ok(()); // another thread did it
        }
        if self.install(old_ptr, self.target.connect()?) {
            old.transport.close();
        }
        Ok(())
    }

    /// Makes `fresh` current in place of `old`, unless another thread
    /// replaced `old` first (then `fresh` is closed); true if it did.
    fn install(&self, old: *mut Connection, fresh: Connection) -> bool {
        // Relaxed: published by the AcqRel exchange below.
        fresh.previous.store(old, Ordering::Relaxed);
        let fresh = Box::into_raw(Box::new(fresh));
        // AcqRel: the Release pairs with the Acquire load in `connection`,
        // so a thread that sees the new pointer sees the connection it
        // points to. Relaxed on failure: nothing is read through the
        // pointer found.
        match self
            .current
            .compare_exchange(old, fresh, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => true,
            Err(_) => {
                // SAFETY: `fresh` came from Box::into_raw just above and was
                // never published; its `previous` is not its to free.
                let fresh = unsafe { Box::from_raw(fresh) };
                fresh.previous.store(ptr::null_mut(), Ordering::Relaxed);
                drop(fresh);
                false
            }
        }
    }

    /// The current connection.
    fn connection(&self) -> &Connection {
        // Acquire: pairs with the AcqRel exchange in `install`.
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: `p` came from Box::into_raw; a connection is freed only
        // in Inner's Drop (current) or with `retired` (replaced ones), both
        // after every `&self` borrow, and so after this reference, ends.
        unsafe { &*p }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut p = *self.current.get_mut();
        while !p.is_null() {
            // SAFETY: every pointer in the chain came from Box::into_raw
            // and is owned by the chain alone; no other reference remains:
            // we have `&mut self`.
            let mut conn = unsafe { Box::from_raw(p) };
            p = *conn.previous.get_mut();
            if !conn.ours() {
                // The parent's (we are a forked child): dropping it would
                // close its channels under the parent. Leaked on purpose.
                std::mem::forget(conn);
            }
        }
    }
}

/// Errors that mean the service (this incarnation of it) is gone.
fn is_gone(e: &Error) -> bool {
    match e {
        Error::PeerGone(_) | Error::ServiceNotFound { .. } => true,
        Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// A dynamic proxy of one service, for its constructor arguments. Cheap to
/// clone and usable from many threads at once; closed when the last clone
/// drops, or explicitly with [`close`](Client::close).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// What each call of this handle allows itself (see
    /// [`with_timeout`](Client::with_timeout)).
    timeout: Duration,
}

impl Client {
    /// Calls `endpoint` with positional `args` (a tuple) and decodes the
    /// result as `R`.
    ///
    /// ```
    /// # let home = format!("/dev/shm/mb-doc-call-{}", std::process::id());
    /// # std::env::set_var("METABRIDGE_HOME", &home);
    /// use metabridge::{Args, Reply, Service};
    /// let adder = Service::<i64>::new("doc-call-adder")
    ///     .constructor(|a: &mut Args<'_>| { let base = a.next("base")?; a.finish(&["base"])?; Ok(base) })
    ///     .endpoint("add", |base: &i64, a: &mut Args<'_>, out: &mut Reply<'_>| {
    ///         let x: i64 = a.next("x")?;
    ///         a.finish(&["x"])?;
    ///         out.ok(&(base + x))
    ///     });
    /// let daemon = metabridge::run(adder)?;
    /// let client = metabridge::connect("doc-call-adder").kwarg("base", 40).open()?;
    /// assert_eq!(client.call::<i64>("add", (2,))?, 42);
    /// assert!(matches!(client.call::<i64>("add", ("two",)), Err(metabridge::Error::Remote { .. })));
    /// client.close();
    /// daemon.stop()?;
    /// # std::fs::remove_dir_all(&home).ok();
    /// # Ok::<(), metabridge::Error>(())
    /// ```
    pub fn call<R: DeserializeOwned>(&self, endpoint: &str, args: impl IntoArgs) -> Result<R> {
        self.inner
            .call_positional(endpoint, &args, envelope::decode_result::<R>, self.timeout)
    }

    /// Calls an endpoint that returns `Result<R, E>` and gets its error
    /// back as an `E` ([`Failure::Endpoint`]), decoded from the data the
    /// service sent with it (an `E` that is `Serialize` there); any other
    /// failure is [`Failure::Call`]. The typed client of
    /// `#[metabridge::service]` calls this for every endpoint whose
    /// return type names its error type.
    pub fn call_fallible<R: DeserializeOwned, E: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: impl IntoArgs,
    ) -> std::result::Result<R, Failure<E>> {
        self.call_fallible_with(endpoint, args, |data| rmp_serde::from_slice(data).ok())
    }

    /// As [`call_fallible`](Self::call_fallible), with the decoder of the
    /// error's data given (for the generated client: one that never
    /// decodes, for an `E` that is not `Deserialize`).
    #[doc(hidden)]
    pub fn call_fallible_with<R: DeserializeOwned, E>(
        &self,
        endpoint: &str,
        args: impl IntoArgs,
        decode_error: fn(&[u8]) -> Option<E>,
    ) -> std::result::Result<R, Failure<E>> {
        let carried = self.inner.call_positional(
            endpoint,
            &args,
            |buf| envelope::decode_fallible::<R, E>(buf, decode_error),
            self.timeout,
        );
        match carried {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Endpoint(e)),
            Err(e) => Err(Failure::Call(e)),
        }
    }

    /// [`call_fallible_with`](Self::call_fallible_with) from async code,
    /// as [`call_async`](Self::call_async) runs a call.
    #[doc(hidden)]
    pub fn call_fallible_async<R, E, A>(
        &self,
        endpoint: &str,
        args: A,
        decode_error: fn(&[u8]) -> Option<E>,
    ) -> impl std::future::Future<Output = std::result::Result<R, Failure<E>>> + Send + 'static
    where
        R: DeserializeOwned + Send + 'static,
        E: Send + 'static,
        A: IntoArgs + Send + 'static,
    {
        let call = self.call_async_with(endpoint, args, move |buf| {
            envelope::decode_fallible::<R, E>(buf, decode_error)
        });
        async move {
            match call.await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Failure::Endpoint(e)),
                Err(e) => Err(Failure::Call(e)),
            }
        }
    }

    /// Calls `endpoint` with positional and keyword arguments.
    pub fn call_with<R: DeserializeOwned>(&self, endpoint: &str, args: &CallArgs) -> Result<R> {
        self.call_raw(endpoint, &args.encoded_args(), &args.encoded_kwargs())
    }

    /// Calls with arguments already encoded (a MessagePack array and map).
    pub fn call_raw<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: &[u8],
        kwargs: &[u8],
    ) -> Result<R> {
        self.call_raw_with(endpoint, args, kwargs, envelope::decode_result::<R>, None)
    }

    /// A call with arguments already encoded, decoded by `decode`.
    fn call_raw_with<R>(
        &self,
        endpoint: &str,
        args: &[u8],
        kwargs: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<R>,
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<R> {
        let write_args = |b: &mut Vec<u8>| {
            b.extend_from_slice(args);
            Ok(())
        };
        self.call_writing(endpoint, write_args, kwargs, decode, interrupt)
    }

    /// Calls with the positional arguments written by `write_args` (one
    /// MessagePack array) straight into the request, where a shared-memory
    /// call may place large byte strings out of line, and keyword
    /// arguments already encoded; `decode` gets the response while the
    /// reply's pool is still lent (see `metabridge::__private`), and
    /// `interrupt` is as for [`call_encoded`](Self::call_encoded). For
    /// hosts with their own codec (the Python package).
    #[doc(hidden)]
    pub fn call_writing<R>(
        &self,
        endpoint: &str,
        write_args: impl FnOnce(&mut Vec<u8>) -> Result<()>,
        kwargs: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<R>,
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<R> {
        let inner = &*self.inner;
        inner.round_trip_interruptible(
            endpoint,
            |buf, token| {
                envelope::encode_call_with(
                    buf,
                    endpoint,
                    write_args,
                    kwargs,
                    &inner.ctor_tail,
                    token,
                )
            },
            decode,
            self.timeout,
            interrupt,
        )
    }

    /// Calls with arguments already encoded and returns the result still
    /// encoded (one MessagePack value), for hosts that convert values
    /// themselves (the Python package). While a shared-memory call waits
    /// for its reply, `interrupt` (if given) is asked every 20 ms; when it
    /// answers true the call fails with an `Error::Io` of kind
    /// `Interrupted`, is not replayed, and its channel is retired (the
    /// late reply cannot reach another call). A TCP call then runs on a
    /// helper thread and is waited for in the same slices.
    pub fn call_encoded(
        &self,
        endpoint: &str,
        args: &[u8],
        kwargs: &[u8],
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<Vec<u8>> {
        self.call_raw_with(
            endpoint,
            args,
            kwargs,
            envelope::decode_result_raw,
            interrupt,
        )
    }

    /// Calls from async code (a tokio runtime). Over shared memory a call
    /// in flight costs a future, not a thread: it waits for a channel as a
    /// task, sends on the runtime's thread (large arguments off its worker
    /// threads, with `block_in_place` on a multi-threaded runtime), spins
    /// a few microseconds for a quick reply, and otherwise yields while the
    /// client's one reply-waiter thread watches every pending channel.
    /// Over TCP the call runs on tokio's blocking pool.
    ///
    /// **Cancellation.** Dropping the future (a `tokio::time::timeout`, a
    /// `select!` that lost) cancels the call at most once: a request not
    /// yet sent is never sent; one sent may still run on the service (a
    /// sync endpoint runs to its end), its reply discarded, never
    /// delivered to another call, and its channel no longer counts against
    /// the client's channels, so the next call does not wait for it. Over
    /// TCP the blocking call runs to its end and its reply is discarded.
    pub fn call_async<R, A>(
        &self,
        endpoint: &str,
        args: A,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        R: DeserializeOwned + Send + 'static,
        A: IntoArgs + Send + 'static,
    {
        self.call_async_with(endpoint, args, envelope::decode_result::<R>)
    }

    /// The async twin of `Inner::round_trip`, for a shared-memory
    /// connection, which carries async calls natively (see
    /// `transport::shm`); `args` and `decode` back when the connection is
    /// another transport (the caller then runs the blocking path off the
    /// runtime).
    async fn round_trip_async<R, A, D>(
        &self,
        endpoint: &str,
        args: A,
        decode: D,
    ) -> std::result::Result<Result<R>, (A, D)>
    where
        A: IntoArgs + Send + 'static,
        D: FnOnce(&[u8]) -> Result<R>,
    {
        let inner = &*self.inner;
        let mut conn = inner.connection();
        if conn.gone.load(Ordering::Relaxed) || !conn.ours() {
            if let Err(e) = inner.replace(conn) {
                return Ok(Err(e));
            }
            conn = inner.connection();
        }
        let Some(pool) = conn.transport.shm() else {
            return Err((args, decode));
        };
        let large = args.encoded_len_hint() >= crate::args::LARGE_ARGS;
        // Owned, so that a large request can be encoded on another thread.
        let (owner, name, token) = (self.clone(), endpoint.to_owned(), conn.token.clone());
        let encode = move |buf: &mut Vec<u8>| {
            envelope::encode_call_with(
                buf,
                &name,
                |b| args.encode_args(b),
                envelope::EMPTY_MAP,
                &owner.inner.ctor_tail,
                token.as_deref(),
            )
        };
        let carried = pool
            .round_trip_async(encode, decode, large, self.timeout)
            .await;
        Ok(inner.outcome(conn, endpoint, self.timeout, carried))
    }

    /// [`call_async`](Self::call_async) with the response decoded by `decode`.
    fn call_async_with<R, A>(
        &self,
        endpoint: &str,
        args: A,
        decode: impl FnOnce(&[u8]) -> Result<R> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<R>> + Send + 'static
    where
        R: Send + 'static,
        A: IntoArgs + Send + 'static,
    {
        let client = self.clone();
        let endpoint = endpoint.to_owned();
        async move {
            let (args, decode) = match client.round_trip_async(&endpoint, args, decode).await {
                Ok(result) => return result,
                Err(back) => back,
            };
            let mut raw = Vec::new();
            args.encode_args(&mut raw)?;
            tokio::task::spawn_blocking(move || {
                client.call_raw_with(&endpoint, &raw, envelope::EMPTY_MAP, decode, None)
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?
        }
    }

    /// The service's endpoint names, sorted.
    pub fn endpoints(&self) -> Result<Vec<String>> {
        let inner = &*self.inner;
        inner.round_trip(
            "list_endpoints",
            |buf, token| {
                envelope::encode_list(buf, &inner.ctor, token);
                Ok(())
            },
            envelope::decode_result::<Vec<String>>,
            self.timeout,
        )
    }

    /// The same connection, its calls each allowed `timeout` (waiting for
    /// a channel or socket, sending, and waiting for the reply) in place of
    /// the client's: for one call that may take longer, or must not.
    /// Cheap: the handle shares the client's channels, and its calls end
    /// as any timed-out call does (`Error::Timeout` naming the call and
    /// the limit; the call is never replayed, its channel never reused).
    ///
    /// ```
    /// # let home = format!("/dev/shm/mb-doc-with-timeout-{}", std::process::id());
    /// # std::env::set_var("METABRIDGE_HOME", &home);
    /// use metabridge::{Args, Reply, Service};
    /// use std::time::Duration;
    /// let sleeper = Service::<()>::new("doc-with-timeout")
    ///     .constructor(|a: &mut Args<'_>| a.finish(&[]))
    ///     .endpoint("nap", |_: &(), a: &mut Args<'_>, out: &mut Reply<'_>| {
    ///         let ms: u64 = a.next("ms")?;
    ///         a.finish(&["ms"])?;
    ///         std::thread::sleep(Duration::from_millis(ms));
    ///         out.ok(&ms)
    ///     });
    /// let daemon = metabridge::run(sleeper)?;
    /// let client = metabridge::connect("doc-with-timeout").open()?;
    /// let hasty = client.with_timeout(Duration::from_millis(100));
    /// assert!(matches!(hasty.call::<u64>("nap", (2_000u64,)), Err(metabridge::Error::Timeout(_))));
    /// assert_eq!(client.call::<u64>("nap", (1u64,))?, 1); // the client's own 30 s
    /// client.close();
    /// daemon.stop()?;
    /// # std::fs::remove_dir_all(&home).ok();
    /// # Ok::<(), metabridge::Error>(())
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: Arc::clone(&self.inner),
            timeout,
        }
    }

    /// What each call of this handle allows itself: the client's
    /// [`timeout`](Connect::timeout), or [`with_timeout`](Self::with_timeout)'s.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `"shm"` or `"tcp"`.
    pub fn transport_name(&self) -> &'static str {
        self.inner.connection().transport.name()
    }

    /// Shared-memory channels (or TCP sockets) open now (by this process:
    /// none just after a `fork`).
    pub fn open_channels(&self) -> usize {
        let conn = self.inner.connection();
        if conn.ours() {
            conn.transport.open_channels()
        } else {
            0
        }
    }

    /// Ends this client's calls in flight over TCP now: each fails with
    /// [`Error::PeerGone`] (it may have run); later calls open new
    /// connections. For a service known to be gone or hung, whose calls
    /// would otherwise wait for their timeout (a mesh client calls it when
    /// a replica leaves the mesh). Calls over shared memory are not ended
    /// (a dead local service is seen by the channel itself). How many
    /// calls it ended.
    pub fn abort_calls(&self) -> usize {
        let conn = self.inner.connection();
        if conn.ours() {
            conn.transport.abort_calls()
        } else {
            0
        }
    }

    /// Closes every idle channel now; later calls fail. Calls in flight
    /// finish first. In a forked child the channels inherited from the
    /// parent stay open (they are the parent's).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let conn = self.inner.connection();
        if conn.ours() {
            conn.transport.close();
        }
    }
}

/// Looks up a live service in this user's registry.
pub fn lookup(name: &str) -> Result<Entry> {
    Registry::open(&registry::home_dir())?.lookup(name)
}

mod builder;
pub use builder::TypedConnect;

#[cfg(test)]
mod tests;
