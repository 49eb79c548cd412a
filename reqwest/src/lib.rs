//! # floodwall-reqwest
//!
//! floodwall's resilience for [reqwest](https://docs.rs/reqwest) clients, as
//! [`reqwest-middleware`](https://docs.rs/reqwest-middleware) middleware:
//!
//! - [`TimeoutMiddleware`]: a bound on each attempt (put it after [`RetryMiddleware`]) or on the whole call
//!   (before it);
//! - [`RetryMiddleware`]: floodwall's retry (backoff, jitter, retry budget) on `408`, `429`, `5xx`,
//!   connection errors and attempt timeouts, honouring `Retry-After`; idempotent methods
//!   only — and a `POST`/`PATCH` only when it carries an `Idempotency-Key`;
//! - [`IdempotencyKey`]: gives each logical `POST`/`PATCH` one generated `Idempotency-Key`,
//!   reused by all its retries (as payment SDKs do), so a server that honours the header
//!   charges once;
//! - [`HostBreaker`] and [`HostBulkhead`]: a circuit breaker and a bulkhead per host, from a
//!   bounded [`Registry`](floodwall_resilience::registry::Registry) — a dead host is shed
//!   without touching the others;
//! - [`HostRateLimit`]: a client-side rate limit per host that waits for its own quota (in memory,
//!   or shared by every instance through a Redis-backed `RateLimiter`);
//! - [`HostPipeline`]: all of the above — retry, breaker, bulkhead and timeouts per host,
//!   plus a rate limit counted per attempt, hedging of idempotent requests and a fallback
//!   answer — as one middleware, the cheapest way to the whole stack;
//! - [`HttpCache`]: a `GET` response cache in a floodwall `TieredCache` that honours
//!   `Cache-Control` (`max-age`, `s-maxage`, `no-store`, `private`, `no-cache`,
//!   `stale-while-revalidate`, `stale-if-error`), revalidates with `ETag` / `Last-Modified`,
//!   coalesces concurrent misses — and, with the cache's Redis tier, is shared by every
//!   instance.
//!
//! ```no_run
//! use std::num::{NonZeroU32, NonZeroUsize};
//! use std::time::Duration;
//! use floodwall_reqwest::{HostBreaker, HostBulkhead, IdempotencyKey, RetryMiddleware, TimeoutMiddleware};
//! use floodwall_resilience::circuit_breaker::CircuitBreaker;
//! use floodwall_resilience::retry::{Backoff, Jitter};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let retry = floodwall_resilience::retry::Retry::builder()
//!     .max_attempts(NonZeroU32::new(3).unwrap())
//!     .backoff(Backoff::Exponential { initial: Duration::from_millis(50), multiplier: 2.0 })
//!     .jitter(Jitter::Full)
//!     .build();
//! // reqwest and reqwest-middleware are re-exported: their versions always match this crate's.
//! use floodwall_reqwest::{reqwest, reqwest_middleware};
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(IdempotencyKey::new())
//!     .with(RetryMiddleware::new(retry))
//!     .with(HostBreaker::new(NonZeroUsize::new(1000).unwrap(), |host| {
//!         CircuitBreaker::builder().name(format!("api:{host}")).build().expect("valid")
//!     }))
//!     .with(HostBulkhead::per_host(NonZeroUsize::new(1000).unwrap(), NonZeroUsize::new(32).unwrap()))
//!     .with(TimeoutMiddleware::new(Duration::from_secs(2)))
//!     .build();
//! let resp = client.post("http://127.0.0.1:8080/charges").body("{}").send().await?;
//! # let _ = resp; Ok(()) }
//! ```
//!
//! Each request can carry its own settings ([`RequestSettings`]: attempt and call bounds,
//! attempt limit, its idempotency key); a refusal is a [`FloodwallError`] found with
//! [`ErrorExt::floodwall`]; [`RetryMiddleware`] and [`HostPipeline`] open a span per request and per
//! attempt ([`span`]). Factories that can fail ([`HostBreaker::try_new`],
//! [`HostPipeline::try_new`]) are tried when built.
//!
//! Order matters: middleware runs in the order added. [`HttpCache`] first (a hit sends
//! nothing), [`IdempotencyKey`] before [`RetryMiddleware`]
//! (one key per logical request), [`RetryMiddleware`] before the breaker, the bulkhead and the attempt
//! [`TimeoutMiddleware`] (each attempt passes them).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod error;
mod host;
mod pipeline;
mod retry;
mod rules;
mod settings;
pub mod span;
mod throttle;

pub use cache::{HttpCache, HttpCacheStats, StoredResponse};
pub use error::{ErrorExt, FloodwallError, RefusalKind};
/// `nonzero!(3)`: a `NonZero` count checked at build time (from floodwall-core).
pub use floodwall_resilience::nonzero;
pub use host::{
    HostBreaker, HostBulkhead, HostRateLimit, PROBE_HOST, RateLimitConfigError, host_key,
};
pub use pipeline::{FallbackFn, HostPipeline, HostStages};
pub use retry::{IdempotencyKey, RetryMiddleware, TimeoutMiddleware};
pub use rules::{
    ClassifyFn, RetryFn, host_outcome, is_retryable, is_retryable_error, is_retryable_response,
};
pub use settings::RequestSettings;
pub use throttle::HostThrottle;

/// The reqwest this crate builds on (0.13), so a client needs no version of its own.
pub use reqwest;
/// The reqwest-middleware this crate's middleware plugs into (0.5): build the client with
/// [`reqwest_middleware::ClientBuilder`] from here, and its version always matches.
pub use reqwest_middleware;

/// The README's example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
