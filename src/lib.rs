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

mod announce;
mod args;
mod blob;
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
mod helper_frame;
mod instrument;
mod lifecycle;
mod logger;
/// Measurement helpers of the `metabridge` tool and the benchmarks.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod measure;
mod mesh_agent;
mod mesh_relay;
mod msgpack;
mod out_of_line;
// The platform layer: the one module whose purpose is `unsafe` OS calls.
#[allow(unsafe_code)]
mod platform;
pub mod registry;
mod resolve;
mod server;
mod service;
pub mod stats;
#[cfg(test)]
mod test_support;
mod transport;
mod trust;
mod worker;

pub use announce::{
    require_secure_exposure, set_env_announcer, Announcement, Announcer, EnvAnnouncerFactory,
};
pub use args::{bytes, to_msgpack, Args, Bin, CallArgs, IntoArgs};
pub use blob::Blob;
pub use client::{connect, lookup, Client, Connect, TypedConnect};
pub use config::{ServiceConfig, TlsFiles, TlsPem, TransportKind};
pub use mesh_agent::{mesh_tool, AgentReport, MeshAgent, HEARTBEAT, MAX_REPORT, MESH_TOOL_ENV};
pub use mesh_relay::{
    read_frame as read_relay_frame, write_frame as write_relay_frame, MeshRelay, RelayAnswer,
    RelayCall, RelayError, RelaySetup, MAX_RELAY_FRAME,
};
/// TLS over TCP (feature `tls`): what a client trusts ([`tls::ClientTls`]),
/// what a service serves ([`tls::ServerTls`]), and why either failed.
#[cfg(feature = "tls")]
pub mod tls {
    pub use crate::config::client_tls as client_from_env;
    pub use metabridge_tcp::tls::{fingerprint, ClientTls, ServerTls, TlsConnector, TlsError};
}
pub use daemon::{
    run, serve, serve_forked_child, wait_forked_child, DaemonHandle, DAEMON_ENV,
    SHUTDOWN_TIMEOUT_EXIT, STARTUP_TIMEOUT, STOP_TIMEOUT,
};
pub use error::{
    CallError, Error, Failure, HandshakeError, NoSpace, PeerGone, ProtocolError, Refusal, Result,
    TimedOut,
};
pub use gc::{gc, GcReport};
pub use lifecycle::request_stop;
pub use metabridge_macros::{endpoint, function, service};
pub use service::{validate_service_name, EndpointFuture, Reply, Service, MAX_SERVICE_NAME_LEN};

/// Re-exported for generated code and dynamic calls.
pub use rmpv;
/// Re-exported for generated code.
pub use serde;

/// Support of the code `#[metabridge::service]` generates; not an API.
#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __private;

/// In-process access to the dispatcher, for micro benchmarks and tests.
#[doc(hidden)]
pub mod local;

/// Wrappers over crate-private decoders, for the fuzz targets.
#[doc(hidden)]
#[path = "fuzz_support.rs"]
pub mod __fuzz;
