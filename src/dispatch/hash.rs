//! The hasher of the dispatcher's own maps: the endpoint table, the
//! instance cache's value shards and the choice of a shard.
//!
//! Invariant: it is unseeded, so it hashes only keys that the service's
//! own clients send (endpoint names, constructor arguments), where speed
//! on short keys matters and collision attacks are not at stake; the
//! alias LRU keeps hashbrown's seeded hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A small multiplicative hasher (the Fx/rustc scheme), for keys that come
/// from the same user's clients: fast on short keys, and the shard count is
/// small, so collision resistance against adversaries is not at stake
/// (the LRU shards themselves use hashbrown's seeded hasher).
#[derive(Default, Clone, Copy)]
pub(super) struct FastHasher(u64);

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

/// A map hashed with [`FastHasher`].
pub(super) type FastHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
