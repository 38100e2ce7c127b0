//! The per-client buckets, bounded: at most `max` clients are tracked, the
//! least recently seen dropped first.
//!
//! governor's own keyed store (a `DashMap`) grows with every new key until
//! a sweep, and a sweep only drops buckets that are full again. A client
//! with a /64 of IPv6 addresses, or a botnet, makes a new key per request:
//! memory without bound in between sweeps. Here a new client beyond the
//! cap evicts the least recently seen one (which then starts again with a
//! full burst, the cost of the bound). Shards keep the locks short: a key
//! hashes to one of [`SHARDS`] LRU lists, each holding `max / SHARDS`.

use std::{
    hash::{BuildHasher, Hash, RandomState},
    num::NonZeroUsize,
    sync::{Mutex, PoisonError},
};

use governor::{
    nanos::Nanos,
    state::{keyed::ShrinkableKeyedStateStore, StateStore},
};
use lru::LruCache;

/// How many independently locked LRU lists.
pub const SHARDS: usize = 16;

/// A bounded store of GCRA states by key.
#[derive(Debug)]
pub struct BoundedStore<K: Hash + Eq> {
    shards: Box<[Mutex<LruCache<K, Nanos>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq> BoundedStore<K> {
    /// At most `max` keys (at least one per shard).
    pub fn new(max: usize) -> Self {
        let per_shard = NonZeroUsize::new(max.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        let shards = (0..SHARDS).map(|_| Mutex::new(LruCache::new(per_shard))).collect();
        Self { shards, hasher: RandomState::new() }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, LruCache<K, Nanos>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = self.shard(key);
        let (answer, next) = f(shard.get(key).copied())?;
        // `put` on a full list evicts its least recently used key.
        shard.put(key.clone(), next);
        Ok(answer)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let quiet: Vec<K> =
                shard.iter().filter(|(_, at)| **at < drop_below).map(|(k, _)| k.clone()).collect();
            for k in quiet {
                shard.pop(&k);
            }
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
