//! # floodwall-limiter
//!
//! floodwall-limiter limits how much each key (user, IP, API token) may send.
//!
//! This release has the quota and decision types and the five algorithms in memory, for one
//! key: [`gcra`] (lock-free), [`leaky`] (meter and queue), [`window`] (fixed window, sliding
//! window counter) and [`sliding_log`]; the keyed and Redis stores, tiers and the HTTP layer
//! follow (see `CHANGELOG.md`). Every limiter reads time through a [`Clock`],
//! so tests drive it with [`ManualClock`]:
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use floodwall_limiter::{ManualClock, Quota, gcra::Gcra};
//!
//! let clock = ManualClock::new();
//! let per_user = Gcra::with_clock(Quota::per_minute(NonZeroU32::new(60).unwrap()), clock.clone());
//! let d = per_user.check();
//! assert!(d.allowed);
//! assert_eq!(d.limit, 60);
//! assert_eq!(d.remaining, 59);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod algorithm;
mod decision;
pub mod gcra;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod keyed;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod layer;
pub mod leaky;
mod limiter;
mod metrics;
mod quota;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod sliding_log;
mod tiers;
pub mod window;

pub use algorithm::Algorithm;
pub use decision::{Decision, InsufficientCapacity};
pub use floodwall_core::{Clock, ManualClock, SystemClock};
pub use limiter::{
    Binding, ConfigError, Degraded, FailurePolicy, Limit, LimitError, MAX_LIMITS, RateLimiter,
    RateLimiterBuilder, Verdict,
};
pub use quota::Quota;
pub use tiers::{QuotaResolver, Tiers};
