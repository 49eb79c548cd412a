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
//! Other features:
//!
//! | feature | enables |
//! |---|---|
//! | `redis` | Redis / Redis Cluster / Sentinel stores for the limiter, the cache and idempotency |
//! | `redis-tls` | `rediss://` connections (rustls) on every topology |
//! | `postgres` | the idempotency store on PostgreSQL (sqlx), transactional and phased runs |
//! | `reqwest` | `reqwest` module: reqwest-middleware for timeouts, retry, a breaker and a bulkhead per host, a client rate limit, keyed `POST` retries, a `GET` response cache (shared through Redis with `redis`) |
//! | `tower` | `tower::Layer`s for every primitive |
//! | `http` | HTTP-aware layers (status classification, `Retry-After`, 429, `Idempotency-Key`) |
//! | `metrics` | metrics through the `metrics` facade (see `dashboards/floodwall.json`) |
//! | `full` | all of the above |
//!
//! The default build needs no server and pulls in no Redis client.
//!
//! # One API grammar
//!
//! Every crate of the family follows the same rules, so what you learn from one holds for all:
//!
//! - **Redis is configured once**: a [`RedisConnection`](core::redis::RedisConnection)
//!   (standalone, Cluster, Sentinel; `rediss://` with `redis-tls`) wrapped in
//!   [`StoreOptions`](core::redis::StoreOptions) (keyspace, call bound, health gate) is what
//!   every Redis store takes: `RateLimiter::builder().redis(options)`,
//!   `RedisTier::new(options)`, `RedisStore::new(options)`.
//! - **Layers keep the inner service's error type.** A layer that refuses a request either
//!   answers it (the HTTP layers: `429`, `409`, `502`, …) or returns the inner error type built
//!   `From` its rejection (`S::Error: From<Rejected>`; `tower::BoxError` always qualifies). No
//!   layer erases errors to a box of its own, so an HTTP layer sits on an axum route without a
//!   `HandleErrorLayer`.
//! - **Names**: a tower service is its layer's name with `Service` for `Layer`
//!   (`RateLimitLayer` → `RateLimitService`, `HttpCacheLayer` → `HttpCacheService`,
//!   `CircuitBreakerLayer` → `CircuitBreakerService`), so no service shares a name with a
//!   primitive's own handle. Services expose `get_ref`, `get_mut`, `into_inner`. HTTP code
//!   lives in each crate's `http` module.
//! - **Builders** validate in `build()` and return an error naming the field, or cannot fail
//!   and return the value — never a `Result` that cannot be `Err`, never a silent clamp.
//!   Setters are named. A `Duration` of `MAX` means unbounded; a zero that makes no sense is a
//!   build error.
//! - **Hot-path futures** are pin-projected state machines; a box is taken only where the
//!   request waits on a store anyway (a Redis decision, a cache load, the idempotency store
//!   and the request body it fingerprints).
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
pub use floodwall_core::nonzero;

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

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use floodwall_reqwest as reqwest;

/// Registers the description and unit of every metric the enabled floodwall crates emit with
/// the installed `metrics` recorder, so an exporter shows them (`# HELP` in Prometheus). Each
/// primitive does it when built; call this after installing a recorder if primitives were
/// built before it.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
    floodwall_core::task::describe_metrics();
    #[cfg(feature = "resilience")]
    resilience::describe_metrics();
    #[cfg(feature = "limiter")]
    limiter::describe_metrics();
    #[cfg(feature = "cache")]
    cache::describe_metrics();
    #[cfg(feature = "idempotency")]
    idempotency::describe_metrics();
}

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
