//! The rules the middleware judge results by — what counts against a host's breaker, what is
//! worth another attempt — their defaults, and the shapes a caller's own rules take.

use std::fmt;
use std::sync::Arc;

use floodwall_resilience::circuit_breaker::Outcome;
use floodwall_resilience::http::breaker_outcome;
use floodwall_resilience::retry::Decision;
use reqwest::Response;

use crate::retry::{error_decision, response_decision};
use crate::{ErrorExt, RefusalKind};

/// A caller's rule for what a result says about the host: [`HostBreaker::classify`](crate::HostBreaker::classify),
/// [`HostPipeline::classify`](crate::HostPipeline::classify).
pub type ClassifyFn =
    dyn Fn(Result<&Response, &reqwest_middleware::Error>) -> Outcome + Send + Sync;

/// A caller's rule for whether a result is worth another attempt:
/// [`RetryMiddleware::when`](crate::RetryMiddleware::when), [`HostPipeline::retry_when`](crate::HostPipeline::retry_when).
pub type RetryFn = dyn Fn(Result<&Response, &reqwest_middleware::Error>) -> Decision + Send + Sync;

/// The default breaker rule: what a result says about the host's health.
///
/// - a response: `5xx` and `408` are failures, other `4xx` (a `404`, a `429` asking this
///   client to slow down) are ignored, the rest are successes ([`breaker_outcome`]);
/// - floodwall's own refusals further down the stack — a full bulkhead, a client-side rate
///   limit, another breaker — are ignored: the host was never asked;
/// - an attempt [`TimeoutMiddleware`](crate::TimeoutMiddleware) and every transport error are failures.
///
/// Takes the result as `result.as_ref()`.
pub fn host_outcome(result: Result<&Response, &reqwest_middleware::Error>) -> Outcome {
    match result {
        Ok(resp) => breaker_outcome(resp.status()),
        Err(e) => match e.floodwall().map(|r| r.kind()) {
            None | Some(RefusalKind::TimedOut) => Outcome::Failure,
            Some(_) => Outcome::Ignored,
        },
    }
}

/// A rule kept by a middleware: the caller's, or none (the default, called directly).
pub(crate) struct Rule<F: ?Sized>(pub(crate) Option<Arc<F>>);

impl<F: ?Sized> Clone for Rule<F> {
    fn clone(&self) -> Self {
        Rule(self.0.clone())
    }
}

impl<F: ?Sized> Default for Rule<F> {
    fn default() -> Self {
        Rule(None)
    }
}

impl<F: ?Sized> fmt::Debug for Rule<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "custom"
        } else {
            "default"
        })
    }
}

impl Rule<ClassifyFn> {
    #[inline]
    pub(crate) fn outcome(&self, result: Result<&Response, &reqwest_middleware::Error>) -> Outcome {
        match &self.0 {
            Some(f) => f(result),
            None => host_outcome(result),
        }
    }
}

impl Rule<RetryFn> {
    #[inline]
    pub(crate) fn decide(&self, result: Result<&Response, &reqwest_middleware::Error>) -> Decision {
        match (&self.0, result) {
            (Some(f), result) => f(result),
            (None, Ok(resp)) => response_decision(resp),
            (None, Err(e)) => error_decision(e),
        }
    }
}
