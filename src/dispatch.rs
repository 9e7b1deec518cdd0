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
use std::sync::{Arc, Mutex};

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
    fn begin(&self, request: &[u8], out: &mut Vec<u8>) -> Outcome;
    /// The sorted endpoint names.
    fn endpoint_names(&self) -> &[String];
    /// Whether a token is required.
    fn requires_token(&self) -> bool;
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
        guard.put(key.into(), made.clone());
        Ok(made)
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

    fn call(&self, request: &[u8], out: &mut Vec<u8>) -> Result<Outcome, CallError> {
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
        let instance = self.instance(request, &req)?;
        let mut args = Args::new(req.endpoint, req.args, req.kwargs)?;
        match endpoint {
            Endpoint::Sync(f) => {
                match catch_unwind(AssertUnwindSafe(|| {
                    f(&instance, &mut args, &mut Reply { buf: out })
                })) {
                    Ok(r) => r.map(|()| Outcome::Done),
                    Err(p) => Err(CallError::new("Panic", panic_message(&*p))),
                }
            }
            Endpoint::Async(f) => {
                match catch_unwind(AssertUnwindSafe(|| f(instance.clone(), &mut args))) {
                    Ok(r) => r.map(Outcome::Pending),
                    Err(p) => Err(CallError::new("Panic", panic_message(&*p))),
                }
            }
        }
    }
}

impl<S: Send + Sync + 'static> Dispatch for Dispatcher<S> {
    fn begin(&self, request: &[u8], out: &mut Vec<u8>) -> Outcome {
        out.clear();
        match self.call(request, out) {
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

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
