//! What the facade's Redis tests share.

use std::num::NonZeroU32;

use floodwall::core::redis::{RedisConnection, StoreOptions};
use floodwall::limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};

/// A per-user GCRA limit so wide (a million a second) that every decision is admitted: a
/// denial or a degraded verdict can only mean the store failed. Fails closed, so a failure
/// is an error the test counts.
pub(crate) fn wide_limiter(conn: &RedisConnection) -> RateLimiter {
    RateLimiter::builder()
        .limit(
            Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::per_second(NonZeroU32::new(1_000_000).unwrap()),
            )
            .keyed_by("user"),
        )
        .redis(StoreOptions::new(conn.clone()))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap()
}
