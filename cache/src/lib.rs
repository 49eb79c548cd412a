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
//! The in-process tier is moka; with the `redis` feature a Redis tier (L2) is shared by every
//! instance, with a load lease across instances (module `redis`). Namespace versions, pub/sub
//! invalidation and the tower layer are not in this release yet (see `CHANGELOG.md`). Freshness is measured on a [`Clock`], so tests drive it with
//! [`ManualClock`] or Tokio's paused time.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod stats;
mod tiered;

pub use floodwall_core::{Clock, ManualClock, SystemClock};
pub use stats::{Stats, StatsSnapshot};
pub use tiered::{CacheError, Fetched, TieredCache, TieredCacheBuilder};
