//! [`TieredCache`]: the L1 cache, request coalescing and the freshness rules.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;
use floodwall_core::{Clock, StoreError, SystemClock};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFut<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value found in the second tier, with its time left.
#[derive(Debug)]
pub(crate) struct Found<V> {
    pub(crate) value: Option<V>,
    pub(crate) soft_left: Duration,
    pub(crate) hard_left: Duration,
}

/// The second tier, with the key and value types erased to what the cache needs.
pub(crate) trait Tier2<K, V>: Send + Sync {
    fn read<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<Option<Found<V>>, StoreError>>;
    fn write<'a>(
        &'a self,
        key: &'a K,
        value: &'a Option<V>,
        soft: Duration,
        hard: Duration,
        keep: Duration,
    ) -> BoxFut<'a, Result<(), StoreError>>;
    fn remove<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<(), StoreError>>;
    fn lease_ttl(&self) -> Option<Duration>;
    /// The namespace generation this instance knows.
    fn generation(&self) -> u64;
    /// Whether L1 must not be used now (the invalidation subscription is down).
    fn bypass_l1(&self) -> bool;
    fn bump_namespace(&self) -> BoxFut<'_, Result<u64, StoreError>>;
    /// Whether writes and deletes publish invalidations.
    fn publishes(&self) -> bool;
    fn take_lease<'a>(&'a self, key: &'a K, ttl: Duration) -> BoxFut<'a, Result<bool, StoreError>>;
    fn release_lease<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<(), StoreError>>;
}

/// Why [`TieredCache::get_or_load`] has no value to give.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The loader failed (and no stale value could stand in).
    #[error("cache loader failed: {0}")]
    Loader(Arc<BoxError>),
    /// The loader did not finish within the hard timeout (and no stale value could stand in).
    #[error("cache loader timed out after {0:?}")]
    Timeout(Duration),
}

/// What a loader found (for [`TieredCache::get_or_fetch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched<V> {
    /// A value, to cache.
    Value(V),
    /// Nothing (cached only with a negative TTL).
    Missing,
    /// A value to hand to this load's callers but not to cache (e.g. a response marked
    /// `no-store`).
    Uncacheable(V),
}

/// One cached value (or a cached "not found") and its clock readings.
#[derive(Debug)]
struct Entry<V> {
    value: Option<V>,
    /// Fresh until here; stale (served, refreshed in the background) until `hard_at`.
    soft_at: u64,
    /// Expired from here; kept for fail-safe until `keep_until`.
    hard_at: u64,
    keep_until: u64,
    /// No loader call for this key before this time (fail-safe throttle).
    retry_at: u64,
    /// How long the load that produced it took (XFetch's delta).
    load_nanos: u64,
}

/// How a [`TieredCache`] treats time; see [`TieredCacheBuilder`].
#[derive(Debug, Clone)]
struct Options {
    ttl: Duration,
    soft_ttl: Option<Duration>,
    jitter: f64,
    max_stale: Option<Duration>,
    fail_safe_throttle: Duration,
    negative_ttl: Option<Duration>,
    soft_timeout: Option<Duration>,
    hard_timeout: Option<Duration>,
    xfetch_beta: Option<f64>,
}

type Subscribe<K, V> = Box<dyn FnOnce(std::sync::Weak<Inner<K, V>>) + Send>;

type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;

type Load<V> = Shared<BoxFuture<'static, Result<Option<V>, CacheError>>>;

struct Inner<K, V> {
    l1: moka::sync::Cache<K, Arc<Entry<V>>>,
    l2: Option<Arc<dyn Tier2<K, V>>>,
    /// The namespace generation L1's entries belong to.
    l1_generation: std::sync::atomic::AtomicU64,
    inflight: Mutex<HashMap<K, Load<V>>>,
    options: Options,
    clock: Arc<dyn Clock>,
    stats: crate::Stats,
}

/// A cache of `K → V` in front of a slow source: a bounded in-process L1 (moka), request
/// coalescing, stale-while-revalidate, fail-safe and timeouts. Cheap to clone; clones share
/// the cache.
///
/// # Freshness
///
/// A loaded value is *fresh* for `soft_ttl` (default: `ttl`), then *stale* until `ttl`: a
/// stale value is served at once while one background load refreshes it. After `ttl` it is
/// expired: the next `get_or_load` waits for a load. Each entry's `ttl` is stretched by a
/// random factor in `[1, 1 + jitter)` (and `soft_ttl` with it) so keys written together do
/// not expire together.
///
/// - **Coalescing:** concurrent loads of one key in this process run the loader once; every
///   caller gets its result.
/// - **XFetch** (optional, β > 0): a fresh entry is refreshed early, in the background, with
///   probability rising as expiry nears — when `now − δ·β·ln(u) ≥ soft expiry`, with `δ` the
///   last load's duration and `u` uniform in (0, 1] (Vattani et al.).
/// - **Fail-safe** (optional `max_stale`): if the loader fails or times out once a value has
///   expired, the expired value is served for up to `max_stale` past its expiry, and the
///   loader is not called again for that key for `fail_safe_throttle`.
/// - **Timeouts:** with a stale or fail-safe value at hand, a load slower than
///   `soft_timeout` answers the old value and finishes in the background; every load is cut
///   at `hard_timeout`.
/// - **Negative caching** (optional `negative_ttl`): a loader's `Ok(None)` ("no such
///   thing") is cached for that long.
///
/// ```
/// use std::time::Duration;
/// use floodwall_cache::TieredCache;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache: TieredCache<u64, String> = TieredCache::builder()
///     .max_capacity(10_000)
///     .ttl(Duration::from_secs(60))
///     .soft_ttl(Duration::from_secs(30))
///     .build();
/// let name = cache
///     .get_or_load(42, || async { Ok::<_, std::io::Error>(Some("Ada".to_string())) })
///     .await
///     .unwrap();
/// assert_eq!(name.as_deref(), Some("Ada"));
/// assert_eq!(cache.get(&42).await.as_deref(), Some("Ada"));
/// # }
/// ```
pub struct TieredCache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for TieredCache<K, V> {
    fn clone(&self) -> Self {
        TieredCache {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> fmt::Debug for TieredCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("options", &self.inner.options)
            .field("entries", &self.inner.l1.entry_count())
            .finish_non_exhaustive()
    }
}

/// Builds a [`TieredCache`].
pub struct TieredCacheBuilder<K, V> {
    max_capacity: u64,
    l2: Option<Arc<dyn Tier2<K, V>>>,
    subscribe: Option<Subscribe<K, V>>,
    weigher: Option<Weigher<K, V>>,
    options: Options,
    clock: Arc<dyn Clock>,
}

impl<K, V> fmt::Debug for TieredCacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("max_capacity", &self.max_capacity)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<K, V> TieredCacheBuilder<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The most entries L1 holds (or, with a [`weigher`](Self::weigher), the most weight).
    pub fn max_capacity(mut self, n: u64) -> Self {
        self.max_capacity = n;
        self
    }

    /// Bounds L1 by weight instead of entry count.
    pub fn weigher(mut self, f: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(f));
        self
    }

    /// How long a value lives (default 5 minutes).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = ttl;
        self
    }

    /// How long a value is fresh; from then until `ttl` it is served stale while refreshed.
    pub fn soft_ttl(mut self, soft: Duration) -> Self {
        self.options.soft_ttl = Some(soft);
        self
    }

    /// Stretches each entry's TTLs by a random factor in `[1, 1 + jitter)` (0 to 1; default 0).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.options.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Fail-safe: serve an expired value for up to `max_stale` when the loader fails.
    pub fn fail_safe(mut self, max_stale: Duration, throttle: Duration) -> Self {
        self.options.max_stale = Some(max_stale);
        self.options.fail_safe_throttle = throttle;
        self
    }

    /// Caches a loader's `Ok(None)` for `ttl`.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.options.negative_ttl = Some(ttl);
        self
    }

    /// With an old value at hand, answer it once a load takes this long.
    pub fn soft_timeout(mut self, d: Duration) -> Self {
        self.options.soft_timeout = Some(d);
        self
    }

    /// Cut every load at this long.
    pub fn hard_timeout(mut self, d: Duration) -> Self {
        self.options.hard_timeout = Some(d);
        self
    }

    /// Probabilistic early refresh (XFetch) with this β (1.0 is the paper's default).
    pub fn xfetch(mut self, beta: f64) -> Self {
        self.options.xfetch_beta = (beta > 0.0).then_some(beta);
        self
    }

    /// The clock freshness is measured on (a `ManualClock` or Tokio's paused clock in tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Adds the Redis tier (L2): values shared by every instance, read once per coalesced
    /// load, written through on `set`, deleted on `invalidate`; optionally a load lease
    /// across instances. See [`redis`](crate::redis).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis<C: crate::redis::Codec>(mut self, tier: crate::redis::RedisTier<C>) -> Self
    where
        K: fmt::Display + std::str::FromStr,
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        let adapter = Arc::new(crate::redis::Adapter::<K, V, C>::new(tier.into_store()));
        self.subscribe = Some(Box::new({
            let adapter = adapter.clone();
            move |weak: std::sync::Weak<Inner<K, V>>| {
                adapter.subscribe(Box::new(move |what| {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.stats.invalidation_received();
                    match what {
                        crate::redis::Drop::Key(k) => {
                            inner.l1.invalidate(&k);
                        }
                        crate::redis::Drop::All => inner.l1.invalidate_all(),
                    }
                }))
            }
        }));
        self.l2 = Some(adapter);
        self
    }

    /// Builds the cache.
    pub fn build(self) -> TieredCache<K, V> {
        let o = &self.options;
        // moka drops entries once even fail-safe cannot use them (a backstop: freshness is
        // decided on `clock`).
        let longest = o.ttl.mul_f64(1.0 + o.jitter)
            + o.max_stale.unwrap_or_default()
            + o.negative_ttl.unwrap_or_default()
            + Duration::from_secs(1);
        let mut l1 = moka::sync::Cache::builder()
            .max_capacity(self.max_capacity)
            .time_to_live(longest);
        if let Some(w) = self.weigher {
            l1 = l1.weigher(move |k: &K, e: &Arc<Entry<V>>| match &e.value {
                Some(v) => w(k, v),
                None => 1,
            });
        }
        let cache = TieredCache {
            inner: Arc::new(Inner {
                l1: l1.build(),
                l2: self.l2,
                l1_generation: std::sync::atomic::AtomicU64::new(0),
                inflight: Mutex::new(HashMap::new()),
                options: self.options,
                clock: self.clock,
                stats: crate::Stats::default(),
            }),
        };
        if let Some(subscribe) = self.subscribe {
            subscribe(Arc::downgrade(&cache.inner));
        }
        cache
    }
}

impl<K, V> TieredCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Starts a builder: 10,000 entries, a 5-minute TTL, no stale phase, no fail-safe.
    pub fn builder() -> TieredCacheBuilder<K, V> {
        TieredCacheBuilder {
            max_capacity: 10_000,
            weigher: None,
            options: Options {
                ttl: Duration::from_secs(300),
                soft_ttl: None,
                jitter: 0.0,
                max_stale: None,
                fail_safe_throttle: Duration::from_secs(1),
                negative_ttl: None,
                soft_timeout: None,
                hard_timeout: None,
                xfetch_beta: None,
            },
            clock: Arc::new(SystemClock::new()),
            l2: None,
            subscribe: None,
        }
    }

    /// The value for `key` if cached and not expired (fresh or stale): from L1, else from
    /// Redis (then kept in L1); loads nothing.
    pub async fn get(&self, key: &K) -> Option<V> {
        let now = self.inner.clock.now_nanos();
        if self.l1_usable() {
            match self.inner.l1.get(key) {
                Some(e) if now < e.hard_at => {
                    self.inner.stats.hit();
                    return e.value.clone();
                }
                _ => self.inner.stats.miss(),
            }
        }
        self.read_l2(key, true).await.ok().flatten().flatten()
    }

    /// Whether L1 may answer now; with Redis, also drops L1 when the namespace generation
    /// moved on.
    #[inline]
    fn l1_usable(&self) -> bool {
        let Some(l2) = &self.inner.l2 else {
            return true;
        };
        if l2.bypass_l1() {
            return false;
        }
        let g = l2.generation();
        let seen = &self.inner.l1_generation;
        if seen.load(std::sync::atomic::Ordering::Acquire) != g {
            seen.store(g, std::sync::atomic::Ordering::Release);
            self.inner.l1.invalidate_all();
        }
        true
    }

    /// Invalidates every key of the namespace, on every instance, in O(1): the namespace
    /// generation in Redis is bumped (old values are no longer read and expire by their TTL)
    /// and the other instances told. Without Redis, clears L1.
    pub async fn invalidate_namespace(&self) -> Result<(), StoreError> {
        if let Some(l2) = &self.inner.l2 {
            let g = l2.bump_namespace().await?;
            if l2.publishes() {
                self.inner.stats.invalidation_sent();
            }
            self.inner
                .l1_generation
                .store(g, std::sync::atomic::Ordering::Release);
        }
        self.inner.l1.invalidate_all();
        Ok(())
    }

    /// Stores `value` for `key` now (fresh for the configured TTLs): Redis first, then L1.
    /// A Redis failure is logged and counted; L1 is written regardless.
    pub async fn set(&self, key: K, value: V) {
        let now = self.inner.clock.now_nanos();
        let entry = self.entry(Some(value), now, 0);
        self.write_l2(&key, &entry, now).await;
        self.inner.l1.insert(key, Arc::new(entry));
    }

    /// Drops `key` from Redis and L1.
    pub async fn invalidate(&self, key: &K) {
        if let Some(l2) = &self.inner.l2 {
            match l2.remove(key).await {
                Ok(()) if l2.publishes() => self.inner.stats.invalidation_sent(),
                Ok(()) => {}
                Err(e) => {
                    self.inner.stats.l2_error();
                    tracing::warn!(error = %e, "could not delete a cached value from Redis");
                }
            }
        }
        self.inner.l1.invalidate(key);
    }

    /// Drops this instance's L1 copy of `key` only.
    pub async fn invalidate_local(&self, key: &K) {
        self.inner.l1.invalidate(key);
    }

    async fn write_l2(&self, key: &K, entry: &Entry<V>, now: u64) {
        let Some(l2) = &self.inner.l2 else {
            return;
        };
        let left = |at: u64| Duration::from_nanos(at.saturating_sub(now));
        let keep = left(entry.keep_until);
        match l2
            .write(
                key,
                &entry.value,
                left(entry.soft_at),
                left(entry.hard_at),
                keep,
            )
            .await
        {
            Ok(()) if l2.publishes() => self.inner.stats.invalidation_sent(),
            Ok(()) => {}
            Err(e) => {
                self.inner.stats.l2_error();
                tracing::warn!(error = %e, "could not write a cached value to Redis");
            }
        }
    }

    /// Reads `key` from L2 into L1. `Some(value)` when found usable (fresh, or stale when
    /// `accept_stale`); `None` on a miss; `Err(())` when Redis failed.
    async fn read_l2(&self, key: &K, accept_stale: bool) -> Result<Option<Option<V>>, ()> {
        let Some(l2) = &self.inner.l2 else {
            return Ok(None);
        };
        let inner = &self.inner;
        inner.stats.l2_read();
        match l2.read(key).await {
            Ok(Some(found)) if !found.soft_left.is_zero() || accept_stale => {
                inner.stats.l2_hit();
                let now = inner.clock.now_nanos();
                let hard_at = now.saturating_add(duration_to_nanos(found.hard_left));
                let entry = Entry {
                    value: found.value.clone(),
                    soft_at: now.saturating_add(duration_to_nanos(found.soft_left)),
                    hard_at,
                    keep_until: hard_at.saturating_add(duration_to_nanos(
                        inner.options.max_stale.unwrap_or_default(),
                    )),
                    retry_at: 0,
                    load_nanos: 0,
                };
                inner.l1.insert(key.clone(), Arc::new(entry));
                Ok(Some(found.value))
            }
            Ok(_) => Ok(None),
            Err(StoreError::Codec(e)) => {
                inner.stats.l2_decode_error();
                tracing::warn!(error = %e, "a cached value in Redis did not decode; treating it as a miss");
                Ok(None)
            }
            Err(e) => {
                inner.stats.l2_error();
                tracing::warn!(error = %e, "Redis tier unavailable; going on without it");
                Err(())
            }
        }
    }

    /// Drops every key.
    pub fn invalidate_all(&self) {
        self.inner.l1.invalidate_all();
    }

    /// Counters since the cache was built.
    pub fn stats(&self) -> crate::StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The value for `key`: from L1 if fresh (or stale, refreshing it in the background),
    /// else from `loader` — once per key however many callers ask at the same time. See the
    /// [type docs](TieredCache) for stale values, fail-safe and timeouts.
    ///
    /// `Ok(None)` means the loader found nothing (cached only with a negative TTL).
    pub async fn get_or_load<F, Fut, E>(&self, key: K, loader: F) -> Result<Option<V>, CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.get_or_fetch(key, move || async move {
            loader().await.map(|v| match v {
                Some(v) => Fetched::Value(v),
                None => Fetched::Missing,
            })
        })
        .await
    }

    /// [`get_or_load`](Self::get_or_load) with a loader that can also answer a value *not* to
    /// be stored ([`Fetched::Uncacheable`]: it goes to the callers of this load only).
    pub async fn get_or_fetch<F, Fut, E>(&self, key: K, loader: F) -> Result<Option<V>, CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let inner = &self.inner;
        let now = inner.clock.now_nanos();
        let cached = if self.l1_usable() {
            inner.l1.get(&key)
        } else {
            None
        };
        if let Some(e) = &cached {
            if now < e.soft_at {
                inner.stats.hit();
                if self.xfetch_due(e, now) {
                    self.refresh_in_background(key, loader);
                }
                return Ok(e.value.clone());
            }
            if now < e.hard_at {
                inner.stats.hit();
                inner.stats.stale();
                if now >= e.retry_at {
                    self.refresh_in_background(key, loader);
                }
                return Ok(e.value.clone());
            }
        }
        inner.stats.miss();
        // Expired or absent. An expired value may still stand in (fail-safe).
        let fallback = cached.filter(|e| inner.options.max_stale.is_some() && now < e.keep_until);
        if let Some(old) = &fallback
            && now < old.retry_at
        {
            inner.stats.stale();
            return Ok(old.value.clone());
        }
        let load = self.load(key.clone(), loader, false);
        let result = match (&fallback, inner.options.soft_timeout) {
            (Some(old), Some(soft)) => match tokio::time::timeout(soft, load).await {
                Ok(r) => r,
                Err(_) => {
                    // The load goes on in the background and will update the cache.
                    inner.stats.stale();
                    return Ok(old.value.clone());
                }
            },
            _ => load.await,
        };
        match (result, fallback) {
            (Ok(v), _) => Ok(v),
            (Err(e), Some(old)) => {
                tracing::warn!(error = %e, "cache loader failed; serving the stale value (fail-safe)");
                inner.stats.stale();
                let retry_at = now + duration_to_nanos(inner.options.fail_safe_throttle);
                let throttled = Entry {
                    value: old.value.clone(),
                    soft_at: old.soft_at,
                    hard_at: old.hard_at,
                    keep_until: old.keep_until,
                    retry_at,
                    load_nanos: old.load_nanos,
                };
                inner.l1.insert(key, Arc::new(throttled));
                Ok(old.value.clone())
            }
            (Err(e), None) => Err(e),
        }
    }

    fn xfetch_due(&self, e: &Entry<V>, now: u64) -> bool {
        let Some(beta) = self.inner.options.xfetch_beta else {
            return false;
        };
        // u in (0, 1]: ln(u) <= 0, so the term is a non-negative head start.
        let u = 1.0 - rand::random::<f64>();
        let early = (e.load_nanos as f64) * beta * -u.ln();
        now as f64 + early >= e.soft_at as f64
    }

    fn refresh_in_background<F, Fut, E>(&self, key: K, loader: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        // Joining an in-flight load starts nothing new: one refresh per key at a time.
        drop(self.load(key, loader, true));
    }

    /// The shared load for `key`: joins the one in flight or starts one (driven to the end
    /// by a task of its own, whoever still waits for it).
    ///
    /// Unless `refresh`, a load that finds a fresh entry (written by a load that ended between
    /// the caller's lookup and this one) answers it without calling the loader.
    fn load<F, Fut, E>(&self, key: K, loader: F, refresh: bool) -> Load<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let mut inflight = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(load) = inflight.get(&key) {
            self.inner.stats.coalesced();
            return load.clone();
        }
        let this = self.clone();
        let k = key.clone();
        let fut = async move {
            let inner = &this.inner;
            let started = inner.clock.now_nanos();
            if !refresh
                && let Some(e) = inner.l1.get(&k)
                && started < e.soft_at
            {
                inner
                    .inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&k);
                return Ok(e.value.clone());
            }
            // The second tier: another instance may have loaded it already.
            let mut l2_ok = inner.l2.is_some();
            let mut lease_held = false;
            match this.read_l2(&k, !refresh).await {
                Ok(Some(value)) => {
                    inner
                        .inflight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&k);
                    return Ok(value);
                }
                Ok(None) => {}
                Err(()) => l2_ok = false,
            }
            if l2_ok
                && let Some(l2) = &inner.l2
                && let Some(ttl) = l2.lease_ttl()
            {
                // One loader across instances: take the lease, or wait for its holder's value
                // (and take the lease once the holder is gone).
                let poll = (ttl / 20).clamp(Duration::from_millis(5), Duration::from_millis(50));
                loop {
                    match l2.take_lease(&k, ttl).await {
                        Ok(true) => {
                            lease_held = true;
                            break;
                        }
                        Ok(false) => {
                            tokio::time::sleep(poll).await;
                            match this.read_l2(&k, true).await {
                                Ok(Some(value)) => {
                                    inner
                                        .inflight
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .remove(&k);
                                    return Ok(value);
                                }
                                Ok(None) => {}
                                Err(()) => {
                                    l2_ok = false;
                                    break;
                                }
                            }
                        }
                        Err(_) => {
                            inner.stats.l2_error();
                            l2_ok = false;
                            break;
                        }
                    }
                }
            }
            inner.stats.load();
            let result = match inner.options.hard_timeout {
                Some(hard) => match tokio::time::timeout(hard, loader()).await {
                    Ok(r) => r.map_err(|e| CacheError::Loader(Arc::new(e.into()))),
                    Err(_) => Err(CacheError::Timeout(hard)),
                },
                None => loader()
                    .await
                    .map_err(|e| CacheError::Loader(Arc::new(e.into()))),
            };
            let now = inner.clock.now_nanos();
            let (result, store) = match result {
                Ok(Fetched::Value(v)) => (Ok(Some(v)), true),
                Ok(Fetched::Missing) => (Ok(None), true),
                Ok(Fetched::Uncacheable(v)) => (Ok(Some(v)), false),
                Err(e) => (Err(e), false),
            };
            if store && let Ok(value) = &result {
                if value.is_some() || inner.options.negative_ttl.is_some() {
                    let entry = this.entry(value.clone(), now, now.saturating_sub(started));
                    if l2_ok {
                        this.write_l2(&k, &entry, now).await;
                    }
                    inner.l1.insert(k.clone(), Arc::new(entry));
                } else {
                    inner.l1.invalidate(&k);
                }
            }
            if lease_held
                && let Some(l2) = &inner.l2
                && let Err(e) = l2.release_lease(&k).await
            {
                tracing::debug!(error = %e, "could not release a cache load lease (it expires)");
            }
            inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&k);
            result
        }
        .boxed()
        .shared();
        inflight.insert(key, fut.clone());
        tokio::spawn(fut.clone());
        fut
    }

    /// An entry for `value` written at `now`, TTLs jittered.
    fn entry(&self, value: Option<V>, now: u64, load_nanos: u64) -> Entry<V> {
        let o = &self.inner.options;
        let stretch = if o.jitter > 0.0 {
            1.0 + o.jitter * rand::random::<f64>()
        } else {
            1.0
        };
        let (soft, hard) = match &value {
            Some(_) => (o.soft_ttl.unwrap_or(o.ttl).min(o.ttl), o.ttl),
            None => {
                let n = o.negative_ttl.unwrap_or_default();
                (n, n)
            }
        };
        let hard_at = now.saturating_add(duration_to_nanos(hard.mul_f64(stretch)));
        Entry {
            value,
            soft_at: now.saturating_add(duration_to_nanos(soft.mul_f64(stretch))),
            hard_at,
            keep_until: hard_at.saturating_add(duration_to_nanos(o.max_stale.unwrap_or_default())),
            retry_at: 0,
            load_nanos,
        }
    }
}
