//! The rules the middleware judge results by — what counts against a host's breaker, what is
//! worth another attempt — their defaults, and the shapes a caller's own rules take.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use floodwall_resilience::circuit_breaker::Outcome;
use floodwall_resilience::http::breaker_outcome;
use floodwall_resilience::http::{is_retryable_status, retry_after};
use floodwall_resilience::retry::Decision;
use reqwest::Response;

use crate::{ErrorExt, FloodwallError, RefusalKind};

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

/// Whether `result` is worth another attempt, and when: `408`, `429` and `5xx` (after
/// `Retry-After` when the response gives one), a `409` that gives a `Retry-After` (an
/// `Idempotency-Key` server saying "the first request with this key is still running"),
/// connection errors, request timeouts and attempt
/// [`TimeoutMiddleware`](crate::TimeoutMiddleware)s. A refusal by a breaker, a
/// bulkhead or a rate limit is not retried (it says when to come back).
pub fn is_retryable(result: &reqwest_middleware::Result<Response>) -> Decision {
    match result {
        Ok(resp) => response_decision(resp),
        Err(e) => error_decision(e),
    }
}

/// [`is_retryable`] for a response.
pub fn is_retryable_response(resp: &Response) -> Decision {
    response_decision(resp)
}

/// [`is_retryable`] for an error.
pub fn is_retryable_error(e: &reqwest_middleware::Error) -> Decision {
    error_decision(e)
}

pub(crate) fn response_decision(resp: &Response) -> Decision {
    let status = resp.status();
    if status == http::StatusCode::CONFLICT {
        return match retry_after(resp.headers(), SystemTime::now()) {
            Some(d) => Decision::RetryAfter(d),
            None => Decision::Done,
        };
    }
    if !is_retryable_status(status) {
        return Decision::Done;
    }
    match retry_after(resp.headers(), SystemTime::now()) {
        Some(d) => Decision::RetryAfter(d),
        None => Decision::Retry,
    }
}

pub(crate) fn error_decision(e: &reqwest_middleware::Error) -> Decision {
    match e {
        reqwest_middleware::Error::Reqwest(e) if e.is_connect() || e.is_timeout() => {
            Decision::Retry
        }
        reqwest_middleware::Error::Middleware(e) => match e.downcast_ref::<FloodwallError>() {
            Some(refusal) if refusal.kind() == RefusalKind::TimedOut => Decision::Retry,
            _ => Decision::Done,
        },
        _ => Decision::Done,
    }
}
