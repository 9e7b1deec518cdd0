//! The sharded instance LRU: one service instance per distinct
//! constructor arguments, and the handle that releases one safely.
//!
//! Invariants: no lock is held while a key is canonicalised, a constructor
//! runs or an instance is dropped; an evicted entry is marked dead before
//! the eviction epoch advances (Release, paired with the Acquire load in
//! [`InstanceCache::epoch`]), so a holder that sees the old epoch may keep
//! using its instance and one that sees the new one looks it up again;
//! each shard stays within its share of entries and of key bytes
//! (`ServiceConfig::cache_capacity` and `cache_key_bytes`), except that a
//! single key larger than the share is still cached, alone, at the second
//! level; the user's `Drop` never unwinds into the runtime.

use super::hash::{FastHashMap, FastHasher};
use super::panic::panic_message;
use crate::error::CallError;
use lru::LruCache;
use std::hash::Hasher;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A shared service instance whose release never unwinds into the
/// runtime: the user's `Drop` may panic, and the last handle to an
/// instance is let go wherever a call or an eviction happens to end (a
/// worker's loop, the TCP server, an eviction, shutdown). A panic there is
/// caught and logged; the instance is gone either way.
pub(super) struct Instance<S>(Option<Arc<S>>);

impl<S> Instance<S> {
    pub(super) fn new(value: S) -> Instance<S> {
        Instance(Some(Arc::new(value)))
    }

    /// The instance, for an endpoint.
    pub(super) fn arc(&self) -> &Arc<S> {
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
pub(super) struct CachedInstance<S> {
    value: Result<Instance<S>, CallError>,
    /// False once evicted: an alias still pointing here is stale.
    live: AtomicBool,
    /// When it was last used, on the cache's clock (see
    /// `InstanceCache::clock`): eviction takes the least recently used.
    stamp: AtomicU64,
}

impl<S> CachedInstance<S> {
    fn new(value: Result<Instance<S>, CallError>) -> CachedInstance<S> {
        CachedInstance {
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
    lru: LruCache<Box<[u8]>, Weak<CachedInstance<S>>>,
    bytes: usize,
}

/// Canonical constructor arguments → entry (owns it), and the bytes of
/// the keys it holds. (A plain map: recency is in the entries' stamps.)
struct Values<S> {
    map: FastHashMap<Vec<u8>, Arc<CachedInstance<S>>>,
    bytes: usize,
}

type AliasShard<S> = Mutex<Aliases<S>>;
type ValueShard<S> = Mutex<Values<S>>;

/// How a constructor failed.
pub(super) enum CtorFailure {
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
///    and canonically re-encoded (see
///    [`canonical_ctor_key`](super::ctor_key::canonical_ctor_key)), the LRU that
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
pub(super) struct InstanceCache<S> {
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
    pub(super) fn new(capacity: usize, key_bytes: usize) -> InstanceCache<S> {
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
                        map: FastHashMap::with_capacity_and_hasher(
                            per.get().min(1024),
                            Default::default(),
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
    fn mark_used(&self, entry: &CachedInstance<S>) {
        let now = self.clock.fetch_add(2, Ordering::Relaxed) + 2;
        entry.stamp.store(now, Ordering::Relaxed);
    }

    /// Stamps a use through an alias: after every second-level use so far.
    fn mark_alias_used(&self, entry: &CachedInstance<S>) {
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
    fn alias(&self, raw: &[u8]) -> Option<Arc<CachedInstance<S>>> {
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
    fn add_alias(&self, raw: &[u8], entry: &Arc<CachedInstance<S>>) {
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

    /// The instance already built for the constructor arguments whose raw
    /// bytes are `raw` (as [`get_or_create`](Self::get_or_create) finds
    /// it), or `None` when building it would run the constructor.
    pub(super) fn get(
        &self,
        raw: &[u8],
        canonical: impl FnOnce() -> Vec<u8>,
    ) -> Option<Result<Instance<S>, CallError>> {
        match self.lookup(raw, canonical) {
            Lookup::Found(e) => Some(e.value()),
            Lookup::Missing(_) => None,
        }
    }

    /// The entry for `raw`, through its alias or else through the key of
    /// `canonical()` (which then gets the alias), marked used; else that
    /// key, to build the entry under.
    fn lookup(&self, raw: &[u8], canonical: impl FnOnce() -> Vec<u8>) -> Lookup<S> {
        if let Some(e) = self.alias(raw) {
            return Lookup::Found(e);
        }
        let key = canonical();
        let found = lock(Self::shard(&self.values, &key))
            .map
            .get(key.as_slice())
            .cloned();
        match found {
            Some(e) => {
                self.mark_used(&e);
                self.add_alias(raw, &e);
                Lookup::Found(e)
            }
            None => Lookup::Missing(key),
        }
    }

    /// The instance for the constructor arguments whose raw bytes are
    /// `raw`: an alias hit, else the entry of `canonical()` (a key of
    /// the bound arguments), else one built by `create`. No lock is held
    /// while canonicalising or constructing.
    pub(super) fn get_or_create(
        &self,
        raw: &[u8],
        canonical: impl FnOnce() -> Vec<u8>,
        create: impl FnOnce() -> Result<S, CtorFailure>,
    ) -> Result<Instance<S>, CallError> {
        let key = match self.lookup(raw, canonical) {
            Lookup::Found(e) => return e.value(),
            Lookup::Missing(key) => key,
        };
        let shard = Self::shard(&self.values, &key);
        let made = match create() {
            Ok(s) => Arc::new(CachedInstance::new(Ok(Instance::new(s)))),
            Err(CtorFailure::Error(e)) => return Err(e),
            Err(CtorFailure::Panic(e)) => Arc::new(CachedInstance::new(Err(e))),
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
                    let stamp = |e: &Arc<CachedInstance<S>>| e.stamp.load(Ordering::Relaxed);
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
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks the instance aliased by `raw` as recently used, for a holder
    /// that calls its instance without looking it up each time.
    pub(super) fn touch(&self, raw: &[u8]) {
        let _ = self.alias(raw);
    }
}

/// What [`InstanceCache::lookup`] found.
enum Lookup<S> {
    Found(Arc<CachedInstance<S>>),
    /// No entry; its canonical key.
    Missing(Vec<u8>),
}

/// A poisoned shard only means a panic elsewhere; the LRU is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
