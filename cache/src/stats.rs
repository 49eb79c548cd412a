//! Counters a cache keeps about itself (and, with the `metrics` feature, reports).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a cache (see [`StatsSnapshot`] for their meaning).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    coalesced: AtomicU64,
    stale: AtomicU64,
    l2_reads: AtomicU64,
    l2_hits: AtomicU64,
    l2_errors: AtomicU64,
    l2_decode_errors: AtomicU64,
    invalidations_received: AtomicU64,
    invalidations_sent: AtomicU64,
    revalidated: AtomicU64,
    #[cfg(feature = "metrics")]
    keys: Keys,
}

/// The cache's metric names, in the order of [`Keys`].
#[cfg(feature = "metrics")]
const NAMES: [&str; 12] = [
    "floodwall_cache_l1_hits_total",
    "floodwall_cache_l1_misses_total",
    "floodwall_cache_loads_total",
    "floodwall_cache_coalesced_waiters_total",
    "floodwall_cache_stale_served_total",
    "floodwall_cache_l2_reads_total",
    "floodwall_cache_l2_hits_total",
    "floodwall_cache_l2_errors_total",
    "floodwall_cache_l2_decode_errors_total",
    "floodwall_cache_invalidations_received_total",
    "floodwall_cache_invalidations_sent_total",
    "floodwall_cache_revalidated_total",
];

/// Each counter's key with the cache's `cache` label, built once: counting allocates nothing.
#[cfg(feature = "metrics")]
#[derive(Debug, Default)]
struct Keys(Vec<metrics::Key>, Option<metrics::Key>);

#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[cfg(feature = "metrics")]
fn count(key: &metrics::Key) {
    metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
}

impl Stats {
    /// The counters of the cache named `name` (its metrics' `cache` label); with a recorder
    /// installed, every series exists from now on, at zero.
    pub(crate) fn named(name: &str) -> Stats {
        #[cfg(feature = "metrics")]
        {
            let keys: Vec<metrics::Key> = NAMES
                .iter()
                .map(|n| {
                    metrics::Key::from_parts(
                        *n,
                        vec![metrics::Label::new("cache", name.to_owned())],
                    )
                })
                .collect();
            metrics::with_recorder(|r| {
                for k in &keys {
                    r.register_counter(k, &METADATA).increment(0);
                }
            });
            let load = metrics::Key::from_parts(
                "floodwall_cache_load_duration_seconds",
                vec![metrics::Label::new("cache", name.to_owned())],
            );
            Stats {
                keys: Keys(keys, Some(load)),
                ..Stats::default()
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Stats::default()
        }
    }
}

/// A reading of a cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Lookups answered from L1 (fresh or stale).
    pub hits: u64,
    /// Lookups L1 could not answer.
    pub misses: u64,
    /// Loader calls.
    pub loads: u64,
    /// Callers that joined a load already in flight instead of starting one.
    pub coalesced: u64,
    /// Stale values served (stale-while-revalidate, fail-safe, soft timeout).
    pub stale_served: u64,
    /// Reads of the Redis tier (one per coalesced load, plus lease polls).
    pub l2_reads: u64,
    /// Of those, values found.
    pub l2_hits: u64,
    /// Redis calls that failed (timeout, unreachable, breaker open).
    pub l2_errors: u64,
    /// Redis values that did not decode (treated as misses).
    pub l2_decode_errors: u64,
    /// Invalidations received from other instances (and subscription drops / returns).
    pub invalidations_received: u64,
    /// Invalidations published (by `set`, `invalidate`, `invalidate_namespace`).
    pub invalidations_sent: u64,
    /// Revalidating loads that found the entry they replace unchanged (an HTTP `304`) and
    /// kept it with new lifetimes.
    pub revalidated: u64,
}

macro_rules! bump {
    ($f:ident, $field:ident, $index:literal) => {
        pub(crate) fn $f(&self) {
            self.$field.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            count(&self.keys.0[$index]);
        }
    };
}

impl Stats {
    bump!(hit, hits, 0);
    bump!(miss, misses, 1);
    bump!(load, loads, 2);
    bump!(coalesced, coalesced, 3);
    bump!(stale, stale, 4);
    bump!(l2_read, l2_reads, 5);
    bump!(l2_hit, l2_hits, 6);
    bump!(l2_error, l2_errors, 7);
    bump!(l2_decode_error, l2_decode_errors, 8);
    bump!(revalidated, revalidated, 11);

    /// An invalidation from another instance (any second tier's bus; Redis's today).
    #[allow(dead_code, reason = "called by a second tier's invalidation bus")]
    pub(crate) fn invalidation_received(&self) {
        self.invalidations_received.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        count(&self.keys.0[9]);
    }

    /// When a load starts, if a recorder is installed (the facade's fallback no-op recorder
    /// is zero-sized).
    #[inline]
    pub(crate) fn start_load(&self) -> Option<std::time::Instant> {
        #[cfg(feature = "metrics")]
        {
            floodwall_core::metrics::recorder_installed().then(std::time::Instant::now)
        }
        #[cfg(not(feature = "metrics"))]
        None
    }

    /// Records how long the load that started at `started` took (its loader's run).
    #[inline]
    pub(crate) fn finish_load(&self, started: Option<std::time::Instant>) {
        #[cfg(feature = "metrics")]
        if let (Some(t), Some(key)) = (started, &self.keys.1) {
            let secs = t.elapsed().as_secs_f64();
            metrics::with_recorder(|r| r.register_histogram(key, &METADATA).record(secs));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = started;
    }

    pub(crate) fn invalidation_sent(&self) {
        self.invalidations_sent.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        count(&self.keys.0[10]);
    }

    /// The counters now.
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            stale_served: self.stale.load(Ordering::Relaxed),
            l2_reads: self.l2_reads.load(Ordering::Relaxed),
            l2_hits: self.l2_hits.load(Ordering::Relaxed),
            l2_errors: self.l2_errors.load(Ordering::Relaxed),
            l2_decode_errors: self.l2_decode_errors.load(Ordering::Relaxed),
            invalidations_received: self.invalidations_received.load(Ordering::Relaxed),
            invalidations_sent: self.invalidations_sent.load(Ordering::Relaxed),
            revalidated: self.revalidated.load(Ordering::Relaxed),
        }
    }
}
