//! # floodwall-limiter
//!
//! floodwall-limiter limits how much each key (user, IP, API token) may send: GCRA, leaky bucket, fixed window, sliding log and sliding counter, in memory or on Redis / Redis Cluster, exact across instances.
//!
//! This release of the crate holds the shared time source its primitives are driven by; the
//! primitives themselves arrive in the following releases (see `CHANGELOG.md`). Every
//! time-dependent part reads time through [`Clock`], so tests drive it with [`ManualClock`]:
//!
//! ```
//! use std::time::Duration;
//! use floodwall_limiter::{Clock, ManualClock};
//!
//! let clock = ManualClock::new();
//! clock.advance(Duration::from_millis(250));
//! assert_eq!(clock.now_nanos(), 250_000_000);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use floodwall_core::{Clock, ManualClock, SystemClock};
