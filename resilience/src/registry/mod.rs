//! [`Registry`]: one primitive per key (a circuit breaker or a bulkhead per downstream host),
//! made on first use and bounded — resilience4j's `CircuitBreakerRegistry`, Polly's pipeline
//! registry.
//!
//! ```
//! use std::num::NonZeroUsize;
//! use floodwall_resilience::circuit_breaker::CircuitBreaker;
//! use floodwall_resilience::registry::Registry;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breakers = Registry::new(NonZeroUsize::new(1000).unwrap(), |host: &str| {
//!     CircuitBreaker::builder()
//!         .name(format!("api:{host}"))
//!         .build()
//!         .expect("a valid breaker")
//! });
//! let payments = breakers.get("payments.example.com");
//! let answer = payments.call(|| async { Ok::<_, &str>("charged") }).await;
//! assert_eq!(answer.unwrap(), "charged");
//! // The same host gets the same breaker; another host one of its own.
//! assert_eq!(breakers.get("payments.example.com").name(), "api:payments.example.com");
//! assert_eq!(breakers.len(), 1);
//! # }
//! ```
//!
//! With the `tower` feature, [`KeyedLayer`] puts a registry of layers in a tower stack: each
//! request goes through the layer its key picks.
//!
//! # Bound
//!
//! At most `max_entries` keys are held (rounded up to a multiple of the shard count: one
//! shard per 64 entries, from 1 to 16 — so a registry of up to 127 entries is one exact LRU
//! map). A new key in a full shard evicts that shard's least recently used key — with several
//! shards, an approximation of the least recently used overall; the evicted primitive lives on in
//! whoever still holds a clone, and a later use of its key makes a fresh one. Keys longer than
//! 256 bytes are refused by [`Registry::try_get`] (and [`Registry::get`] replaces them by a
//! digest), so hostile keys cannot inflate memory.
//!
//! # Cost
//!
//! A hit takes a read lock on a sharded map and bumps the entry's use stamp (an atomic); a
//! miss takes its shard's write lock to insert (and, when full, to evict).

#[cfg(feature = "tower")]
mod layer;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{KeyedLayer, KeyedService};

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Keys longer than this are refused by [`Registry::try_get`].
pub const MAX_KEY_LEN: usize = 256;

/// The most shards; a registry has one per 64 entries, at least one.
const MAX_SHARDS: usize = 16;

struct Entry<V> {
    value: V,
    used: AtomicU64,
}

type Shard<V> = RwLock<HashMap<Box<str>, Entry<V>>>;

/// One `V` per key, made by a factory on first use; bounded. Cheap to clone: clones share the
/// entries.
pub struct Registry<V> {
    inner: Arc<Inner<V>>,
}

struct Inner<V> {
    shards: Vec<Shard<V>>,
    per_shard: usize,
    make: Box<dyn Fn(&str) -> V + Send + Sync>,
    clock: AtomicU64,
    /// Bumped whenever a key is removed or evicted (see [`Registry::generation`]).
    generation: AtomicU64,
    hasher: RandomState,
}

impl<V> Clone for Registry<V> {
    fn clone(&self) -> Self {
        Registry {
            inner: self.inner.clone(),
        }
    }
}

impl<V> fmt::Debug for Registry<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("len", &self.len())
            .field(
                "max_entries",
                &(self.inner.per_shard * self.inner.shards.len()),
            )
            .finish_non_exhaustive()
    }
}

/// A key [`Registry::try_get`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry key of {len} bytes is over the {MAX_KEY_LEN}-byte limit")]
pub struct KeyTooLong {
    /// The key's length in bytes.
    pub len: usize,
}

impl<V> Registry<V> {
    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys held now, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.inner
            .shards
            .iter()
            .flat_map(|s| {
                let shard = s.read().unwrap_or_else(|e| e.into_inner());
                shard.keys().map(|k| k.to_string()).collect::<Vec<_>>()
            })
            .collect()
    }

    /// Forgets `key`: its next use makes a fresh value. Returns whether it was held.
    pub fn remove(&self, key: &str) -> bool {
        let mut shard = self.shard(key).write().unwrap_or_else(|e| e.into_inner());
        let held = shard.remove(key).is_some();
        if held {
            self.inner.generation.fetch_add(1, Ordering::Release);
        }
        held
    }

    /// A number that changes whenever a key is removed or evicted, and only then: a value
    /// kept outside the registry (a per-thread cache of the last key used) is still the
    /// key's value while the generation it was read under is current.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        let i = (self.inner.hasher.hash_one(key) as usize) % self.inner.shards.len();
        &self.inner.shards[i]
    }
}

impl<V: Clone> Registry<V> {
    /// A registry holding at most `max_entries` keys (rounded up to a multiple of its shard
    /// count, see [Bound](self#bound)), each value made by `make(key)` on the key's first use.
    pub fn new(
        max_entries: NonZeroUsize,
        make: impl Fn(&str) -> V + Send + Sync + 'static,
    ) -> Self {
        let shards = (max_entries.get() / 64).clamp(1, MAX_SHARDS);
        Registry {
            inner: Arc::new(Inner {
                shards: (0..shards).map(|_| RwLock::new(HashMap::new())).collect(),
                per_shard: max_entries.get().div_ceil(shards),
                make: Box::new(make),
                clock: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                hasher: RandomState::new(),
            }),
        }
    }

    /// The value of `key`, made now if it has none. A key over [`MAX_KEY_LEN`] bytes is
    /// refused.
    pub fn try_get(&self, key: &str) -> Result<V, KeyTooLong> {
        if key.len() > MAX_KEY_LEN {
            return Err(KeyTooLong { len: key.len() });
        }
        Ok(self.lookup(key))
    }

    /// The value of `key`, made now if it has none. A key over [`MAX_KEY_LEN`] bytes stands
    /// for a digest of it (`#` and two 64-bit keyed hashes, 32 hex digits), so any input is
    /// accepted and memory stays bounded.
    pub fn get(&self, key: &str) -> V {
        if key.len() <= MAX_KEY_LEN {
            return self.lookup(key);
        }
        let a = self.inner.hasher.hash_one((0u8, key));
        let b = self.inner.hasher.hash_one((1u8, key));
        self.lookup(&format!("#{a:016x}{b:016x}"))
    }

    /// The value of `key` if it has one, without making one and without counting as a use
    /// (the key's place in the least-recently-used order stays as it is).
    pub fn peek(&self, key: &str) -> Option<V> {
        let read = |key: &str| {
            let shard = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
            shard.get(key).map(|e| e.value.clone())
        };
        if key.len() <= MAX_KEY_LEN {
            return read(key);
        }
        let a = self.inner.hasher.hash_one((0u8, key));
        let b = self.inner.hasher.hash_one((1u8, key));
        read(&format!("#{a:016x}{b:016x}"))
    }

    fn lookup(&self, key: &str) -> V {
        let now = self.inner.clock.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard(key);
        {
            let held = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = held.get(key) {
                e.used.store(now, Ordering::Relaxed);
                return e.value.clone();
            }
        }
        let mut held = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = held.get(key) {
            e.used.store(now, Ordering::Relaxed);
            return e.value.clone();
        }
        if held.len() >= self.inner.per_shard {
            let oldest = held
                .iter()
                .min_by_key(|(_, e)| e.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                held.remove(&k);
                self.inner.generation.fetch_add(1, Ordering::Release);
            }
        }
        let value = (self.inner.make)(key);
        held.insert(
            key.into(),
            Entry {
                value: value.clone(),
                used: AtomicU64::new(now),
            },
        );
        value
    }
}
