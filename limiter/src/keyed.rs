//! Keyed in-memory stores: one limiter state per key, bounded in memory.
//!
//! # Layout
//!
//! Keys are hashed once (SipHash with a random key by default — attackers choose the keys, so
//! the hasher must resist collision floods) and spread over `4 × cores` shards, each a
//! `hashbrown` table behind a reader–writer lock. A decision on a known key takes the shard's
//! lock in shared mode, and GCRA's decision itself is one compare-and-swap on the key's
//! `AtomicU64` — no exclusive lock and no allocation. Only a key's first request takes the
//! shard's lock exclusively, to insert it.
//!
//! # Bounded memory
//!
//! A store holds at most `max_keys` keys (default [`DEFAULT_MAX_KEYS`]), split evenly over the
//! shards. When a shard is full, inserting a key first drops every *idle* key — one whose
//! state equals a fresh key's (a GCRA bucket that has refilled, a window that has passed, a
//! log whose entries have all expired), which changes no decision. If that frees nothing, the
//! eighth of the shard's keys nearest to idle is dropped; those keys start fresh on their next
//! request (at most one extra burst each, and only while more than `max_keys` keys are active
//! at once).
//!
//! A flood of distinct keys (rotating IPv6 addresses, random tokens) therefore cannot grow the
//! store past `max_keys` entries. Memory is bounded by
//!
//! ```text
//! bytes <= shards × (buckets × (size_of::<entry>() + 1) + 16 + size_of::<shard>() + 64)
//!          + max_keys × key bytes on the heap
//! buckets = next_power_of_two(8/7 × max_keys / shards)    (at most 2.29 slots per key)
//! ```
//!
//! (hashbrown's bucket count for a shard's keys, one control byte per bucket).
//! [`KeyedGcra::approx_memory`] reports the current figure and
//! [`RateLimiter::memory_bound`](crate::RateLimiter::memory_bound) the bound. The
//! [`RateLimiter`](crate::RateLimiter)'s store keeps its keys inside the entries (up to 46
//! bytes as they are, longer ones as their SHA-256), so its bound does not depend on key
//! length.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use floodwall_core::{Clock, SystemClock};
use hashbrown::HashTable;

use crate::{Decision, InsufficientCapacity, Quota, gcra};

/// The default bound on the number of keys a keyed store holds.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

pub(crate) struct Entry<K, S> {
    pub(crate) hash: u64,
    pub(crate) key: K,
    pub(crate) state: S,
}

type Shard<K, S> = RwLock<HashTable<Entry<K, S>>>;

/// A sharded, bounded hash table of per-key states.
pub(crate) struct Table<K, S, H = RandomState> {
    shards: Box<[Shard<K, S>]>,
    shard_cap: usize,
    shift: u32,
    hasher: H,
}

impl<K, S, H: BuildHasher> Table<K, S, H> {
    pub(crate) fn new(max_keys: usize, hasher: H) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (cores * 4).next_power_of_two().clamp(4, 256);
        let max_keys = max_keys.max(shards);
        Table {
            shards: (0..shards).map(|_| RwLock::new(HashTable::new())).collect(),
            shard_cap: max_keys.div_ceil(shards),
            shift: 64 - shards.trailing_zeros(),
            hasher,
        }
    }

    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, q: &Q) -> u64 {
        self.hasher.hash_one(q)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard<K, S> {
        // The high bits pick the shard; hashbrown uses the low ones (and the top 7).
        &self.shards[((hash << 7) >> self.shift) as usize]
    }

    /// Runs `f` on the key's state, inserting `make()` first if the key is new. `idle_at` tells
    /// when a state stops mattering (see the module docs); `now` is the current time.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        hash: u64,
        eq: impl Fn(&K) -> bool,
        make: impl FnOnce() -> (K, S),
        idle_at: impl Fn(&S) -> u64,
        now: u64,
        f: impl FnOnce(&S) -> R,
    ) -> R {
        let shard = self.shard(hash);
        {
            let table = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = table.find(hash, |e| e.hash == hash && eq(&e.key)) {
                return f(&e.state);
            }
        }
        self.insert_slow(shard, hash, eq, make, idle_at, now, f)
    }

    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn insert_slow<R>(
        &self,
        shard: &Shard<K, S>,
        hash: u64,
        eq: impl Fn(&K) -> bool,
        make: impl FnOnce() -> (K, S),
        idle_at: impl Fn(&S) -> u64,
        now: u64,
        f: impl FnOnce(&S) -> R,
    ) -> R {
        let mut table = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = table.find(hash, |e| e.hash == hash && eq(&e.key)) {
            return f(&e.state);
        }
        if table.len() >= self.shard_cap {
            // Idle keys first: forgetting them changes nothing.
            table.retain(|e| idle_at(&e.state) > now);
            if table.len() >= self.shard_cap {
                // Then the eighth nearest to idle.
                let mut ages: Vec<u64> = table.iter().map(|e| idle_at(&e.state)).collect();
                let cut = (self.shard_cap / 8).max(1).min(ages.len() - 1);
                let (_, &mut threshold, _) = ages.select_nth_unstable(cut);
                let mut dropped = 0;
                table.retain(|e| {
                    if dropped < cut + 1 && idle_at(&e.state) <= threshold {
                        dropped += 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        let (key, state) = make();
        let entry = table
            .insert_unique(hash, Entry { hash, key, state }, |e| e.hash)
            .into_mut();
        f(&entry.state)
    }

    /// Applies `f` to a key's state if the key is present.
    pub(crate) fn get<R>(
        &self,
        hash: u64,
        eq: impl Fn(&K) -> bool,
        f: impl FnOnce(&S) -> R,
    ) -> Option<R> {
        let table = self.shard(hash).read().unwrap_or_else(|e| e.into_inner());
        table
            .find(hash, |e| e.hash == hash && eq(&e.key))
            .map(|e| f(&e.state))
    }

    /// Keys held.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Drops every key whose state is idle at `now`.
    pub(crate) fn retain_recent(&self, idle_at: impl Fn(&S) -> u64, now: u64) {
        for s in self.shards.iter() {
            s.write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|e| idle_at(&e.state) > now);
        }
    }

    /// The table's own allocations plus `heap(key)` for every key.
    pub(crate) fn approx_memory(&self, heap: impl Fn(&K) -> usize) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let t = s.read().unwrap_or_else(|e| e.into_inner());
                t.allocation_size()
                    + std::mem::size_of_val(s)
                    + t.iter().map(|e| heap(&e.key)).sum::<usize>()
            })
            .sum()
    }

    /// The documented bound (module docs) for keys owning at most `key_heap` heap bytes each
    /// (allocator rounding included by the caller).
    pub(crate) fn memory_bound(&self, key_heap: usize) -> usize {
        // hashbrown's buckets for `shard_cap` items: a power of two at least 8/7 of them (at
        // most 2.29 × the items), each an entry and a control byte, plus a group of control
        // bytes and the alignment of the entry array.
        let buckets = match self.shard_cap {
            0..4 => 4,
            4..8 => 8,
            cap => (cap.saturating_mul(8) / 7).next_power_of_two(),
        };
        let slot = std::mem::size_of::<Entry<K, S>>() + 1;
        let table = buckets * slot + 16 + std::mem::align_of::<Entry<K, S>>();
        self.shards.len() * (table + std::mem::size_of::<Shard<K, S>>() + 64)
            + self.max_keys() * key_heap
    }

    pub(crate) fn max_keys(&self) -> usize {
        self.shard_cap * self.shards.len()
    }
}

/// Heap bytes a key owns, for [`KeyedGcra::approx_memory`]: 0 for plain values, the length
/// of a `String` or `Box<str>`.
pub trait HeapSize {
    /// Bytes this value owns on the heap.
    fn heap_size(&self) -> usize {
        0
    }
}

macro_rules! no_heap {
    ($($t:ty),*) => { $(impl HeapSize for $t {})* };
}
no_heap!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    char,
    bool,
    std::net::IpAddr,
    std::net::Ipv4Addr,
    std::net::Ipv6Addr,
    std::net::SocketAddr
);
impl HeapSize for String {
    fn heap_size(&self) -> usize {
        self.capacity()
    }
}
impl HeapSize for Box<str> {
    fn heap_size(&self) -> usize {
        self.len()
    }
}
impl HeapSize for Arc<str> {
    fn heap_size(&self) -> usize {
        self.len() + 16
    }
}
impl HeapSize for Vec<u8> {
    fn heap_size(&self) -> usize {
        self.capacity()
    }
}

/// A GCRA limiter with one bucket per key, in memory: governor's keyed limiter, bounded.
///
/// Every key gets the same [`Quota`] (for per-key quotas and tiers use
/// [`RateLimiter`](crate::RateLimiter)). See the [module docs](self) for the layout and the
/// memory bound.
///
/// ```
/// use std::num::NonZeroU32;
/// use floodwall_limiter::{ManualClock, Quota, keyed::KeyedGcra};
///
/// let per_ip = KeyedGcra::builder(Quota::per_second(NonZeroU32::new(2).unwrap()))
///     .max_keys(10_000)
///     .clock(ManualClock::new())
///     .build();
/// assert!(per_ip.check(&"10.0.0.1").allowed);
/// assert!(per_ip.check(&"10.0.0.1").allowed);
/// assert!(!per_ip.check(&"10.0.0.1").allowed);
/// assert!(per_ip.check(&"10.0.0.2").allowed, "another key has its own bucket");
/// ```
pub struct KeyedGcra<K, C: Clock = SystemClock, H = RandomState> {
    inner: Arc<KeyedInner<K, C, H>>,
}

struct KeyedInner<K, C, H> {
    table: Table<K, AtomicU64, H>,
    params: gcra::Params,
    quota: Quota,
    clock: C,
}

impl<K, C: Clock, H> Clone for KeyedGcra<K, C, H> {
    fn clone(&self) -> Self {
        KeyedGcra {
            inner: self.inner.clone(),
        }
    }
}

/// Builds a [`KeyedGcra`].
#[derive(Debug)]
pub struct KeyedGcraBuilder<C = SystemClock, H = RandomState> {
    quota: Quota,
    max_keys: usize,
    clock: C,
    hasher: H,
}

impl<K: Hash + Eq> KeyedGcra<K> {
    /// A limiter enforcing `quota` per key, with [`DEFAULT_MAX_KEYS`] keys at most.
    pub fn new(quota: Quota) -> Self {
        KeyedGcra::builder(quota).build()
    }
}

impl KeyedGcra<()> {
    /// Starts a builder; the key type is fixed by [`build`](KeyedGcraBuilder::build).
    pub fn builder(quota: Quota) -> KeyedGcraBuilder {
        KeyedGcraBuilder {
            quota,
            max_keys: DEFAULT_MAX_KEYS,
            clock: SystemClock::new(),
            hasher: RandomState::new(),
        }
    }
}

impl<C: Clock, H: BuildHasher> KeyedGcraBuilder<C, H> {
    /// The most keys held at once (see the module docs); at least one per shard.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// The clock (a [`ManualClock`](floodwall_core::ManualClock) in tests).
    pub fn clock<C2: Clock>(self, clock: C2) -> KeyedGcraBuilder<C2, H> {
        KeyedGcraBuilder {
            quota: self.quota,
            max_keys: self.max_keys,
            clock,
            hasher: self.hasher,
        }
    }

    /// The hasher. The default, SipHash with a random key, resists collision floods by keys an
    /// attacker chooses; only swap it for keys you control.
    pub fn hasher<H2: BuildHasher>(self, hasher: H2) -> KeyedGcraBuilder<C, H2> {
        KeyedGcraBuilder {
            quota: self.quota,
            max_keys: self.max_keys,
            clock: self.clock,
            hasher,
        }
    }

    /// Builds the limiter.
    pub fn build<K: Hash + Eq>(self) -> KeyedGcra<K, C, H> {
        KeyedGcra {
            inner: Arc::new(KeyedInner {
                table: Table::new(self.max_keys, self.hasher),
                params: gcra::Params::new(&self.quota),
                quota: self.quota,
                clock: self.clock,
            }),
        }
    }
}

impl<K: Hash + Eq, C: Clock, H: BuildHasher> KeyedGcra<K, C, H> {
    /// Decides one request for `key` and, if allowed, consumes it.
    #[inline]
    pub fn check<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.decide(key, 1, true)
    }

    /// Decides a request of cost `n` for `key` (all or nothing).
    pub fn check_n<Q>(&self, key: &Q, n: NonZeroU32) -> Result<Decision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let cost = InsufficientCapacity::check(n, self.inner.params.burst)?;
        Ok(self.decide(key, cost, true))
    }

    /// What [`check`](Self::check) would answer for `key`, without consuming (and without
    /// storing an unknown key).
    pub fn peek<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let hash = inner.table.hash(key);
        let tat = inner
            .table
            .get(
                hash,
                |k| k.borrow() == key,
                |s| s.load(std::sync::atomic::Ordering::Acquire),
            )
            .unwrap_or(0);
        inner.params.evaluate(tat, now, 1).0
    }

    #[inline]
    fn decide<Q>(&self, key: &Q, cost: u32, consume: bool) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let hash = inner.table.hash(key);
        inner.table.with(
            hash,
            |k| k.borrow() == key,
            || (key.to_owned(), AtomicU64::new(0)),
            |s| s.load(std::sync::atomic::Ordering::Relaxed),
            now,
            |tat| gcra::decide(tat, &inner.params, now, cost, consume),
        )
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.inner.table.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on keys held (the configured `max_keys`, rounded up to fill every shard).
    pub fn max_keys(&self) -> usize {
        self.inner.table.max_keys()
    }

    /// Drops every idle key now (it happens by itself when a shard fills up).
    pub fn retain_recent(&self) {
        let now = self.inner.clock.now_nanos();
        self.inner
            .table
            .retain_recent(|s| s.load(std::sync::atomic::Ordering::Acquire), now);
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.inner.quota
    }
}

impl<K: Hash + Eq + HeapSize, C: Clock, H: BuildHasher> KeyedGcra<K, C, H> {
    /// Bytes the store holds now: its tables plus the keys' heap bytes.
    pub fn approx_memory(&self) -> usize {
        self.inner.table.approx_memory(HeapSize::heap_size)
    }
}

impl<K, C: Clock, H> fmt::Debug for KeyedGcra<K, C, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedGcra")
            .field("quota", &self.inner.quota)
            .finish_non_exhaustive()
    }
}
