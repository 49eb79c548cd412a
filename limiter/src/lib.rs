//! # floodwall-limiter
//!
//! floodwall-limiter limits how much each key (user, IP, API token) may send — in memory, or
//! shared by every instance through Redis or Redis Cluster.
//!
//! ```
//! use std::num::NonZeroU32;
//! use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter, Tiers};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let n = |v| NonZeroU32::new(v).unwrap();
//! // Per user by pricing tier, per IP, and a global ceiling: all-or-nothing.
//! let tiers = Tiers::new("free", Quota::per_minute(n(2)))
//!     .with_tier("pro", Quota::per_minute(n(600)));
//! let limiter = RateLimiter::builder()
//!     .limit(Limit::new("user", Algorithm::Gcra, tiers.clone()).keyed_by("user"))
//!     .limit(Limit::new("ip", Algorithm::SlidingLog, Quota::per_minute(n(100))).keyed_by("ip"))
//!     .limit(Limit::new("global", Algorithm::FixedWindow, Quota::per_second(n(5_000))))
//!     .build()
//!     .unwrap();
//!
//! let request = [("user", "42"), ("ip", "203.0.113.9")];
//! assert!(limiter.check(&request).await.unwrap().allowed);
//! assert!(limiter.check(&request).await.unwrap().allowed);
//! let denied = limiter.check(&request).await.unwrap();
//! assert!(!denied.allowed);
//! assert_eq!(denied.binding.as_ref().unwrap().name.as_ref(), "user");
//! assert!(denied.retry_after().unwrap().as_secs() <= 30);
//!
//! tiers.assign("7", "pro"); // at run time, no rebuild
//! for _ in 0..10 {
//!     assert!(limiter.check(&[("user", "7"), ("ip", "198.51.100.1")]).await.unwrap().allowed);
//! }
//! # }
//! ```
//!
//! # What is here
//!
//! - **Algorithms**, each with its formula and invariant in its module: [`gcra`] (a token
//!   bucket kept as one timestamp; lock-free), [`leaky`] (the leaky bucket as a meter, and as
//!   a queue that makes callers wait their turn), [`window`] (fixed window and Cloudflare's
//!   sliding window counter) and [`sliding_log`] (exact). Every decision reports allowed,
//!   limit, remaining, reset-after and retry-after ([`Decision`]); `check_n` charges a cost,
//!   `peek` consumes nothing; [`Quota`]s cannot be invalid.
//! - **Keyed stores.** [`keyed::KeyedGcra`] (one bucket per key, like governor's keyed
//!   limiter) and the [`RateLimiter`]'s memory store hold at most `max_keys` keys and drop idle
//!   ones, so a flood of distinct keys cannot exhaust memory ([`keyed`] states the bound).
//! - **[`RateLimiter`]**: several [`Limit`]s keyed by a request's descriptor, decided
//!   all-or-nothing; quotas per key through a [`QuotaResolver`] such as [`Tiers`], changeable
//!   at run time; shadow mode per limit or for all; a [`FailurePolicy`].
//! - **Redis** (feature `redis`, module `redis`): a Lua script on Redis time decides each
//!   decision — alone on an idle connection, in an exact batch under load —, TTLs set in
//!   the script, hash-tagged versioned keys; the same decisions on
//!   standalone Redis, Redis Cluster and Sentinel, configured by floodwall-core's
//!   `StoreOptions`. Every call is bounded (default: the connection's own bound) and gated
//!   per Redis node; when a node fails the policy decides for its keys: fail open, fail
//!   closed, or an in-memory insurance limiter with each instance's share of the quota.
//!   Token [`Lease`]s for hot keys.
//! - **Shape.** The protocol is the limiter's own: selection and the memory path in
//!   `limiter.rs`, decisions on a shared store (all or nothing, give-backs, the failure and
//!   insurance policies) in `shared.rs`, token leases in `lease.rs`; they reach a shared
//!   store only through the `SharedStore` trait of the leaf `store.rs`, which the Redis store
//!   (`redis/`: scripts, key layout, reply parsing, batching) implements.
//! - **tower** (feature `tower`, module `layer`): `RateLimitLayer` with key extractors and
//!   an error carrying `retry_after`. **HTTP** (feature `http`, module `http`): `429` with
//!   `Retry-After` and the IETF draft's `RateLimit` / `RateLimit-Policy` fields, `503` when
//!   failing closed, and `ClientIp`, which believes `Forwarded` / `X-Forwarded-For` only
//!   from configured proxies.
//! - **Metrics** (feature `metrics`): `floodwall_limiter_allowed_total{limit, shadow}`,
//!   `floodwall_limiter_denied_total{limit, shadow}`,
//!   `floodwall_limiter_store_failures_total{policy}` and the histogram
//!   `floodwall_limiter_decision_duration_seconds{store}`.
//!
//! Every limiter reads time through a [`Clock`], so tests drive it with [`ManualClock`]
//! instead of sleeping.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod algorithm;
mod builder;
#[cfg(feature = "http")]
mod client_ip;
pub mod concurrency;
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
mod lease;
mod limit;
mod limiter;
mod memory;
mod metrics;
mod name;
mod quota;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod shared;
mod store;
// Without the feature, `redis` holds types with no values (`without_redis.rs`).
#[cfg(not(feature = "redis"))]
#[path = "without_redis.rs"]
mod redis;
pub mod sliding_log;
mod tiers;
pub mod window;

pub use algorithm::Algorithm;
pub use builder::{ConfigError, RateLimiterBuilder};
pub use decision::{Decision, InsufficientCapacity};
/// `nonzero!(3)`: a `NonZero` count checked at build time (from floodwall-core).
pub use floodwall_core::nonzero;
pub use floodwall_core::{Clock, ManualClock, SystemClock};
pub use lease::Lease;
pub use limit::{Binding, Degraded, FailurePolicy, Limit, LimitError, MAX_LIMITS, Verdict};
pub use limiter::RateLimiter;
pub use name::LimitName;

/// Registers the description and unit of every metric this crate emits with the installed
/// `metrics` recorder (so Prometheus shows `# HELP`). [`RateLimiterBuilder::build`] does it;
/// call it yourself after installing a recorder if limiters were built before.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_histogram!(
        "floodwall_limiter_decision_duration_seconds",
        Unit::Seconds,
        "How long a rate-limit decision took, by store (memory, redis)"
    );
    describe_counter!(
        "floodwall_limiter_allowed_total",
        Unit::Count,
        "Requests a limit allowed (shadow=\"true\": a shadow limit)"
    );
    describe_counter!(
        "floodwall_limiter_denied_total",
        Unit::Count,
        "Requests a limit denied (shadow=\"true\": a shadow limit that would have denied)"
    );
    describe_counter!(
        "floodwall_limiter_store_failures_total",
        Unit::Count,
        "Decisions where the store failed and the failure policy decided, by policy"
    );
}
pub use quota::Quota;
pub use tiers::{QuotaResolver, Tiers};

/// The README's example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
