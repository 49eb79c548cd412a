//! # floodwall-resilience
//!
//! floodwall-resilience keeps a call standing when what it calls misbehaves: circuit breaker, retry with jitter and a shared retry budget, timeouts, bulkheads, fallback, hedging, adaptive concurrency and fault injection.
//!
//! This release of the crate holds the shared time source its primitives are driven by; the
//! primitives themselves arrive in the following releases (see `CHANGELOG.md`). Every
//! time-dependent part reads time through [`Clock`], so tests drive it with [`ManualClock`]:
//!
//! ```
//! use std::time::Duration;
//! use floodwall_resilience::{Clock, ManualClock};
//!
//! let clock = ManualClock::new();
//! clock.advance(Duration::from_millis(250));
//! assert_eq!(clock.now_nanos(), 250_000_000);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use floodwall_core::{Clock, ManualClock, SystemClock};
