//! Metrics (feature `metrics`); without the feature every function is an empty inline stub.
//!
//! - `floodwall_limiter_denied_total{limit, shadow}`: requests a limit denied (`shadow="true"`:
//!   a shadow limit that would have denied).
//! - `floodwall_limiter_store_failures_total{policy}`: decisions where the store failed and the
//!   failure policy (`fail_open`, `fail_closed`, `insurance`) decided.

#[cfg(feature = "metrics")]
pub(crate) fn denied(limit: &str, shadow: bool) {
    metrics::counter!(
        "floodwall_limiter_denied_total",
        "limit" => limit.to_owned(),
        "shadow" => if shadow { "true" } else { "false" }
    )
    .increment(1);
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn denied(_limit: &str, _shadow: bool) {}

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
