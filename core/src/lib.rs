//! # floodwall-core
//!
//! The pieces every floodwall crate shares:
//!
//! - [`clock`]: injectable monotonic time — [`SystemClock`] in production, [`ManualClock`] in
//!   tests, so time-dependent behaviour is tested without sleeping;
//! - [`key`]: collision-free, length-bounded keys with a Redis Cluster hash tag, safe to build
//!   from user input;
//! - [`health`]: the per-node health gate ([`HealthGate`](health::HealthGate), with the default
//!   [`NodeBreaker`](health::NodeBreaker)) that keeps one failing Redis node from blocking
//!   the others;
//! - `redis` (feature `redis`): one connection handle over standalone Redis, Redis Cluster and
//!   Sentinel, and the **store path** every Redis-backed store takes
//!   ([`StoreOptions`](crate::redis::StoreOptions) → [`StorePath`](crate::redis::StorePath)):
//!   bounded calls routed per node, Lua scripts, one error mapping into [`StoreError`], and
//!   the shared versioned [`envelope`] for stored values.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::{Clock, Keyspace, ManualClock};
//!
//! // Time that tests drive by hand.
//! let clock = ManualClock::new();
//! let t0 = clock.now_nanos();
//! clock.advance(Duration::from_secs(30));
//! assert_eq!(clock.elapsed_since(t0), Duration::from_secs(30));
//!
//! // Keys built from user input: escaped, bounded, hash-tagged.
//! let limits = Keyspace::new("rl", 1)?;
//! let key = limits.key("tenant:7").part("per-second").build();
//! assert_eq!(key.as_str(), "rl:v1:{tenant%3A7}:per-second");
//! # Ok::<(), floodwall_core::KeyError>(())
//! ```
//!
//! ## Features
//!
//! - `redis` — [`RedisConnection`](crate::redis::RedisConnection),
//!   [`StoreOptions`](crate::redis::StoreOptions) and [`Script`](crate::redis::Script), on
//!   redis-rs 1.x (`tokio-comp`, `cluster-async`).
//! - `tls` — `rediss://` URLs through rustls (implies `redis`).
//! - `tokio` — `TokioClock`, a [`Clock`] on Tokio's (pausable) time.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod clock;
pub mod envelope;
pub mod error;
pub mod health;
pub mod key;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod problem;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod slot;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod task;

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use clock::TokioClock;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, KeyError, StoreError};
pub use key::{Key, Keyspace};

/// A `NonZero` integer checked when the program is built: `nonzero!(100)` where a
/// `NonZeroUsize` (or any `NonZero<T>`) is expected; `nonzero!(0)` does not compile.
/// Builders that take counts (`max_attempts`, a bulkhead's slots, a registry's capacity) take
/// `NonZero` values so that zero is refused by the type, and this writes them without an
/// `unwrap`.
///
/// ```
/// use std::num::{NonZeroU32, NonZeroUsize};
/// use floodwall_core::nonzero;
///
/// let attempts: NonZeroU32 = nonzero!(3);
/// let slots: NonZeroUsize = nonzero!(16);
/// assert_eq!((attempts.get(), slots.get()), (3, 16));
/// ```
///
/// ```compile_fail
/// let none: std::num::NonZeroU32 = floodwall_core::nonzero!(0);
/// ```
#[macro_export]
macro_rules! nonzero {
    ($n:expr $(,)?) => {
        const {
            match ::core::num::NonZero::new($n) {
                ::core::option::Option::Some(n) => n,
                ::core::option::Option::None => {
                    ::core::panic!("nonzero!(0): the value must not be zero")
                }
            }
        }
    };
}

/// The README's example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
