//! The dispatcher: from request bytes to response bytes, for one service.
//!
//! Invariants: the endpoint table is built once and only read afterwards,
//! so a lookup takes no lock; a request reaches an endpoint only after its
//! token was checked, on the full path or (through a [`CallCache`] shape
//! whose bytes include the token) on the fast path; a panic in a
//! constructor or an endpoint becomes a `Panic` error for that call and
//! never unwinds into a transport; a constructor that panicked is not run
//! again for the same arguments while its failure is cached.

use super::call_shape::{CallCache, Shape};
use super::ctor_key::{canonical_ctor_key, ctor_key};
use super::hash::FastHashMap;
use super::instances::{CtorFailure, Instance, InstanceCache};
use super::panic::panic_message;
use super::token;
use crate::args::Args;
use crate::envelope::{self, RequestKind};
use crate::error::CallError;
use crate::service::{CtorFn, Endpoint, EndpointFuture, Reply, Service};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// What handling a request produced.
pub(crate) enum Outcome {
    /// The response is in the output buffer.
    Done,
    /// An `async` endpoint: await this, then write its result with
    /// [`finish_async`].
    Pending(EndpointFuture),
}
/// A service with its type erased, as the transports see it.
pub(crate) trait Dispatch: Send + Sync + 'static {
    /// Handles one request; see [`Outcome`].
    fn begin(&self, request: &[u8], out: &mut Vec<u8>) -> Outcome {
        self.begin_cached(request, out, &mut CallCache::default())
    }
    /// Handles one request of a connection whose [`CallCache`] is `cache`.
    fn begin_cached(&self, request: &[u8], out: &mut Vec<u8>, cache: &mut CallCache) -> Outcome;
    /// Begins the call if that runs no sync code of the service's, so
    /// that it may begin on a runtime thread: an `async` endpoint of an
    /// instance already built (its future is returned, not run), the
    /// typed client's construct call for one, the list of endpoints (a
    /// new connection's greeting). `None` when it might block
    /// (a sync endpoint, a constructor to run), or when the request is
    /// anything else (`begin` then answers it).
    fn begin_nonblocking(&self, request: &[u8], out: &mut Vec<u8>) -> Option<Outcome>;
    /// The sorted endpoint names.
    fn endpoint_names(&self) -> &[String];
    /// Whether a token is required.
    fn requires_token(&self) -> bool;
    /// Whether any endpoint is `async`.
    fn has_async_endpoints(&self) -> bool;
    /// Whether `request` carries the token (true if none is required).
    /// Decodes the request, so it is for a TCP connection's first requests,
    /// not for every call.
    fn authenticates(&self, request: &[u8]) -> bool;
}

/// Writes the result of an awaited `async` endpoint (a panic inside it
/// arrives as a join error).
pub(crate) fn finish_async(
    result: Result<Result<Vec<u8>, CallError>, tokio::task::JoinError>,
    out: &mut Vec<u8>,
) {
    out.clear();
    match result {
        Ok(Ok(bytes)) => *out = bytes,
        Ok(Err(e)) => envelope::encode_call_error(out, &e),
        Err(join) if join.is_panic() => {
            let msg = panic_message(&*join.into_panic());
            envelope::encode_error(out, "Panic", &msg)
        }
        Err(join) => envelope::encode_error(out, "Cancelled", &join.to_string()),
    }
}

/// The endpoint name a typed client's `connect` calls to have its instance
/// built at once (a failing constructor then fails `connect`); a service's
/// own endpoint of that name wins.
pub(crate) const CONSTRUCT_ENDPOINT: &str = "__init__";

/// The typed dispatcher of one service.
pub(crate) struct Dispatcher<S> {
    endpoints: FastHashMap<String, Endpoint<S>>,
    names: Vec<String>,
    ctor: Option<Arc<CtorFn<S>>>,
    ctor_params: Option<Arc<[String]>>,
    service_name: String,
    instances: InstanceCache<S>,
    token: Option<String>,
    has_async: bool,
}

impl<S: Send + Sync + 'static> Dispatcher<S> {
    pub(crate) fn new(service: Service<S>) -> Dispatcher<S> {
        let names = service.endpoint_names();
        Dispatcher {
            names,
            instances: InstanceCache::new(
                service.config.cache_capacity,
                service.config.cache_key_bytes,
            ),
            token: service.config.token.clone(),
            has_async: service
                .endpoints
                .values()
                .any(|e| matches!(e, Endpoint::Async(_))),
            ctor: service.ctor,
            ctor_params: service.ctor_params,
            service_name: service.name,
            endpoints: service.endpoints.into_iter().collect(),
        }
    }

    fn instance(&self, buf: &[u8], req: &envelope::Request<'_>) -> Result<Instance<S>, CallError> {
        let key = ctor_key(buf, req.ctor_args, req.ctor_kwargs);
        self.instances.get_or_create(
            &key,
            || canonical_ctor_key(self.ctor_params.as_deref(), req.ctor_args, req.ctor_kwargs),
            || {
                let ctor = self.ctor.as_ref().ok_or_else(|| {
                    CtorFailure::Error(CallError::type_error(format!(
                        "service '{}' has no constructor",
                        self.service_name
                    )))
                })?;
                let mut args = Args::new("__init__", req.ctor_args, req.ctor_kwargs)
                    .map_err(CtorFailure::Error)?;
                construct(&**ctor, &mut args, &self.service_name)
            },
        )
    }

    /// The fast path: the request has the shape of the connection's last
    /// call. Returns `None` to take the full path.
    fn call_cached(
        &self,
        request: &[u8],
        out: &mut Vec<u8>,
        cache: &mut CallCache,
    ) -> Option<Result<Outcome, CallError>> {
        let shape = cache.shape_mut::<S>()?;
        let args = shape.args_in(request, &self.instances)?;
        shape.count_hit(&self.instances);
        let mut bound = match shape.bind(args) {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        Some(run_endpoint(
            &shape.endpoint,
            shape.instance.arc(),
            &mut bound,
            out,
        ))
    }

    fn call(
        &self,
        request: &[u8],
        out: &mut Vec<u8>,
        cache: &mut CallCache,
    ) -> Result<Outcome, CallError> {
        if let Some(done) = self.call_cached(request, out, cache) {
            return done;
        }
        self.call_full(request, out, cache)
    }

    /// The full path: decode, token, endpoint table, instance cache. Kept
    /// out of line so that the fast path above stays small.
    #[inline(never)]
    fn call_full(
        &self,
        request: &[u8],
        out: &mut Vec<u8>,
        cache: &mut CallCache,
    ) -> Result<Outcome, CallError> {
        let req =
            envelope::decode_request(request).map_err(|e| CallError::new("ProtocolError", e.0))?;
        if let Some(token) = &self.token {
            if !token::presents(req.auth, token) {
                return Err(CallError::new(
                    "Unauthorized",
                    "this service requires a valid token",
                ));
            }
        }
        if req.kind == RequestKind::ListEndpoints {
            envelope::encode_ok(out, &self.names)?;
            return Ok(Outcome::Done);
        }
        let Some(endpoint) = self.endpoints.get(req.endpoint) else {
            if req.endpoint == CONSTRUCT_ENDPOINT {
                self.instance(request, &req)?;
                envelope::encode_ok(out, &())?;
                return Ok(Outcome::Done);
            }
            return Err(CallError::new(
                "NotFound",
                format!("Endpoint '{}' not found", req.endpoint),
            ));
        };
        let epoch = self.instances.epoch();
        let instance = self.instance(request, &req)?;
        cache.remember(Shape::of(request, &req, endpoint, &instance, epoch));
        let mut args = Args::new(req.endpoint, req.args, req.kwargs)?;
        run_endpoint(endpoint, instance.arc(), &mut args, out)
    }
}

/// Runs a constructor, turning a panic into a remembered failure.
fn construct<S>(ctor: &CtorFn<S>, args: &mut Args<'_>, service: &str) -> Result<S, CtorFailure> {
    match catch_unwind(AssertUnwindSafe(|| ctor(args))) {
        Ok(r) => r.map_err(CtorFailure::Error),
        Err(p) => Err(CtorFailure::Panic(CallError::new(
            "Panic",
            format!(
                "the constructor of service '{service}' panicked for these constructor \
                 arguments: {}; it is not run again for them (every call with them \
                 gets this error) until the service restarts or the failure leaves the \
                 instance cache",
                panic_message(&*p)
            ),
        ))),
    }
}

/// Runs an endpoint, turning a panic into a `Panic` error.
fn run_endpoint<S>(
    endpoint: &Endpoint<S>,
    instance: &Arc<S>,
    args: &mut Args<'_>,
    out: &mut Vec<u8>,
) -> Result<Outcome, CallError> {
    match endpoint {
        Endpoint::Sync(f) => {
            match catch_unwind(AssertUnwindSafe(|| {
                f(instance, args, &mut Reply { buf: out })
            })) {
                Ok(r) => r.map(|()| Outcome::Done),
                Err(p) => Err(CallError::new("Panic", panic_message(&*p))),
            }
        }
        Endpoint::Async(f) => match catch_unwind(AssertUnwindSafe(|| f(instance.clone(), args))) {
            Ok(r) => r.map(Outcome::Pending),
            Err(p) => Err(CallError::new("Panic", panic_message(&*p))),
        },
    }
}

impl<S: Send + Sync + 'static> Dispatch for Dispatcher<S> {
    fn begin_cached(&self, request: &[u8], out: &mut Vec<u8>, cache: &mut CallCache) -> Outcome {
        out.clear();
        match self.call(request, out, cache) {
            Ok(o) => o,
            Err(e) => {
                out.clear();
                envelope::encode_call_error(out, &e);
                Outcome::Done
            }
        }
    }

    fn begin_nonblocking(&self, request: &[u8], out: &mut Vec<u8>) -> Option<Outcome> {
        let req = envelope::decode_request(request).ok()?;
        if let Some(token) = &self.token {
            if !token::presents(req.auth, token) {
                return None;
            }
        }
        if req.kind == RequestKind::ListEndpoints {
            out.clear();
            envelope::encode_ok(out, &self.names).ok()?;
            return Some(Outcome::Done);
        }
        let endpoint = match self.endpoints.get(req.endpoint) {
            Some(e @ Endpoint::Async(_)) => Some(e),
            None if req.endpoint == CONSTRUCT_ENDPOINT => None,
            _ => return None,
        };
        let key = ctor_key(request, req.ctor_args, req.ctor_kwargs);
        let instance = self
            .instances
            .get(&key, || {
                canonical_ctor_key(self.ctor_params.as_deref(), req.ctor_args, req.ctor_kwargs)
            })?
            .ok()?;
        out.clear();
        let Some(endpoint) = endpoint else {
            envelope::encode_ok(out, &()).ok()?;
            return Some(Outcome::Done);
        };
        let mut args = Args::new(req.endpoint, req.args, req.kwargs).ok()?;
        // The endpoint's own code runs only when the future is polled; an
        // error before that is left for `begin` to answer.
        run_endpoint(endpoint, instance.arc(), &mut args, out).ok()
    }

    fn endpoint_names(&self) -> &[String] {
        &self.names
    }

    fn has_async_endpoints(&self) -> bool {
        self.has_async
    }

    fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    fn authenticates(&self, request: &[u8]) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        envelope::decode_request(request).is_ok_and(|req| token::presents(req.auth, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A service whose instances count themselves and echo `base + x`.
    fn counting(capacity: usize, token: Option<&str>) -> Dispatcher<(u64, i64)> {
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let service = Service::<(u64, i64)>::new("count")
            .configure(|c| {
                c.cache_capacity = capacity;
                c.token = token.map(str::to_owned);
            })
            .constructor(|a: &mut Args<'_>| {
                let base: i64 = a.next("base")?;
                a.finish(&["base"])?;
                Ok((MADE.fetch_add(1, Ordering::SeqCst), base))
            })
            .endpoint(
                "add",
                |s: &(u64, i64), a: &mut Args<'_>, out: &mut Reply<'_>| {
                    let x: i64 = a.next("x")?;
                    a.finish(&["x"])?;
                    out.ok(&(s.0, s.1 + x))
                },
            );
        Dispatcher::new(service)
    }

    fn call(
        d: &Dispatcher<(u64, i64)>,
        cache: &mut CallCache,
        base: i64,
        x: i64,
        auth: Option<&str>,
    ) -> Result<(u64, i64), crate::Error> {
        let ctor = envelope::encode_ctor(
            &[0x90],
            &crate::to_msgpack(
                &[("base", base)]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap(),
        );
        let mut req = Vec::new();
        envelope::encode_call(
            &mut req,
            "add",
            &crate::to_msgpack(&(x,)).unwrap(),
            &[0x80],
            &ctor,
            auth,
        );
        let mut out = Vec::new();
        assert!(matches!(
            d.begin_cached(&req, &mut out, cache),
            Outcome::Done
        ));
        envelope::decode_result(&out)
    }

    #[test]
    fn repeated_calls_of_one_shape_take_the_fast_path_with_new_arguments() {
        let d = counting(8, None);
        let mut cache = CallCache::default();
        let (id, r) = call(&d, &mut cache, 10, 1, None).unwrap();
        assert_eq!(r, 11);
        assert!(cache.remembers_a_shape(), "the shape was remembered");
        for x in 0..100 {
            assert_eq!(call(&d, &mut cache, 10, x, None).unwrap(), (id, 10 + x));
        }
        // Another constructor argument: another instance, then back.
        let (other, r) = call(&d, &mut cache, 20, 1, None).unwrap();
        assert_eq!(r, 21);
        assert_ne!(other, id);
        assert_eq!(call(&d, &mut cache, 10, 5, None).unwrap(), (id, 15));
        // Wrong argument types still fail on the fast path.
        let mut req = Vec::new();
        let ctor = envelope::encode_ctor(
            &[0x90],
            &crate::to_msgpack(
                &[("base", 10)]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap(),
        );
        envelope::encode_call(
            &mut req,
            "add",
            &crate::to_msgpack(&("x",)).unwrap(),
            &[0x80],
            &ctor,
            None,
        );
        let mut out = Vec::new();
        d.begin_cached(&req, &mut out, &mut cache);
        assert!(
            matches!(envelope::decode_result::<(u64, i64)>(&out), Err(crate::Error::Remote { kind, .. }) if kind == "TypeError")
        );
    }

    #[test]
    fn an_eviction_invalidates_remembered_instances() {
        let d = counting(1, None);
        let (mut a, mut b) = (CallCache::default(), CallCache::default());
        let (first, _) = call(&d, &mut a, 1, 0, None).unwrap();
        assert_eq!(call(&d, &mut a, 1, 0, None).unwrap().0, first);
        call(&d, &mut b, 2, 0, None).unwrap(); // capacity 1: evicts base=1
        let (again, _) = call(&d, &mut a, 1, 0, None).unwrap();
        assert_ne!(again, first, "the evicted instance is not used again");
    }

    #[test]
    fn the_token_is_part_of_the_shape() {
        let d = counting(8, Some("t0k"));
        let mut cache = CallCache::default();
        assert_eq!(call(&d, &mut cache, 1, 1, Some("t0k")).unwrap().1, 2);
        assert_eq!(call(&d, &mut cache, 1, 2, Some("t0k")).unwrap().1, 3);
        assert!(
            matches!(call(&d, &mut cache, 1, 3, Some("nope")), Err(crate::Error::Remote { kind, .. }) if kind == "Unauthorized")
        );
        assert!(
            matches!(call(&d, &mut cache, 1, 3, None), Err(crate::Error::Remote { kind, .. }) if kind == "Unauthorized")
        );
    }

    /// A request for `add(x)` with raw constructor sections.
    fn raw_call(d: &Dispatcher<(u64, i64)>, ctor_args: &[u8], ctor_kwargs: &[u8]) -> (u64, i64) {
        let mut req = Vec::new();
        let ctor = envelope::encode_ctor(ctor_args, ctor_kwargs);
        envelope::encode_call(&mut req, "add", &[0x91, 0], &[0x80], &ctor, None);
        let mut out = Vec::new();
        d.begin(&req, &mut out);
        envelope::decode_result(&out).unwrap()
    }

    #[test]
    fn one_instance_per_bound_value_whatever_the_encoding() {
        let service = |params: Option<&[&str]>| {
            let d = counting(8, None);
            Dispatcher {
                ctor_params: params.map(|p| p.iter().map(|s| s.to_string()).collect()),
                ..d
            }
        };
        let d = service(Some(&["base"]));
        let by_name = raw_call(&d, &[0x90], &[0x81, 0xa4, b'b', b'a', b's', b'e', 7]);
        // Positionally, and with 7 as an int64 and a str8 key.
        let positional = raw_call(&d, &[0x91, 7], &[0x80]);
        let wide = raw_call(&d, &[0x91, 0xd3, 0, 0, 0, 0, 0, 0, 0, 7], &[0x80]);
        let str8 = raw_call(&d, &[0x90], &[0x81, 0xd9, 4, b'b', b'a', b's', b'e', 7]);
        assert_eq!(by_name.1, 7);
        assert_eq!(positional, by_name);
        assert_eq!(wide, by_name);
        assert_eq!(str8, by_name);
        assert_ne!(raw_call(&d, &[0x91, 8], &[0x80]).0, by_name.0);
        // Without parameter names: keyword order and widths still agree.
        assert_eq!(
            canonical_ctor_key(None, &[0x90], &[0x82, 0xa1, b'a', 1, 0xa1, b'b', 2]),
            canonical_ctor_key(None, &[0x90], &[0x82, 0xa1, b'b', 2, 0xa1, b'a', 0xcc, 1])
        );
        // Arguments that do not bind keep a key of their own bytes.
        let p = ["base".to_string()];
        assert_eq!(
            canonical_ctor_key(Some(&p), &[0x92, 1, 2], &[0x80])[0],
            0xc1
        );
        assert_eq!(
            canonical_ctor_key(
                Some(&p),
                &[0x91, 1],
                &[0x81, 0xa4, b'b', b'a', b's', b'e', 1]
            )[0],
            0xc1
        );
    }

    #[test]
    fn the_lru_counts_instances_not_encodings() {
        let d = Dispatcher {
            ctor_params: Some(["base".to_string()].into_iter().collect()),
            ..counting(2, None)
        };
        let a = raw_call(&d, &[0x91, 1], &[0x80]).0;
        let b = raw_call(&d, &[0x90], &[0x81, 0xa4, b'b', b'a', b's', b'e', 2]).0;
        // Another encoding of 1: a hit (recent), not a third instance.
        assert_eq!(
            raw_call(&d, &[0x90], &[0x81, 0xa4, b'b', b'a', b's', b'e', 1]).0,
            a
        );
        let c = raw_call(&d, &[0x91, 3], &[0x80]).0; // evicts b, the least recent
        assert_ne!(c, a);
        assert_eq!(raw_call(&d, &[0x91, 1], &[0x80]).0, a);
        assert_ne!(raw_call(&d, &[0x91, 2], &[0x80]).0, b, "b was evicted");
    }
}
