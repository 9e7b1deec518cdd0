//! # MetaBridge
//!
//! Call code in another process as if it were local. A service is a struct
//! whose methods are endpoints; [`run`] starts it in a background daemon
//! process; clients anywhere on the machine find it by name in a shared
//! registry and call it through a proxy, over lock-free rings in shared
//! memory (or over TCP, for other hosts and for clients of the original
//! Python MetaBridge, whose wire protocol this crate speaks).
//!
//! ```
//! # let home = format!("/dev/shm/mb-doc-crate-{}", std::process::id());
//! # std::env::set_var("METABRIDGE_HOME", &home);
//! use metabridge::service;
//!
//! pub struct Demo { greeting: String }
//!
//! #[service(name = "doc-demo")]
//! impl Demo {
//!     pub fn new(greeting: String) -> Self { Demo { greeting } }
//!
//!     #[metabridge::function]
//!     pub fn get(&self, who: String) -> String { format!("{} {who}", self.greeting) }
//! }
//!
//! let daemon = Demo::run()?;
//! let client = DemoClient::connect("Olá,")?;
//! assert_eq!(client.get("mundo!")?, "Olá, mundo!");
//! daemon.stop()?;
//! # std::fs::remove_dir_all(&home).ok();
//! # Ok::<(), metabridge::Error>(())
//! ```
//!
//! The path of one call, top to bottom: [`Client::call`] → envelope
//! ([`envelope::encode_call`]) → transport (a `metabridge_shm::Channel` or
//! a `metabridge_tcp::Pool`) → the service's worker → dispatcher (endpoint
//! table, instance cache) → endpoint → response envelope → back.
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
// `unsafe` lives in the platform layer (`platform.rs`: every raw OS call,
// with its SAFETY argument) and in two hot-path pieces that are allowed
// item by item: the client's atomic connection swap and the worker's
// `UnsafeCell` core. Anywhere else, `unsafe` fails to compile.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod args;
// Exempt: the client's `AtomicPtr` connection swap (one load per call,
// no lock) holds `unsafe` blocks, each with its SAFETY comment.
#[allow(unsafe_code)]
mod client;
mod config;
mod control;
mod daemon;
mod dispatch;
pub mod envelope;
mod error;
mod gc;
mod instrument;
mod logger;
/// Measurement helpers of the `metabridge` tool and the benchmarks.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod measure;
mod msgpack;
// The platform layer: the one module whose purpose is `unsafe` OS calls.
#[allow(unsafe_code)]
mod platform;
pub mod registry;
mod server;
mod service;
pub mod stats;
mod tcp;
mod transport;
mod worker;

pub use args::{Args, Bin, CallArgs, IntoArgs};
pub use client::{connect, lookup, to_msgpack, Client, Connect, TransportKind};
pub use config::ServiceConfig;
pub use daemon::{
    run, serve, serve_forked_child, wait_forked_child, DaemonHandle, DAEMON_ENV,
    SHUTDOWN_TIMEOUT_EXIT, STARTUP_TIMEOUT, STOP_TIMEOUT,
};
pub use error::{
    CallError, Error, HandshakeError, NoSpace, PeerGone, ProtocolError, Refusal, Result, TimedOut,
};
pub use gc::{gc, GcReport};
pub use metabridge_macros::{endpoint, function, service};
pub use server::request_stop;
pub use service::{validate_service_name, EndpointFuture, Reply, Service, MAX_SERVICE_NAME_LEN};

/// Re-exported for generated code and dynamic calls.
pub use rmpv;
/// Re-exported for generated code.
pub use serde;

/// Support of the code `#[metabridge::service]` generates; not an API.
#[doc(hidden)]
pub mod __private {
    pub use crate::args::Bin;
    use crate::{Args, CallError};

    /// How the macro builds a service without `fn new`: `Default`, with a
    /// message that says what to add when there is none.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` has no constructor for `#[metabridge::service]`",
        label = "add `pub fn new(..) -> Self` to the `#[metabridge::service]` impl block, or implement `Default` for `{Self}`"
    )]
    pub trait DefaultConstructor: Sized {
        /// `Default::default()`.
        fn construct() -> Self;
    }

    impl<T: Default> DefaultConstructor for T {
        fn construct() -> Self {
            T::default()
        }
    }

    /// A type an endpoint or constructor parameter can have: one that
    /// deserializes, with a message that says so when it does not.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be a parameter of a `#[metabridge::service]`: arguments are deserialized from MessagePack",
        label = "`{Self}` does not implement `serde::Deserialize`",
        note = "derive it: `#[derive(serde::Deserialize)]` on `{Self}` (with serde's `derive` feature), or take a type that implements it"
    )]
    pub trait Param: Sized {
        /// Binds the next parameter, named `name`.
        fn next(args: &mut Args<'_>, name: &str) -> Result<Self, CallError>;
    }

    impl<T: serde::de::DeserializeOwned> Param for T {
        #[inline]
        fn next(args: &mut Args<'_>, name: &str) -> Result<Self, CallError> {
            args.next(name)
        }
    }

    /// Asks the service to build the instance of `client`'s constructor
    /// arguments now, so that a failing constructor fails `connect`. A
    /// service that does not know the request (the original Python one)
    /// answers `NotFound`: then the first call will tell.
    pub fn construct(client: &crate::Client) -> crate::Result<()> {
        match client.call::<crate::rmpv::Value>(crate::dispatch::CONSTRUCT_ENDPOINT, ()) {
            Err(crate::Error::Remote { kind, .. }) if kind == "NotFound" => Ok(()),
            other => other.map(drop),
        }
    }
}

/// In-process access to the dispatcher, for micro benchmarks and tests:
/// the exact code a worker runs on a request, without a transport.
#[doc(hidden)]
pub mod local {
    use crate::dispatch::{finish_async, CallCache, Dispatch, Dispatcher, Outcome};
    use crate::service::Service;
    use std::cell::RefCell;

    /// A service's dispatcher, called directly, as one connection.
    pub struct LocalDispatcher(
        Box<dyn Dispatch>,
        tokio::runtime::Runtime,
        RefCell<CallCache>,
    );

    impl LocalDispatcher {
        /// Builds the dispatcher of `service`.
        pub fn new<S: Send + Sync + 'static>(service: Service<S>) -> LocalDispatcher {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            LocalDispatcher(Box::new(Dispatcher::new(service)), rt, RefCell::default())
        }

        /// Handles one encoded request as the next call of this connection
        /// (so a request shaped like the last one takes the fast path); the
        /// encoded response is in `out`.
        pub fn handle(&self, request: &[u8], out: &mut Vec<u8>) {
            let outcome = self.0.begin_cached(request, out, &mut self.2.borrow_mut());
            self.finish(outcome, out);
        }

        /// Handles one encoded request with nothing remembered of earlier
        /// calls (the full path: decode, endpoint table, instance LRU).
        pub fn handle_fresh(&self, request: &[u8], out: &mut Vec<u8>) {
            let outcome = self.0.begin(request, out);
            self.finish(outcome, out);
        }

        fn finish(&self, outcome: Outcome, out: &mut Vec<u8>) {
            if let Outcome::Pending(f) = outcome {
                let joined = self.1.block_on(self.1.spawn(f));
                finish_async(joined, out);
            }
        }
    }
}

/// Thin wrappers over crate-private decoders, for the cargo-fuzz targets in
/// `fuzz/` (which can only reach public items). Not a stable API: names and
/// signatures follow the internals and may change in any release.
#[doc(hidden)]
pub mod __fuzz {
    /// The byte length of the one MessagePack value at the start of `buf`
    /// (`msgpack::value_len`, the skipper every request decode relies on).
    pub fn value_len(buf: &[u8]) -> crate::Result<usize> {
        crate::msgpack::value_len(buf)
    }

    /// `msgpack::array_header`: element count and the bytes after the header.
    pub fn array_header(buf: &[u8]) -> Option<(u32, &[u8])> {
        crate::msgpack::array_header(buf)
    }

    /// `msgpack::map_header`: entry count and the bytes after the header.
    pub fn map_header(buf: &[u8]) -> Option<(u32, &[u8])> {
        crate::msgpack::map_header(buf)
    }

    /// `msgpack::read_str`: a UTF-8 string and the bytes after it.
    pub fn read_str(buf: &[u8]) -> Option<(&str, &[u8])> {
        crate::msgpack::read_str(buf)
    }
}
