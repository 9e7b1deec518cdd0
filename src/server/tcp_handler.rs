//! The TCP side of a service: frames from `metabridge-tcp`, answered by the
//! same dispatcher as the shared-memory workers.
//!
//! Sync endpoints block, so every call begins on the service's own pool
//! of call threads (`call_threads.rs`), never on a runtime thread: a slow
//! endpoint holds one of those, while the runtime goes on accepting and
//! serving every other connection. At most
//! [`ServiceConfig::tcp_call_threads`](crate::config::ServiceConfig::tcp_call_threads)
//! calls run at once; further calls wait in the pool's queue without
//! holding a thread. Under load, a fast call costs a queue push to a pool
//! thread that is polling for it, while the runtime thread serves other
//! connections. A call that is the only one in progress runs on its
//! runtime thread instead, in a slot of the pool, under `block_in_place`
//! (the runtime's other work moves to another thread): a lone client pays
//! no handoff.
//!
//! What runs no sync code of the service's begins on the runtime and needs
//! no call thread (`Dispatch::begin_nonblocking`): an `async` endpoint of
//! an instance already built, a typed client's construct call for one, and
//! a new connection's greeting.
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
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::call_threads::CallThreads;

struct TcpHandler {
    dispatch: Arc<dyn Dispatch>,
    /// The service's message limit, for results.
    max_message: usize,
    /// Whether the service has `async` endpoints, which may begin on the
    /// runtime (else nothing is decoded for it: every call is sync).
    nonblocking: bool,
    /// Where calls begin (see the module docs).
    calls: CallThreads,
    /// Calls begun and not yet answered by the pool; counts no data, so
    /// `Relaxed`.
    in_flight: AtomicUsize,
    /// The live counters (they count error replies here).
    counters: Option<Arc<crate::stats::Counters>>,
}

impl TcpHandler {
    /// Begins the call on a pool thread (see the module docs).
    async fn begin(&self, request: Vec<u8>) -> (Outcome, Vec<u8>) {
        if self.nonblocking {
            let mut out = Vec::new();
            if let Some(begun) = self.dispatch.begin_nonblocking(&request, &mut out) {
                return (begun, out);
            }
        }
        let alone = self.in_flight.fetch_add(1, Relaxed) == 0;
        let _counted = InFlight(&self.in_flight);
        if alone && Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
            // Nothing else for this server to do meanwhile: the call runs
            // here, in a slot of the pool, the runtime's other work moved
            // to another thread (`block_in_place`), so that a lone client
            // pays no handoff to a pool thread and back.
            let here = self.calls.run_here(|| {
                tokio::task::block_in_place(|| {
                    let mut out = Vec::with_capacity(256);
                    let outcome = self.dispatch.begin(&request, &mut out);
                    (outcome, out)
                })
            });
            if let Ok(begun) = here {
                return begun;
            }
        }
        let dispatch = Arc::clone(&self.dispatch);
        let begun = self.calls.run(move || {
            let mut out = Vec::with_capacity(256);
            let outcome = dispatch.begin(&request, &mut out);
            (outcome, out)
        });
        begun.await.unwrap_or_else(|_| lost_call())
    }
}

/// The reply when the pool lost a call: its job panicked outside the
/// dispatcher (which catches endpoint panics), or no thread could start.
fn lost_call() -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    envelope::encode_error(
        &mut out,
        "Cancelled",
        "the service could not run this call: no thread for sync calls (see its log)",
    );
    (Outcome::Done, out)
}

/// Counts a call in [`TcpHandler::in_flight`] until dropped (also when
/// the call is, with its client).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
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
        nonblocking: dispatch.has_async_endpoints(),
        dispatch,
        max_message: service.max_message,
        calls: CallThreads::new(service.tcp_call_threads, "metabridge-call"),
        in_flight: AtomicUsize::new(0),
        counters,
    };
    Server::bind(addr, config, Arc::new(handler)).await
}
