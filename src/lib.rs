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
#![warn(clippy::undocumented_unsafe_blocks)]

mod args;
mod client;
mod control;
mod daemon;
mod dispatch;
pub mod envelope;
mod error;
mod gc;
mod instrument;
mod logger;
mod msgpack;
pub mod registry;
mod server;
mod service;
pub mod stats;
mod tcp;
mod transport;
mod worker;

pub use args::{Args, CallArgs, IntoArgs};
pub use client::{connect, lookup, to_msgpack, Client, Connect, TransportKind};
pub use daemon::{
    run, serve, DaemonHandle, DAEMON_ENV, SHUTDOWN_TIMEOUT_EXIT, STARTUP_TIMEOUT, STOP_TIMEOUT,
};
pub use error::{CallError, Error, Result};
pub use gc::{gc, GcReport};
pub use metabridge_macros::{endpoint, function, service};
pub use server::request_stop;
pub use service::{EndpointFuture, Reply, Service, ServiceConfig};

/// Re-exported for generated code and dynamic calls.
pub use rmpv;
/// Re-exported for generated code.
pub use serde;

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
