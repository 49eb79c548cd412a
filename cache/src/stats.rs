//! Counters a cache keeps about itself (and, with the `metrics` feature, reports).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a cache (see [`StatsSnapshot`] for their meaning).
#[derive(Debug, Default)]
pub struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    coalesced: AtomicU64,
    stale: AtomicU64,
}

/// A reading of a cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Lookups answered from L1 (fresh or stale).
    pub hits: u64,
    /// Lookups L1 could not answer.
    pub misses: u64,
    /// Loader runs started.
    pub loads: u64,
    /// Callers that joined a load already in flight instead of starting one.
    pub coalesced: u64,
    /// Stale values served (stale-while-revalidate, fail-safe, soft timeout).
    pub stale_served: u64,
}

macro_rules! bump {
    ($f:ident, $field:ident, $metric:literal) => {
        pub(crate) fn $f(&self) {
            self.$field.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            metrics::counter!($metric).increment(1);
        }
    };
}

impl Stats {
    bump!(hit, hits, "floodwall_cache_l1_hits_total");
    bump!(miss, misses, "floodwall_cache_l1_misses_total");
    bump!(load, loads, "floodwall_cache_loads_total");
    bump!(
        coalesced,
        coalesced,
        "floodwall_cache_coalesced_waiters_total"
    );
    bump!(stale, stale, "floodwall_cache_stale_served_total");

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            stale_served: self.stale.load(Ordering::Relaxed),
        }
    }
}
