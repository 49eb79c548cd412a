//! The [`TieredCache`]'s builder: capacity, freshness, timeouts and the Redis tier.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::clock::mul_f64_saturating;
use floodwall_core::{Clock, SystemClock};

use crate::TieredCache;
use crate::store::Tier2;
use crate::tiered::{Entry, Inner, Options, Subscribe, Weigher};

/// The longest time-to-live moka accepts.
const MOKA_MAX_TTL: Duration = Duration::from_secs(1_000 * 365 * 86_400);

/// Builds a [`TieredCache`].
pub struct TieredCacheBuilder<K, V> {
    pub(crate) max_capacity: u64,
    pub(crate) l2: Option<Arc<dyn Tier2<K, V>>>,
    pub(crate) subscribe: Option<Subscribe<K, V>>,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) options: Options,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) name: String,
}

impl<K, V> fmt::Debug for TieredCacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("max_capacity", &self.max_capacity)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<K, V> TieredCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Starts a builder: 10,000 entries, a 5-minute TTL, no stale phase, no fail-safe.
    pub fn builder() -> TieredCacheBuilder<K, V> {
        static CACHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = CACHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TieredCacheBuilder {
            name: format!("cache-{n}"),
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
                        crate::redis::Drop::All => {
                            inner.l1.invalidate_all();
                            inner.tags.distrust_all();
                        }
                        crate::redis::Drop::Tag(name, v) => {
                            inner.tags.announced(&name, v, inner.clock.now_nanos());
                        }
                        // L1 stays, distrusted: no hits, but the fail-safe may serve from it.
                        crate::redis::Drop::Down => {}
                    }
                }))
            }
        }));
        self.l2 = Some(adapter);
        self
    }

    /// The cache's name: the `cache` label of its metrics, so two caches in one process
    /// report apart. Default `cache-<n>`, unique in the process.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Builds the cache.
    pub fn build(self) -> TieredCache<K, V> {
        #[cfg(feature = "metrics")]
        crate::describe_metrics();
        let o = &self.options;
        // moka drops entries once even fail-safe cannot use them (a backstop: freshness is
        // decided on `clock`). Saturating, and no longer than moka takes (1,000 years): a
        // `Duration::MAX` TTL is "never expires".
        let longest = mul_f64_saturating(o.ttl, 1.0 + o.jitter)
            .saturating_add(o.max_stale.unwrap_or_default())
            .saturating_add(o.negative_ttl.unwrap_or_default())
            .saturating_add(Duration::from_secs(1))
            .min(MOKA_MAX_TTL);
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
                flights: Mutex::new(HashMap::new()),
                options: self.options,
                clock: self.clock,
                stats: crate::stats::Stats::named(&self.name),
                tags: crate::tags::Registry::default(),
            }),
        };
        if let Some(subscribe) = self.subscribe {
            subscribe(Arc::downgrade(&cache.inner));
        }
        cache
    }
}
