//! # floodwall
//!
//! Keep a service standing when the things around it misbehave: a downstream that slows down or
//! fails, clients that retry in storms, traffic above what a user may send, caches that expire
//! all at once, requests that arrive twice.
//!
//! This facade re-exports the floodwall crates behind features:
//!
//! | module | crate | feature |
//! |---|---|---|
//! | [`core`] | floodwall-core: clocks, keys, Redis plumbing | always |
//! | `resilience` | floodwall-resilience | `resilience` (default) |
//! | `limiter` | floodwall-limiter | `limiter` (default) |
//! | `cache` | floodwall-cache | `cache` (default) |
//! | `idempotency` | floodwall-idempotency | `idempotency` (default) |
//!
//! Other features: `redis` (Redis / Redis Cluster stores), `tower` (layers), `http`
//! (HTTP-aware layers), `metrics` (the `metrics` facade), `full` (all of them). The default
//! build needs no server and pulls in no Redis client.
//!
//! ```
//! use std::time::Duration;
//! use floodwall::core::{Clock, Keyspace, ManualClock};
//!
//! let clock = ManualClock::new();
//! clock.advance(Duration::from_secs(1));
//! assert_eq!(clock.now_nanos(), 1_000_000_000);
//!
//! let sessions = Keyspace::new("session", 3)?;
//! assert_eq!(sessions.key("user-9").build().as_str(), "session:v3:{user-9}");
//! # Ok::<(), floodwall::core::KeyError>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use floodwall_core as core;

#[cfg(feature = "resilience")]
#[cfg_attr(docsrs, doc(cfg(feature = "resilience")))]
pub use floodwall_resilience as resilience;

#[cfg(feature = "limiter")]
#[cfg_attr(docsrs, doc(cfg(feature = "limiter")))]
pub use floodwall_limiter as limiter;

#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub use floodwall_cache as cache;

#[cfg(feature = "idempotency")]
#[cfg_attr(docsrs, doc(cfg(feature = "idempotency")))]
pub use floodwall_idempotency as idempotency;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
