//! # floodwall-cache
//!
//! floodwall-cache puts a bounded in-process cache in front of a slow data source, with
//! request coalescing (one load per key however many callers miss at once),
//! stale-while-revalidate, probabilistic early refresh (XFetch), fail-safe (serve the last
//! good value while the source is failing), loader timeouts, negative caching and TTL jitter.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use floodwall_cache::TieredCache;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cache: TieredCache<String, Arc<str>> = TieredCache::builder()
//!     .ttl(Duration::from_secs(60))
//!     .soft_ttl(Duration::from_secs(45))
//!     .fail_safe(Duration::from_secs(3600), Duration::from_secs(5))
//!     .build();
//! let loads = Arc::new(AtomicU32::new(0));
//! let mut callers = Vec::new();
//! for _ in 0..100 {
//!     let (cache, loads) = (cache.clone(), loads.clone());
//!     callers.push(tokio::spawn(async move {
//!         cache.get_or_load("user:42".to_string(), move || async move {
//!             loads.fetch_add(1, Ordering::SeqCst);
//!             tokio::time::sleep(Duration::from_millis(20)).await; // the slow source
//!             Ok::<_, std::io::Error>(Some(Arc::from("Ada")))
//!         }).await
//!     }));
//! }
//! for c in callers {
//!     assert_eq!(c.await.unwrap().unwrap().as_deref(), Some("Ada"));
//! }
//! assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for 100 concurrent misses");
//! # }
//! ```
//!
//! # What is here
//!
//! - [`TieredCache`]: L1 moka (bounded by entries or weight), `get`, `get_or_load`
//!   (coalesced), `get_or_fetch` (with "do not store" answers), `set`, `invalidate`,
//!   `invalidate_namespace` / `clear`; cache [`tags`] (`set_tagged`, `get_or_load_tagged`,
//!   `Fetched::Tagged`, `invalidate_tag`: one version bump per tag, on every instance); soft
//!   and hard TTL with jitter, stale-while-revalidate with one background refresh, XFetch
//!   early refresh, fail-safe with a retry throttle, soft and hard loader timeouts, negative
//!   caching; [`StatsSnapshot`].
//! - [`revalidate`]: [`TieredCache::get_or_revalidate`], loads that see the entry they
//!   replace and store values with [`Lifetimes`] of their own (fresh, stale while
//!   revalidating, stale on error), run in the caller's task and coalesced — the engine of
//!   floodwall-reqwest's HTTP cache.
//! - (feature `redis`, module `redis`) the Redis tier (L2): values through a pluggable serde
//!   codec (compact binary by default, JSON available) in a versioned envelope; keys
//!   `namespace:vSCHEMA:{key}:GENERATION`, so a schema bump never reads old bytes and a
//!   namespace bump invalidates everything in O(1); one L2 read per coalesced load; an
//!   optional load lease (`SET NX PX`) so one instance loads while the others wait, with
//!   takeover when the holder dies; value-free pub/sub invalidation across instances
//!   (standalone, Cluster and Sentinel), L1 bypassed while the subscription is down; every
//!   call on floodwall-core's store path — bounded and gated per Redis node — so an L2
//!   outage degrades to L1 + loader.
//! - (feature `tower`, module `layer`) `CacheLayer`; (feature `http`, module `http`)
//!   `HttpCacheLayer`, and HTTP caching's rules written once for the family
//!   (`CacheControl`, `may_store`, `stated`: RFC 9111 and RFC 5861). Both layers keep the
//!   inner service's error type.
//! - (feature `metrics`) `floodwall_cache_l1_hits_total`, `_l1_misses_total`,
//!   `_loads_total`, `_coalesced_waiters_total`, `_stale_served_total`, `_l2_reads_total`,
//!   `_l2_hits_total`, `_l2_errors_total`, `_l2_decode_errors_total`,
//!   `_invalidations_sent_total`, `_invalidations_received_total`, `_revalidated_total` (all
//!   `floodwall_cache_`…) and the histogram `floodwall_cache_load_duration_seconds`, each
//!   labelled `cache="<name>"` (the builder's
//!   [`name`](TieredCacheBuilder::name), unique by default) and present from the cache's
//!   construction, at zero.
//!
//! Freshness is measured on a [`Clock`], so tests drive it with [`ManualClock`] or Tokio's
//! paused time.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
#[cfg(feature = "http")]
mod cache_control;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;
mod lease;
mod load;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod revalidate;
mod stats;
mod store;
pub mod tags;
mod tiered;

pub use builder::TieredCacheBuilder;
pub use floodwall_core::{Clock, ManualClock, SystemClock};
pub use revalidate::{Lifetimes, Refresh, Revalidated, Revalidation, Served};
pub use stats::StatsSnapshot;

/// Registers the description and unit of every metric this crate emits with the installed
/// `metrics` recorder (so Prometheus shows `# HELP`). Building a cache does it; call it
/// yourself after installing a recorder if caches were built before.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_histogram!(
        "floodwall_cache_load_duration_seconds",
        Unit::Seconds,
        "How long a cache's loader took, per load"
    );
    for (name, help) in [
        (
            "floodwall_cache_l1_hits_total",
            "Lookups answered from L1 (fresh or stale)",
        ),
        (
            "floodwall_cache_l1_misses_total",
            "Lookups L1 could not answer",
        ),
        ("floodwall_cache_loads_total", "Loader calls"),
        (
            "floodwall_cache_coalesced_waiters_total",
            "Callers that joined a load already in flight",
        ),
        (
            "floodwall_cache_stale_served_total",
            "Stale values served (stale-while-revalidate, fail-safe, soft timeout)",
        ),
        ("floodwall_cache_l2_reads_total", "Reads of the Redis tier"),
        (
            "floodwall_cache_l2_hits_total",
            "Reads of the Redis tier that found a value",
        ),
        (
            "floodwall_cache_l2_errors_total",
            "Redis tier calls that failed",
        ),
        (
            "floodwall_cache_l2_decode_errors_total",
            "Redis tier values that did not decode",
        ),
        (
            "floodwall_cache_invalidations_received_total",
            "Invalidations received from other instances",
        ),
        (
            "floodwall_cache_invalidations_sent_total",
            "Invalidations published",
        ),
        (
            "floodwall_cache_revalidated_total",
            "Revalidating loads that kept the entry they replace (an HTTP 304)",
        ),
    ] {
        describe_counter!(name, Unit::Count, help);
    }
}
pub use tags::{TagError, Tags};
pub use tiered::{CacheError, Fetched, TieredCache};

/// The README's example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
