//! Metrics (feature `metrics`); without the feature every function is an empty inline stub.
//!
//! - `floodwall_limiter_allowed_total{limit, shadow}`: requests a limit allowed;
//! - `floodwall_limiter_denied_total{limit, shadow}`: requests a limit denied (`shadow="true"`:
//!   a shadow limit that would have denied).
//! - `floodwall_limiter_store_failures_total{policy}`: decisions where the store failed and the
//!   failure policy (`fail_open`, `fail_closed`, `insurance`) decided.

use crate::LimitName;

#[cfg(feature = "metrics")]
pub(crate) fn decided(limit: &LimitName, allowed: bool, shadow: bool) {
    let name = if allowed {
        "floodwall_limiter_allowed_total"
    } else {
        "floodwall_limiter_denied_total"
    };
    metrics::counter!(
        name,
        "limit" => limit.as_ref().to_owned(),
        "shadow" => if shadow { "true" } else { "false" }
    )
    .increment(1);
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn decided(_limit: &LimitName, _allowed: bool, _shadow: bool) {}

#[cfg(all(feature = "metrics", feature = "redis"))]
pub(crate) fn store_failure(policy: crate::FailurePolicy) {
    let policy = match policy {
        crate::FailurePolicy::FailOpen => "fail_open",
        crate::FailurePolicy::FailClosed => "fail_closed",
        crate::FailurePolicy::Insurance { .. } => "insurance",
    };
    metrics::counter!("floodwall_limiter_store_failures_total", "policy" => policy).increment(1);
}

#[cfg(all(not(feature = "metrics"), feature = "redis"))]
#[inline(always)]
pub(crate) fn store_failure(_policy: crate::FailurePolicy) {}
