//! [`FloodwallError`]: why a middleware refused or cut a request, carried as
//! `reqwest_middleware::Error::Middleware`.

use std::time::Duration;

/// Why a floodwall middleware refused or cut a request. Find it in a
/// `reqwest_middleware::Error::Middleware(e)` with `e.downcast_ref::<FloodwallError>()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FloodwallError {
    /// The attempt (or the call) took longer than its [`Timeout`](crate::Timeout).
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The host's circuit breaker is open: the request was not sent.
    #[error("{0}")]
    CircuitOpen(#[from] floodwall_resilience::circuit_breaker::Rejected),
    /// The host's bulkhead is full: the request was not sent.
    #[error("{0}")]
    BulkheadFull(#[from] floodwall_resilience::bulkhead::Rejected),
    /// The client-side rate limit would make the request wait longer than allowed.
    #[error("rate limited for {retry_after:?}, more than the {max_wait:?} this client waits")]
    RateLimited {
        /// When the quota allows the request.
        retry_after: Duration,
        /// The longest this client waits.
        max_wait: Duration,
    },
    /// The rate limiter could not decide (its store failed and its policy refused).
    #[error("rate limiter unavailable: {0}")]
    LimiterUnavailable(String),
}

impl FloodwallError {
    pub(crate) fn into_middleware(self) -> reqwest_middleware::Error {
        reqwest_middleware::Error::middleware(self)
    }
}
