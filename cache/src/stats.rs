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
    bump!(l2_read, l2_reads, "floodwall_cache_l2_reads_total");
    bump!(l2_hit, l2_hits, "floodwall_cache_l2_hits_total");
    bump!(l2_error, l2_errors, "floodwall_cache_l2_errors_total");
    bump!(
        l2_decode_error,
        l2_decode_errors,
        "floodwall_cache_l2_decode_errors_total"
    );

    #[cfg(feature = "redis")]
    pub(crate) fn invalidation_received(&self) {
        self.invalidations_received.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("floodwall_cache_invalidations_received_total").increment(1);
    }

    pub(crate) fn invalidation_sent(&self) {
        self.invalidations_sent.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("floodwall_cache_invalidations_sent_total").increment(1);
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
        }
    }
}
