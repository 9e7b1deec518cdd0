//! The dispatcher: from request bytes to response bytes.
//!
//! The endpoint table is built once and only read afterwards, so lookups
//! take no lock. Service instances live in a sharded LRU keyed by the raw
//! bytes of the constructor arguments: a hit hashes and compares bytes and
//! decodes nothing.

use crate::args::Args;
use crate::envelope::{self, RequestKind};
use crate::error::CallError;
use crate::service::{CtorFn, Endpoint, EndpointFuture, Reply, Service};
use lru::LruCache;
use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hasher;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What handling a request produced.
pub(crate) enum Outcome {
    /// The response is in the output buffer.
    Done,
    /// An `async` endpoint: await this, then write its result with
    /// [`finish_async`].
    Pending(EndpointFuture),
}

/// What a dispatcher remembers of one connection's last call, to skip
/// decoding the next one if it has the same shape (opaque to callers).
#[derive(Default)]
pub(crate) struct CallCache(Option<Box<dyn Any + Send>>);

/// A service with its type erased, as the transports see it.
pub(crate) trait Dispatch: Send + Sync + 'static {
    /// Handles one request; see [`Outcome`].
    fn begin(&self, request: &[u8], out: &mut Vec<u8>) -> Outcome {
        self.begin_cached(request, out, &mut CallCache::default())
    }
    /// Handles one request of a connection whose [`CallCache`] is `cache`.
    fn begin_cached(&self, request: &[u8], out: &mut Vec<u8>, cache: &mut CallCache) -> Outcome;
    /// The sorted endpoint names.
    fn endpoint_names(&self) -> &[String];
    /// Whether a token is required.
    fn requires_token(&self) -> bool;
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
        Ok(Err(e)) => envelope::encode_error(out, &e.kind, &e.message),
        Err(join) if join.is_panic() => {
            let msg = panic_message(&*join.into_panic());
            envelope::encode_error(out, "Panic", &msg)
        }
        Err(join) => envelope::encode_error(out, "Cancelled", &join.to_string()),
    }
}

pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "endpoint panicked".into()
    }
}

/// One shard: raw constructor bytes to instance.
type Shard<S> = Mutex<LruCache<Box<[u8]>, Arc<S>>>;

/// Instances per distinct constructor arguments, in LRU shards.
pub(crate) struct InstanceCache<S> {
    shards: Box<[Shard<S>]>,
    /// Bumped whenever an instance is evicted: a holder of an instance
    /// looked up at epoch E knows it is still cached while the epoch is E.
    epoch: AtomicU64,
}

impl<S> InstanceCache<S> {
    pub(crate) fn new(capacity: usize) -> InstanceCache<S> {
        let capacity = capacity.max(1);
        // Small caches get one shard, so that eviction is exactly LRU.
        let shards = (capacity / 8).clamp(1, 16);
        let per = NonZeroUsize::new(capacity.div_ceil(shards)).unwrap_or(NonZeroUsize::MIN);
        InstanceCache {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::new(per)))
                .collect(),
            epoch: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &[u8]) -> &Shard<S> {
        if self.shards.len() == 1 {
            return &self.shards[0];
        }
        let mut h = FastHasher::default();
        h.write(key);
        &self.shards[h.finish() as usize % self.shards.len()]
    }

    /// The instance for `key`, built by `create` on a miss. The lock is
    /// not held while constructing.
    pub(crate) fn get_or_create(
        &self,
        key: &[u8],
        create: impl FnOnce() -> Result<S, CallError>,
    ) -> Result<Arc<S>, CallError> {
        let shard = self.shard(key);
        if let Some(s) = lock(shard).get(key) {
            return Ok(s.clone());
        }
        let made = Arc::new(create()?);
        let mut guard = lock(shard);
        if let Some(s) = guard.get(key) {
            return Ok(s.clone()); // another thread built it meanwhile
        }
        if guard.push(key.into(), made.clone()).is_some() {
            // Release: a holder that sees the new epoch drops its instance.
            self.epoch.fetch_add(1, Ordering::Release);
        }
        Ok(made)
    }

    /// The eviction epoch (see the field).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks `key` as recently used, for a holder that calls its instance
    /// without looking it up each time.
    pub(crate) fn touch(&self, key: &[u8]) {
        let _ = lock(self.shard(key)).get(key);
    }
}

/// A poisoned shard only means a panic elsewhere; the LRU is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A small multiplicative hasher (the Fx/rustc scheme), for keys that come
/// from the same user's clients: fast on short keys, and the shard count is
/// small, so collision resistance against adversaries is not at stake
/// (the LRU shards themselves use hashbrown's seeded hasher).
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<V> = HashMap<String, V, std::hash::BuildHasherDefault<FastHasher>>;

/// The last call of a connection: the request bytes around its positional
/// arguments, and what they resolved to. A request with the same bytes
/// around its arguments (same endpoint, keyword arguments, constructor
/// arguments and token) resolves the same way, as long as the instance is
/// still cached (eviction epoch unchanged).
struct Shape<S> {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    /// Where the raw kwargs map lies in `suffix`.
    kwargs: std::ops::Range<usize>,
    endpoint_name: String,
    endpoint: Endpoint<S>,
    instance: Arc<S>,
    ctor_key: Vec<u8>,
    epoch: u64,
    hits: u32,
}

/// A cached call promotes its instance in the LRU this often, so that
/// recency stays close to true LRU.
const TOUCH_EVERY: u32 = 64;

/// The typed dispatcher of one service.
pub(crate) struct Dispatcher<S> {
    endpoints: FastMap<Endpoint<S>>,
    names: Vec<String>,
    ctor: Option<Arc<CtorFn<S>>>,
    instances: InstanceCache<S>,
    token: Option<String>,
}

impl<S: Send + Sync + 'static> Dispatcher<S> {
    pub(crate) fn new(service: Service<S>) -> Dispatcher<S> {
        let names = service.endpoint_names();
        Dispatcher {
            names,
            instances: InstanceCache::new(service.config.cache_capacity),
            token: service.config.token.clone(),
            ctor: service.ctor,
            endpoints: service.endpoints.into_iter().collect(),
        }
    }

    fn instance(&self, buf: &[u8], req: &envelope::Request<'_>) -> Result<Arc<S>, CallError> {
        let key = ctor_key(buf, req.ctor_args, req.ctor_kwargs);
        self.instances.get_or_create(&key, || {
            let ctor = self
                .ctor
                .as_ref()
                .ok_or_else(|| CallError::type_error("the service has no constructor"))?;
            let mut args = Args::new("__init__", req.ctor_args, req.ctor_kwargs)?;
            match catch_unwind(AssertUnwindSafe(|| ctor(&mut args))) {
                Ok(r) => r,
                Err(p) => Err(CallError::new("Panic", panic_message(&*p))),
            }
        })
    }

    /// The fast path: the request has the shape of the connection's last
    /// call. Returns `None` to take the full path.
    fn call_cached(
        &self,
        request: &[u8],
        out: &mut Vec<u8>,
        cache: &mut CallCache,
    ) -> Option<Result<Outcome, CallError>> {
        let shape = cache.0.as_mut()?.downcast_mut::<Shape<S>>()?;
        let (p, q) = (shape.prefix.len(), shape.suffix.len());
        if request.len() <= p + q
            || !request.starts_with(&shape.prefix)
            || !request.ends_with(&shape.suffix)
            || self.instances.epoch() != shape.epoch
        {
            return None;
        }
        let args = &request[p..request.len() - q];
        if crate::msgpack::value_len(args).ok()? != args.len()
            || crate::msgpack::array_header(args).is_none()
        {
            return None;
        }
        shape.hits = shape.hits.wrapping_add(1);
        if shape.hits % TOUCH_EVERY == 0 {
            self.instances.touch(&shape.ctor_key);
        }
        let kwargs = &shape.suffix[shape.kwargs.clone()];
        let mut bound = match Args::new(&shape.endpoint_name, args, kwargs) {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        Some(run_endpoint(
            &shape.endpoint,
            &shape.instance,
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
        let req =
            envelope::decode_request(request).map_err(|e| CallError::new("ProtocolError", e.0))?;
        if let Some(token) = &self.token {
            if !constant_time_eq(req.auth.unwrap_or("").as_bytes(), token.as_bytes()) {
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
        let endpoint = self.endpoints.get(req.endpoint).ok_or_else(|| {
            CallError::new("NotFound", format!("Endpoint '{}' not found", req.endpoint))
        })?;
        let epoch = self.instances.epoch();
        let instance = self.instance(request, &req)?;
        cache.0 = shape_of(request, &req, endpoint, &instance, epoch)
            .map(|s| Box::new(s) as Box<dyn Any + Send>);
        let mut args = Args::new(req.endpoint, req.args, req.kwargs)?;
        run_endpoint(endpoint, &instance, &mut args, out)
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

/// The [`Shape`] of a decoded call, if its positional arguments come
/// before its keyword arguments and the constructor sections (as every
/// client we know writes them). The epoch is the one read *before* the
/// instance was looked up, so an eviction in between invalidates it.
fn shape_of<S: Send + Sync + 'static>(
    request: &[u8],
    req: &envelope::Request<'_>,
    endpoint: &Endpoint<S>,
    instance: &Arc<S>,
    epoch: u64,
) -> Option<Shape<S>> {
    let base = request.as_ptr() as usize;
    let offset = |part: &[u8]| {
        let at = (part.as_ptr() as usize).checked_sub(base)?;
        (at + part.len() <= request.len()).then_some(at)
    };
    let args_at = offset(req.args)?;
    let args_end = args_at + req.args.len();
    let kwargs_at = offset(req.kwargs)?.checked_sub(args_end)?;
    let (ctor_a, ctor_k) = (offset(req.ctor_args)?, offset(req.ctor_kwargs)?);
    if ctor_a < args_end || ctor_k < args_end {
        return None;
    }
    Some(Shape {
        prefix: request[..args_at].to_vec(),
        suffix: request[args_end..].to_vec(),
        kwargs: kwargs_at..kwargs_at + req.kwargs.len(),
        endpoint_name: req.endpoint.to_owned(),
        endpoint: endpoint.clone(),
        instance: instance.clone(),
        ctor_key: ctor_key(request, req.ctor_args, req.ctor_kwargs).into_owned(),
        epoch,
        hits: 0,
    })
}

impl<S: Send + Sync + 'static> Dispatch for Dispatcher<S> {
    fn begin_cached(&self, request: &[u8], out: &mut Vec<u8>, cache: &mut CallCache) -> Outcome {
        out.clear();
        match self.call(request, out, cache) {
            Ok(o) => o,
            Err(e) => {
                out.clear();
                envelope::encode_error(out, &e.kind, &e.message);
                Outcome::Done
            }
        }
    }

    fn endpoint_names(&self) -> &[String] {
        &self.names
    }

    fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    fn authenticates(&self, request: &[u8]) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        envelope::decode_request(request)
            .is_ok_and(|req| constant_time_eq(req.auth.unwrap_or("").as_bytes(), token.as_bytes()))
    }
}

/// The bytes that identify a constructor argument set: the raw
/// `ctor_args` value, the `ctor_kwargs` key, the raw `ctor_kwargs` value.
/// Clients (ours and the original) write exactly that sequence, so on the
/// hot path the key is a borrowed slice of the request.
fn ctor_key<'a>(buf: &'a [u8], args: &'a [u8], kwargs: &'a [u8]) -> Cow<'a, [u8]> {
    const KEY: &[u8] = b"\xabctor_kwargs";
    let base = buf.as_ptr() as usize;
    let (a, k) = (args.as_ptr() as usize, kwargs.as_ptr() as usize);
    if a >= base && k >= base && k + kwargs.len() <= base + buf.len() {
        let (a_off, k_off) = (a - base, k - base);
        if a_off + args.len() + KEY.len() == k_off && &buf[a_off + args.len()..k_off] == KEY {
            return Cow::Borrowed(&buf[a_off..k_off + kwargs.len()]);
        }
    }
    Cow::Owned([args, KEY, kwargs].concat())
}

/// Compares without an early exit, so the time taken does not tell an
/// attacker how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = 0u8;
    for (i, &expected) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ expected;
    }
    diff == 0 && a.len() == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use crate::service::Reply;

    #[test]
    fn ctor_keys_agree_whether_borrowed_or_built() {
        let mut buf = Vec::new();
        let ctor = envelope::encode_ctor(&[0x90], &[0x81, 0xa1, b'k', 1]);
        envelope::encode_call(&mut buf, "e", &[0x90], &[0x80], &ctor, None);
        let req = envelope::decode_request(&buf).unwrap();
        let borrowed = ctor_key(&buf, req.ctor_args, req.ctor_kwargs);
        assert!(matches!(borrowed, Cow::Borrowed(_)));
        let built = ctor_key(&[], &[0x90], &[0x81, 0xa1, b'k', 1]);
        assert_eq!(borrowed, built);
    }

    #[test]
    fn lru_reuses_and_evicts() {
        let cache = InstanceCache::<u32>::new(2);
        let mut made = 0;
        let mut get = |k: &[u8]| {
            *cache
                .get_or_create(k, || {
                    made += 1;
                    Ok(made)
                })
                .unwrap()
        };
        assert_eq!(get(b"a"), 1);
        assert_eq!(get(b"a"), 1);
        assert_eq!(get(b"b"), 2);
        assert_eq!(get(b"c"), 3); // evicts a
        assert_eq!(get(b"a"), 4);
    }

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
        assert!(cache.0.is_some(), "the shape was remembered");
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

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
