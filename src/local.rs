//! In-process access to the dispatcher, for micro benchmarks and tests:
//! the exact code a worker runs on a request, without a transport. Not a
//! stable API.

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
