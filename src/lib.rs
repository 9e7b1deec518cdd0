//! # MetaBridge
//!
//! Call code in another process as if it were local. A service is a struct
//! whose methods are endpoints; [`run`] starts it in a background daemon
//! process; clients anywhere on the machine find it by name in a shared
//! registry and call it through a proxy, over lock-free rings in shared
//! memory (or over TCP, for other hosts and for clients of the original
//! Python MetaBridge, whose wire protocol this crate speaks).
//!
//! ```no_run
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
mod daemon;
mod dispatch;
pub mod envelope;
mod error;
mod msgpack;
pub mod registry;
mod server;
mod service;
mod tcp;
mod transport;

pub use args::{Args, CallArgs, IntoArgs};
pub use client::{connect, lookup, to_msgpack, Client, Connect, TransportKind};
pub use daemon::{run, serve, DaemonHandle, DAEMON_ENV, STARTUP_TIMEOUT, STOP_TIMEOUT};
pub use error::{CallError, Error, Result};
pub use metabridge_macros::{endpoint, function, service};
pub use server::request_stop;
pub use service::{EndpointFuture, Reply, Service, ServiceConfig};

/// Re-exported for generated code and dynamic calls.
pub use rmpv;
/// Re-exported for generated code.
pub use serde;
