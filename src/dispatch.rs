//! The dispatcher: from request bytes to response bytes.
//!
//! The endpoint table is built once and only read afterwards, so lookups
//! take no lock. Service instances live in a sharded LRU keyed by the
//! constructor arguments bound to the constructor's parameters, reached
//! first through aliases keyed by the raw bytes of the constructor
//! sections: a hit hashes and compares bytes and decodes nothing (see
//! [`InstanceCache`]).

use crate::args::Args;
use crate::envelope::{self, RequestKind};
use crate::error::CallError;
use crate::service::{CtorFn, Endpoint, EndpointFuture, Reply, Service};
use lru::LruCache;
use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

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

/// The endpoint name a typed client's `connect` calls to have its instance
/// built at once (a failing constructor then fails `connect`); a service's
/// own endpoint of that name wins.
pub(crate) const CONSTRUCT_ENDPOINT: &str = "__init__";

/// A shared service instance whose release never unwinds into the
/// runtime: the user's `Drop` may panic, and the last handle to an
/// instance is let go wherever a call or an eviction happens to end (a
/// worker's loop, the TCP server, an eviction, shutdown). A panic there is
/// caught and logged; the instance is gone either way.
pub(crate) struct Instance<S>(Option<Arc<S>>);

impl<S> Instance<S> {
    pub(crate) fn new(value: S) -> Instance<S> {
        Instance(Some(Arc::new(value)))
    }

    /// The instance, for an endpoint.
    pub(crate) fn arc(&self) -> &Arc<S> {
        // Always Some: only `drop` takes it.
        self.0
            .as_ref()
            .expect("an instance is present until dropped")
    }
}

impl<S> Clone for Instance<S> {
    fn clone(&self) -> Self {
        Instance(self.0.clone())
    }
}

impl<S> std::ops::Deref for Instance<S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.arc()
    }
}

impl<S> Drop for Instance<S> {
    fn drop(&mut self) {
        if let Some(last) = self.0.take() {
            if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(last))) {
                tracing::error!(
                    target: "metabridge::service",
                    "an instance's Drop panicked (ignored): {}",
                    panic_message(&*p)
                );
            }
        }
    }
}

/// One cached instance, or the panic its constructor raised.
pub(crate) struct Entry<S> {
    value: Result<Instance<S>, CallError>,
    /// False once evicted: an alias still pointing here is stale.
    live: AtomicBool,
    /// When it was last used, on the cache's clock (see
    /// `InstanceCache::clock`): eviction takes the least recently used.
    stamp: AtomicU64,
}

impl<S> Entry<S> {
    fn new(value: Result<Instance<S>, CallError>) -> Entry<S> {
        Entry {
            value,
            live: AtomicBool::new(true),
            stamp: AtomicU64::new(0),
        }
    }

    fn value(&self) -> Result<Instance<S>, CallError> {
        self.value.clone()
    }
}

/// Raw constructor bytes → entry (an alias: does not own it), and the
/// bytes of the keys it holds.
struct Aliases<S> {
    lru: LruCache<Box<[u8]>, Weak<Entry<S>>>,
    bytes: usize,
}

/// Canonical constructor arguments → entry (owns it), and the bytes of
/// the keys it holds. (A plain map: recency is in the entries' stamps.)
struct Values<S> {
    map: HashMap<Vec<u8>, Arc<Entry<S>>, BuildHasherDefault<FastHasher>>,
    bytes: usize,
}

type AliasShard<S> = Mutex<Aliases<S>>;
type ValueShard<S> = Mutex<Values<S>>;

/// How a constructor failed.
pub(crate) enum CtorFailure {
    /// A panic: remembered for these arguments (the constructor is not run
    /// again for them until the failure is evicted).
    Panic(CallError),
    /// An error it returned (or a binding error): not remembered, so the
    /// next call tries again.
    Error(CallError),
}

/// Instances, one per distinct constructor arguments, in two levels:
///
/// 1. by the raw bytes of the request's constructor sections, an alias
///    LRU: a hit hashes and compares bytes and decodes nothing;
/// 2. on a miss, by the arguments *bound to the constructor's parameters*
///    and canonically re-encoded (see [`canonical_ctor_key`]), the LRU that
///    owns the instances; a hit there adds an alias.
///
/// So one value has one instance however it is encoded (positionally by
/// Python, by keyword by the typed client), and the capacity counts
/// instances, not encodings. Recency: each use stamps the entry with a
/// clock, and a full shard evicts its entry with the oldest stamp. The
/// clock advances by 2 at each use through the second level (rare: a new
/// encoding or instance); an alias hit only reads it and stamps "now + 1",
/// so the hot path takes no second lock and writes no shared counter. This
/// is LRU per shard, except that entries used only through aliases since
/// the last second-level use tie (any of them may go first).
pub(crate) struct InstanceCache<S> {
    aliases: Box<[AliasShard<S>]>,
    values: Box<[ValueShard<S>]>,
    /// Most entries a value shard holds.
    per_shard: usize,
    /// Most key bytes one shard of each level holds
    /// (`ServiceConfig::cache_key_bytes` split between shards and levels).
    key_bytes_per_shard: usize,
    /// Advances by 2 at each use through the second level (see above).
    clock: AtomicU64,
    /// Bumped whenever an instance is evicted: a holder of an instance
    /// looked up at epoch E knows it is still cached while the epoch is E.
    epoch: AtomicU64,
}

impl<S> InstanceCache<S> {
    pub(crate) fn new(capacity: usize, key_bytes: usize) -> InstanceCache<S> {
        let capacity = capacity.max(1);
        // Small caches get one shard, so that eviction is exactly LRU.
        let shards = (capacity / 8).clamp(1, 16);
        let per = NonZeroUsize::new(capacity.div_ceil(shards)).unwrap_or(NonZeroUsize::MIN);
        InstanceCache {
            // Room for two encodings of each instance (keyword and positional).
            aliases: (0..shards)
                .map(|_| {
                    Mutex::new(Aliases {
                        lru: LruCache::new(
                            per.saturating_mul(NonZeroUsize::MIN.saturating_add(1)), // 2 x per
                        ),
                        bytes: 0,
                    })
                })
                .collect(),
            values: (0..shards)
                .map(|_| {
                    Mutex::new(Values {
                        map: HashMap::with_capacity_and_hasher(
                            per.get().min(1024),
                            BuildHasherDefault::default(),
                        ),
                        bytes: 0,
                    })
                })
                .collect(),
            per_shard: per.get(),
            key_bytes_per_shard: key_bytes / 2 / shards,
            clock: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    /// Stamps a use through the second level: a tick of its own.
    fn mark_used(&self, entry: &Entry<S>) {
        let now = self.clock.fetch_add(2, Ordering::Relaxed) + 2;
        entry.stamp.store(now, Ordering::Relaxed);
    }

    /// Stamps a use through an alias: after every second-level use so far.
    fn mark_alias_used(&self, entry: &Entry<S>) {
        let now = self.clock.load(Ordering::Relaxed) + 1;
        if entry.stamp.load(Ordering::Relaxed) != now {
            entry.stamp.store(now, Ordering::Relaxed);
        }
    }

    fn shard<'a, T>(shards: &'a [T], key: &[u8]) -> &'a T {
        if shards.len() == 1 {
            return &shards[0];
        }
        let mut h = FastHasher::default();
        h.write(key);
        // The high bits: the maps within a shard hash the same keys with
        // the same hasher and index by the low bits.
        &shards[(h.finish() >> 48) as usize % shards.len()]
    }

    /// The live entry aliased by `raw`, marked used.
    fn alias(&self, raw: &[u8]) -> Option<Arc<Entry<S>>> {
        let mut shard = lock(Self::shard(&self.aliases, raw));
        let entry = shard.lru.get(raw)?.upgrade();
        match entry {
            Some(e) if e.live.load(Ordering::Acquire) => {
                self.mark_alias_used(&e);
                Some(e)
            }
            _ => {
                if shard.lru.pop(raw).is_some() {
                    shard.bytes -= raw.len();
                }
                None
            }
        }
    }

    /// Adds an alias, within the shard's key bytes: least recently used
    /// aliases go first, and a key larger than the whole share gets none
    /// (the second level still finds its entry).
    fn add_alias(&self, raw: &[u8], entry: &Arc<Entry<S>>) {
        if raw.len() > self.key_bytes_per_shard {
            return;
        }
        let mut shard = lock(Self::shard(&self.aliases, raw));
        let weak = Arc::downgrade(entry);
        if let Some(kept) = shard.lru.get_mut(raw) {
            *kept = weak;
            return;
        }
        while shard.bytes + raw.len() > self.key_bytes_per_shard {
            match shard.lru.pop_lru() {
                Some((k, _)) => shard.bytes -= k.len(),
                None => break,
            }
        }
        shard.bytes += raw.len();
        if let Some((k, _)) = shard.lru.push(raw.into(), weak) {
            shard.bytes -= k.len(); // pushed out by the count
        }
    }

    /// The instance for the constructor arguments whose raw bytes are
    /// `raw`: an alias hit, else the entry of `canonical()` (a key of
    /// the bound arguments), else one built by `create`. No lock is held
    /// while canonicalising or constructing.
    pub(crate) fn get_or_create(
        &self,
        raw: &[u8],
        canonical: impl FnOnce() -> Vec<u8>,
        create: impl FnOnce() -> Result<S, CtorFailure>,
    ) -> Result<Instance<S>, CallError> {
        if let Some(e) = self.alias(raw) {
            return e.value();
        }
        let key = canonical();
        let shard = Self::shard(&self.values, &key);
        let found = lock(shard).map.get(key.as_slice()).cloned();
        if let Some(e) = found {
            self.mark_used(&e);
            self.add_alias(raw, &e);
            return e.value();
        }
        let made = match create() {
            Ok(s) => Arc::new(Entry::new(Ok(Instance::new(s)))),
            Err(CtorFailure::Error(e)) => return Err(e),
            Err(CtorFailure::Panic(e)) => Arc::new(Entry::new(Err(e))),
        };
        let mut evicted = Vec::new();
        let entry = {
            let mut guard = lock(shard);
            if let Some(e) = guard.map.get(key.as_slice()) {
                e.clone() // another thread built it meanwhile
            } else {
                // Room by count (one in, at most one out) and by key bytes
                // (as many out as it takes; the new key stays even if it
                // alone is over the share).
                while !guard.map.is_empty()
                    && (guard.map.len() >= self.per_shard
                        || guard.bytes + key.len() > self.key_bytes_per_shard)
                {
                    let stamp = |e: &Arc<Entry<S>>| e.stamp.load(Ordering::Relaxed);
                    let oldest = guard.map.values().map(stamp).min();
                    // Stamps are unique outside of alias-only ties: remove
                    // the first entry with the oldest one (no key to copy).
                    let mut freed = 0;
                    let mut out = None;
                    guard.map.retain(|k, e| {
                        if out.is_none() && Some(stamp(e)) == oldest {
                            e.live.store(false, Ordering::Release);
                            out = Some(e.clone());
                            freed = k.len();
                            return false;
                        }
                        true
                    });
                    guard.bytes -= freed;
                    evicted.extend(out);
                }
                self.mark_used(&made);
                guard.bytes += key.len();
                guard.map.insert(key, made.clone());
                made
            }
        };
        if !evicted.is_empty() {
            // Release: a holder that sees the new epoch drops its instance.
            self.epoch.fetch_add(1, Ordering::Release);
        }
        drop(evicted); // instances dropped outside the lock (never unwinding)
        self.add_alias(raw, &entry);
        entry.value()
    }

    /// The eviction epoch (see the field).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks the instance aliased by `raw` as recently used, for a holder
    /// that calls its instance without looking it up each time.
    pub(crate) fn touch(&self, raw: &[u8]) {
        let _ = self.alias(raw);
    }
}

/// The key of the second level of the [`InstanceCache`]: the constructor
/// arguments bound to `params` (positional first, then by name) and
/// re-encoded canonically (integers and headers in their shortest form,
/// map entries sorted), as a MessagePack array in parameter order; so
/// `("a", 1)`, `(prefix="a", scale=1)` and `("a", scale=1)` are one key.
/// Without parameter names, the positional array and the keyword map
/// (sorted). Arguments that do not bind (missing, unknown, too many, not
/// MessagePack) give a key of their raw bytes: the constructor will reject
/// them anyway.
pub(crate) fn canonical_ctor_key(params: Option<&[String]>, args: &[u8], kwargs: &[u8]) -> Vec<u8> {
    bound_key(params, args, kwargs).unwrap_or_else(|| {
        let mut raw = vec![0xc1]; // never the first byte of a bound key
        raw.extend_from_slice(args);
        raw.extend_from_slice(kwargs);
        raw
    })
}

fn bound_key(params: Option<&[String]>, args: &[u8], kwargs: &[u8]) -> Option<Vec<u8>> {
    use crate::msgpack::{array_header, map_header, read_str, split_value};
    let whole = |b: &[u8]| crate::msgpack::value_len(b).ok() == Some(b.len());
    if !whole(args) || !whole(kwargs) {
        return None;
    }
    let (n_args, mut positional) = array_header(args)?;
    let (n_kwargs, mut named) = map_header(kwargs)?;
    let mut out = Vec::with_capacity(args.len() + kwargs.len());
    match params {
        Some(params) => {
            if n_args as usize > params.len() {
                return None;
            }
            let mut bound: Vec<Option<&[u8]>> = vec![None; params.len()];
            for slot in bound.iter_mut().take(n_args as usize) {
                let (value, rest) = split_value(positional).ok()?;
                *slot = Some(value);
                positional = rest;
            }
            for _ in 0..n_kwargs {
                let (key, rest) = read_str(named)?;
                let (value, rest) = split_value(rest).ok()?;
                named = rest;
                let i = params.iter().position(|p| p == key)?;
                if bound[i].replace(value).is_some() {
                    return None; // given twice
                }
            }
            let _ = rmp::encode::write_array_len(&mut out, params.len() as u32);
            for value in bound {
                canonical_value(&mut value?, &mut out, 0)?;
            }
        }
        None => {
            let _ = rmp::encode::write_array_len(&mut out, 2);
            canonical_value(&mut &args[..], &mut out, 0)?;
            canonical_value(&mut &kwargs[..], &mut out, 0)?;
        }
    }
    Some(out)
}

/// Deepest nesting canonicalised (deeper values do not bind: raw key).
const MAX_DEPTH: u32 = 64;

/// Re-encodes the MessagePack value at the start of `input` canonically
/// into `out`, advancing `input`: integers, strings, binaries, arrays and
/// maps with the shortest headers (non-negative integers as unsigned),
/// map entries sorted by their canonical keys; floats and extensions as
/// they are. `None` for bytes that are not MessagePack.
fn canonical_value(input: &mut &[u8], out: &mut Vec<u8>, depth: u32) -> Option<()> {
    use rmp::encode as enc;
    use rmp::Marker as M;
    if depth > MAX_DEPTH {
        return None;
    }
    let raw = crate::msgpack::split_value(input).ok()?.0;
    let whole = raw;
    let mut rd = &raw[1..];
    let take = |rd: &mut &[u8], n: usize| -> Option<u64> {
        let (head, rest) = (rd.get(..n)?, rd.get(n..)?);
        *rd = rest;
        Some(head.iter().fold(0u64, |acc, &b| acc << 8 | b as u64))
    };
    let bytes = |rd: &mut &[u8], n: u64| -> Option<Vec<u8>> {
        let n = usize::try_from(n).ok()?;
        let (head, rest) = (rd.get(..n)?, rd.get(n..)?);
        *rd = rest;
        Some(head.to_vec())
    };
    match M::from_u8(raw[0]) {
        M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => out.push(raw[0]),
        M::U8 | M::U16 | M::U32 | M::U64 => {
            let width = 1 << (raw[0] - 0xcc);
            let _ = enc::write_uint(out, take(&mut rd, width)?);
        }
        M::I8 | M::I16 | M::I32 | M::I64 => {
            let width = 1usize << (raw[0] - 0xd0);
            let bits = take(&mut rd, width)?;
            let shift = 64 - 8 * width as u32;
            let v = ((bits << shift) as i64) >> shift; // sign-extend
            if v >= 0 {
                let _ = enc::write_uint(out, v as u64);
            } else {
                let _ = enc::write_sint(out, v);
            }
        }
        M::FixStr(n) => {
            let _ = enc::write_str_len(out, n as u32);
            out.extend_from_slice(&bytes(&mut rd, n as u64)?);
        }
        M::Str8 | M::Str16 | M::Str32 | M::Bin8 | M::Bin16 | M::Bin32 => {
            let is_str = raw[0] <= 0xdb && raw[0] >= 0xd9;
            let width = 1 << ((raw[0] - if is_str { 0xd9 } else { 0xc4 }) as usize);
            let len = take(&mut rd, width)?;
            let len32 = u32::try_from(len).ok()?;
            let _ = if is_str {
                enc::write_str_len(out, len32).map(drop)
            } else {
                enc::write_bin_len(out, len32).map(drop)
            };
            out.extend_from_slice(&bytes(&mut rd, len)?);
        }
        M::FixArray(_) | M::Array16 | M::Array32 => {
            let (len, mut items) = crate::msgpack::array_header(raw)?;
            let _ = enc::write_array_len(out, len);
            for _ in 0..len {
                canonical_value(&mut items, out, depth + 1)?;
            }
        }
        M::FixMap(_) | M::Map16 | M::Map32 => {
            let (len, mut items) = crate::msgpack::map_header(raw)?;
            let mut entries = Vec::with_capacity(len.min(1024) as usize);
            for _ in 0..len {
                let (mut k, mut v) = (Vec::new(), Vec::new());
                canonical_value(&mut items, &mut k, depth + 1)?;
                canonical_value(&mut items, &mut v, depth + 1)?;
                entries.push((k, v));
            }
            entries.sort();
            let _ = enc::write_map_len(out, len);
            for (k, v) in entries {
                out.extend_from_slice(&k);
                out.extend_from_slice(&v);
            }
        }
        // Floats and extensions: as they are.
        _ => out.extend_from_slice(whole),
    }
    *input = &input[raw.len()..];
    Some(())
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
    instance: Instance<S>,
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
    ctor_params: Option<Arc<[String]>>,
    service_name: String,
    instances: InstanceCache<S>,
    token: Option<String>,
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
        cache.0 = shape_of(request, &req, endpoint, &instance, epoch)
            .map(|s| Box::new(s) as Box<dyn Any + Send>);
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

/// The [`Shape`] of a decoded call, if its positional arguments come
/// before its keyword arguments and the constructor sections (as every
/// client we know writes them). The epoch is the one read *before* the
/// instance was looked up, so an eviction in between invalidates it.
fn shape_of<S: Send + Sync + 'static>(
    request: &[u8],
    req: &envelope::Request<'_>,
    endpoint: &Endpoint<S>,
    instance: &Instance<S>,
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
        let cache = InstanceCache::<u32>::new(2, 1 << 20);
        let mut made = 0;
        let mut get = |k: &[u8]| {
            *cache
                .get_or_create(
                    k,
                    || k.to_vec(),
                    || {
                        made += 1;
                        Ok(made)
                    },
                )
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
    fn canonical_values_use_the_shortest_headers_and_sorted_maps() {
        let canon = |b: &[u8]| {
            let mut out = Vec::new();
            let mut input = b;
            canonical_value(&mut input, &mut out, 0).map(|()| (out, input.len()))
        };
        let same = |a: &[u8], b: &[u8]| assert_eq!(canon(a), canon(b), "{a:x?} vs {b:x?}");
        same(&[0xd1, 0xff, 0xff], &[0xff]); // -1 as int16
        same(&[0xd3, 0, 0, 0, 0, 0, 0, 1, 0], &[0xcd, 1, 0]); // 256 as int64
        same(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 5], &[0x05]);
        same(&[0xd9, 1, b'a'], &[0xa1, b'a']); // str8 → fixstr
        same(&[0xc5, 0, 1, 9], &[0xc4, 1, 9]); // bin16 → bin8
        same(&[0xdc, 0, 1, 0xc0], &[0x91, 0xc0]); // array16 → fixarray
                                                  // Maps (nested too) in any key order.
        same(
            &[0x82, 0xa1, b'b', 0x81, 0xa1, b'y', 1, 0xa1, b'a', 2],
            &[
                0x82, 0xa1, b'a', 0xd0, 2, 0xa1, b'b', 0x81, 0xd9, 1, b'y', 1,
            ],
        );
        // Floats stay as they are; what follows is left in the input.
        assert_eq!(
            canon(&[0xca, 0, 0, 0, 0, 7]),
            Some((vec![0xca, 0, 0, 0, 0], 1))
        );
        assert_eq!(canon(&[0xc1]), None);
        assert_eq!(canon(&[0x92, 1]), None, "truncated");
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

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
