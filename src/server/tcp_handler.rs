//! The TCP side of a service: frames from `metabridge-tcp`, answered by the
//! same dispatcher as the shared-memory workers.
//!
//! Sync endpoints block, so they run under `block_in_place`: the runtime
//! thread's other work (accepting, every other connection) moves to another
//! thread while the call keeps the thread it is on, which costs no thread
//! wakeup on the way to the endpoint (a `spawn_blocking` handoff would cost
//! two, each more than a small call itself). The handoff wakes a
//! blocking-pool thread per call, which costs throughput under load, but
//! running a call inline even while another runtime thread is free is not
//! safe: that thread may be asleep on a condition variable rather than on
//! the I/O driver, and then no one polls the sockets until the call ends.
//! At most
//! [`MAX_BLOCKING_CALLS`] run at once; further calls wait without holding
//! a thread.
//!
//! The server drops a call whose client closed its connection (see
//! `metabridge_tcp::server`): an `async` endpoint runs as a task of its
//! own, aborted when that happens, so a call that never completes does not
//! outlive its client. A sync endpoint cannot be interrupted: it runs to
//! its end, and its reply is then discarded with the connection.

use crate::dispatch::{finish_async, Dispatch, Outcome};
use crate::envelope;
use metabridge_tcp::{Handler, Server};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

/// Most sync endpoint calls running at once over TCP. Each holds a thread
/// of the runtime's blocking pool (512 by default), which also supplies the
/// threads that take over the runtime's work meanwhile; staying well below
/// its size keeps the runtime itself serving when many calls are slow.
pub(super) const MAX_BLOCKING_CALLS: usize = 256;

struct TcpHandler {
    dispatch: Arc<dyn Dispatch>,
    /// The service's message limit, for results.
    max_message: usize,
    /// Permits for sync calls in progress (see [`MAX_BLOCKING_CALLS`]).
    blocking: Semaphore,
    /// The live counters (they count error replies here).
    counters: Option<Arc<crate::stats::Counters>>,
}

impl TcpHandler {
    /// Begins the call off the runtime's threads (see the module docs).
    async fn begin(&self, request: Vec<u8>) -> (Outcome, Vec<u8>) {
        // Never closed, so `acquire` only fails if it were; then run anyway.
        let _permit = self.blocking.acquire().await.ok();
        let mut out = Vec::with_capacity(256);
        if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            let outcome = tokio::task::block_in_place(|| self.dispatch.begin(&request, &mut out));
            return (outcome, out);
        }
        // A current-thread runtime has no other thread to hand its work
        // to: the call moves to the blocking pool instead.
        let dispatch = Arc::clone(&self.dispatch);
        let joined = tokio::task::spawn_blocking(move || {
            let outcome = dispatch.begin(&request, &mut out);
            (outcome, out)
        })
        .await;
        joined.unwrap_or_else(|e| {
            // `begin` catches endpoint panics; this is a cancelled pool.
            let mut out = Vec::new();
            envelope::encode_error(&mut out, "Cancelled", &e.to_string());
            (Outcome::Done, out)
        })
    }
}

/// An `async` endpoint's task, aborted when the call awaiting it is
/// dropped (its client went away); aborting a task that has ended does
/// nothing.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Handler for TcpHandler {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move {
            let (outcome, mut out) = self.begin(request).await;
            if let Outcome::Pending(future) = outcome {
                // Its own task, so that a panic in it is caught as a join
                // error; aborted if this call is dropped first.
                let mut task = AbortOnDrop(tokio::spawn(future));
                let joined = (&mut task.0).await;
                finish_async(joined, &mut out);
            }
            crate::dispatch::outgoing_reply(&mut out, self.max_message, self.counters.as_deref());
            out
        })
    }

    fn not_tls(&self) -> Vec<u8> {
        let mut out = Vec::new();
        envelope::encode_error(
            &mut out,
            "ProtocolError",
            "this port speaks TLS only: connect with TLS (metabridge: Connect::tls, or METABRIDGE_TLS_CA / \
             METABRIDGE_TLS_PIN), or to the service's plaintext port if it has one",
        );
        out
    }

    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        envelope::encode_error(
            &mut out,
            "ProtocolError",
            &crate::Error::MessageTooLarge {
                len: declared,
                max: max as u64,
            }
            .to_string(),
        );
        out
    }

    fn requires_authentication(&self) -> bool {
        self.dispatch.requires_token()
    }

    fn authenticates(&self, request: &[u8]) -> bool {
        self.dispatch.authenticates(request)
    }

    fn unauthenticated_frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        envelope::encode_error(
            &mut out,
            "ProtocolError",
            &format!(
                "frame of {declared} bytes exceeds the maximum of {max} bytes for a connection \
                 that has not authenticated (send a request with the token first)"
            ),
        );
        out
    }
}

/// Binds the TCP listener of a service.
///
/// Its settings: [`crate::config::tcp_server`].
pub(super) async fn bind(
    addr: &str,
    dispatch: Arc<dyn Dispatch>,
    service: &crate::config::ServiceConfig,
    counters: Option<Arc<crate::stats::Counters>>,
    #[cfg(feature = "tls")] tls: Option<metabridge_tcp::tls::ServerTls>,
) -> std::io::Result<Server> {
    #[allow(unused_mut)]
    let mut config = crate::config::tcp_server(service);
    #[cfg(feature = "tls")]
    {
        config.tls = tls;
    }
    let handler = TcpHandler {
        dispatch,
        max_message: service.max_message,
        blocking: Semaphore::new(MAX_BLOCKING_CALLS),
        counters,
    };
    Server::bind(addr, config, Arc::new(handler)).await
}
