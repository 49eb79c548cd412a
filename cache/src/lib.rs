//! # floodwall-cache
//!
//! floodwall-cache is a tiered cache: L1 in process (moka), L2 on Redis, with per-key load coalescing, versioned keys, stale-while-revalidate and invalidation that reaches every instance.
//!
//! This release of the crate holds the shared time source its primitives are driven by; the
//! primitives themselves arrive in the following releases (see `CHANGELOG.md`). Every
//! time-dependent part reads time through [`Clock`], so tests drive it with [`ManualClock`]:
//!
//! ```
//! use std::time::Duration;
//! use floodwall_cache::{Clock, ManualClock};
//!
//! let clock = ManualClock::new();
//! clock.advance(Duration::from_millis(250));
//! assert_eq!(clock.now_nanos(), 250_000_000);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use floodwall_core::{Clock, ManualClock, SystemClock};
