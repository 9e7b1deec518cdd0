//! MetaBridge's TCP transport.
//!
//! MetaBridge normally talks through shared memory; this crate is the
//! fallback used across machines or when shared memory is unavailable. It
//! moves *frames* and knows nothing of RPC semantics: encoding the msgpack
//! envelope inside each frame is the caller's business.
//!
//! # Wire format
//!
//! Every message is a frame: a 4-byte unsigned length in network byte order
//! (big-endian), then exactly that many bytes (one MessagePack value). One
//! request frame is answered by one response frame on the same connection,
//! in order; a connection carries many requests in sequence and is kept
//! open. Both sides set `TCP_NODELAY` (and `SO_KEEPALIVE`).
//!
//! # Pieces
//!
//! * [`frame`]: reading and writing frames, async and blocking, with a bound
//!   on the declared length that is checked before anything is allocated.
//! * [`server`]: a tokio [`Server`] that serves each connection in its own
//!   task and passes request payloads to a [`Handler`].
//! * [`pool`]: a blocking, thread-safe client [`Pool`] that keeps up to 16
//!   connections (by default) to one server.
//!
//! # Example
//!
//! ```
//! use std::future::Future;
//! use std::pin::Pin;
//! use std::sync::Arc;
//! use metabridge_tcp::{Handler, Pool, PoolConfig, Server, ServerConfig};
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
//!         Box::pin(async move { request })
//!     }
//!     fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
//!         format!("request of {declared} bytes is over the {max} byte limit").into_bytes()
//!     }
//! }
//!
//! // The server side runs on tokio ...
//! let rt = tokio::runtime::Runtime::new()?;
//! let server = rt.block_on(Server::bind("127.0.0.1:0", ServerConfig::default(), Arc::new(Echo)))?;
//! let addr = server.local_addr();
//! let stop = server.shutdown_handle();
//! let running = rt.spawn(server.run());
//!
//! // ... the client side is plain blocking code.
//! let pool = Pool::connect(addr, PoolConfig::default())?;
//! let mut response = Vec::new();
//! pool.call(b"\xa5hello", &mut response)?;
//! assert_eq!(response, b"\xa5hello");
//!
//! stop.shutdown();
//! rt.block_on(running)??;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
#![forbid(unsafe_code)]

pub mod frame;
mod peers;
mod poll;
pub mod pool;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;

pub use frame::{
    read_frame, read_frame_blocking, write_frame, write_frame_blocking, FrameError,
    DEFAULT_MAX_FRAME,
};
pub use peers::Connections;
pub use pool::{Pool, PoolConfig, PoolError};
pub use server::{Handler, Monitor, Server, ServerConfig, ShutdownHandle, Stopped};
