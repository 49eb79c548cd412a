//! [`TieredCache`]: the L1 cache, request coalescing and the freshness rules.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;
use floodwall_core::{Clock, StoreError};
use futures::future::{BoxFuture, Shared};

use floodwall_core::BoxError;

use crate::store::{Expiry, Found, Tier2};

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
    /// A value to cache under these tags, known only once loaded (e.g. from an HTTP
    /// response's `Cache-Tag`); see [`tags`](crate::tags) for how a load racing an
    /// invalidation is handled.
    Tagged(V, crate::Tags),
}

/// One cached value (or a cached "not found") and its clock readings.
#[derive(Debug)]
pub(crate) struct Entry<V> {
    pub(crate) value: Option<V>,
    /// Fresh until here; stale (served, refreshed in the background) until `hard_at`.
    pub(crate) soft_at: u64,
    /// Expired from here; kept for fail-safe until `keep_until`.
    pub(crate) hard_at: u64,
    pub(crate) keep_until: u64,
    /// No loader call for this key before this time (fail-safe throttle).
    pub(crate) retry_at: u64,
    /// How long the load that produced it took (XFetch's delta).
    pub(crate) load_nanos: u64,
    /// Its cache tags and their versions when stored: dead once one moved on.
    pub(crate) tags: crate::tags::EntryTags,
    /// For an entry with its own lifetimes (a revalidating load's): kept until here, past
    /// `hard_at` and `keep_until`, for the next load to revalidate.
    pub(crate) retain_until: Option<u64>,
}

/// How a [`TieredCache`] treats time; see [`TieredCacheBuilder`](crate::TieredCacheBuilder).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) ttl: Duration,
    pub(crate) soft_ttl: Option<Duration>,
    pub(crate) jitter: f64,
    pub(crate) max_stale: Option<Duration>,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) xfetch_beta: Option<f64>,
}

pub(crate) type Subscribe<K, V> = Box<dyn FnOnce(std::sync::Weak<Inner<K, V>>) + Send>;

pub(crate) type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;

pub(crate) type Load<V> = Shared<BoxFuture<'static, Result<Option<V>, CacheError>>>;

pub(crate) struct Inner<K, V> {
    pub(crate) l1: moka::sync::Cache<K, Arc<Entry<V>>>,
    pub(crate) l2: Option<Arc<dyn Tier2<K, V>>>,
    /// The namespace generation L1's entries belong to.
    pub(crate) l1_generation: std::sync::atomic::AtomicU64,
    pub(crate) inflight: Mutex<HashMap<K, Load<V>>>,
    /// The revalidating loads in flight (run by their callers): each key's, and the channel
    /// its waiters watch (closed when the load ends, however it ends).
    pub(crate) flights: Mutex<HashMap<K, tokio::sync::watch::Receiver<()>>>,
    pub(crate) options: Options,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) stats: crate::stats::Stats,
    /// The cache tags this instance knows.
    pub(crate) tags: crate::tags::Registry,
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
    pub(crate) inner: Arc<Inner<K, V>>,
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

impl<K, V> TieredCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The value for `key` if cached and not expired (fresh or stale): from L1, else from
    /// Redis (then kept in L1); loads nothing.
    pub async fn get(&self, key: &K) -> Option<V> {
        let now = self.inner.clock.now_nanos();
        if self.l1_usable() {
            match self.inner.l1.get(key) {
                Some(e) if now < e.hard_at && crate::tags::live(&e.tags) => {
                    self.inner.stats.hit();
                    return e.value.clone();
                }
                _ => self.inner.stats.miss(),
            }
        }
        self.read_l2(key, true).await.ok().flatten().flatten()
    }

    /// Whether L1 may answer hits now (no invalidation bus outage), without side effects.
    #[inline]
    pub(crate) fn l1_trusted(&self) -> bool {
        self.inner.l2.as_ref().is_none_or(|l2| !l2.bypass_l1())
    }

    /// Whether L1 may answer now; with Redis, also drops L1 when the namespace generation
    /// moved on.
    #[inline]
    pub(crate) fn l1_usable(&self) -> bool {
        let Some(l2) = &self.inner.l2 else {
            return true;
        };
        if !self.l1_trusted() {
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

    pub(crate) async fn write_l2(&self, key: &K, entry: &Entry<V>, now: u64) {
        let Some(l2) = &self.inner.l2 else {
            return;
        };
        let left = |at: u64| Duration::from_nanos(at.saturating_sub(now));
        let expiry = match entry.retain_until {
            Some(retain) => Expiry {
                soft: left(entry.soft_at),
                hard: left(entry.hard_at),
                keep: left(retain),
                fail_safe: Some(left(entry.keep_until)),
            },
            None => Expiry {
                soft: left(entry.soft_at),
                hard: left(entry.hard_at),
                keep: left(entry.keep_until),
                fail_safe: None,
            },
        };
        let tags: Vec<(&str, u64)> = entry
            .tags
            .iter()
            .flatten()
            .map(|(s, v)| (&*s.name, *v))
            .collect();
        match l2.write(key, &entry.value, &tags, expiry).await {
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
    pub(crate) async fn read_l2(
        &self,
        key: &K,
        accept_stale: bool,
    ) -> Result<Option<Option<V>>, ()> {
        let usable =
            |f: &Found<V>| !f.soft_left.is_zero() || (accept_stale && !f.hard_left.is_zero());
        Ok(self
            .read_l2_entry(key, usable)
            .await?
            .map(|e| e.value.clone()))
    }

    /// Reads `key` from L2 and, when `usable`, keeps it in L1 and answers it; `None` on a
    /// miss; `Err(())` when Redis failed.
    pub(crate) async fn read_l2_entry(
        &self,
        key: &K,
        usable: impl Fn(&Found<V>) -> bool,
    ) -> Result<Option<Arc<Entry<V>>>, ()> {
        let Some(l2) = &self.inner.l2 else {
            return Ok(None);
        };
        let inner = &self.inner;
        inner.stats.l2_read();
        match l2.read(key).await {
            Ok(Some(found)) if usable(&found) => {
                // An entry whose tag was invalidated since it was stored is a miss.
                let Some(tags) = self.tags_from_l2(&found.tags).await else {
                    return Ok(None);
                };
                inner.stats.l2_hit();
                let now = inner.clock.now_nanos();
                let at = |left: Duration| now.saturating_add(duration_to_nanos(left));
                let hard_at = at(found.hard_left);
                let (keep_until, retain_until) = match found.keep_left {
                    // An entry with its own lifetimes: kept (by L1's own bound) to revalidate.
                    Some(keep) => (at(keep), Some(u64::MAX)),
                    None => (
                        hard_at.saturating_add(duration_to_nanos(
                            inner.options.max_stale.unwrap_or_default(),
                        )),
                        None,
                    ),
                };
                let entry = Arc::new(Entry {
                    value: found.value,
                    soft_at: at(found.soft_left),
                    hard_at,
                    keep_until,
                    retry_at: 0,
                    load_nanos: 0,
                    tags,
                    retain_until,
                });
                inner.l1.insert(key.clone(), entry.clone());
                Ok(Some(entry))
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
        // While L1 cannot be trusted (the invalidation bus is down), its entries answer no
        // hit, but still stand in when the load fails (fail-safe) or is slow (soft timeout).
        let trusted = self.l1_usable();
        // An entry whose tag was invalidated is gone: not even the fail-safe serves it.
        let cached = inner.l1.get(&key).filter(|e| crate::tags::live(&e.tags));
        if trusted && let Some(e) = &cached {
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
                    tags: old.tags.clone(),
                    retain_until: old.retain_until,
                };
                inner.l1.insert(key, Arc::new(throttled));
                Ok(old.value.clone())
            }
            (Err(e), None) => Err(e),
        }
    }
}
