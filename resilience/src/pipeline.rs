//! A plain-API pipeline: the recommended stack without tower.
//!
//! The stages run in the recommended order (see the crate docs), each optional:
//!
//! ```text
//! overall timeout → retry → circuit breaker → bulkhead → adaptive limit → attempt timeout → f()
//! ```
//!
//! The retry policy (unless given) retries the call's own errors, attempt timeouts and
//! injected faults, never a rejection; the breaker counts every error of an attempt (its own
//! error or its timeout) as a failure — unless a classifier says otherwise
//! ([`call_classified`](Pipeline::call_classified)): a `503` answered as `Ok` can count as a
//! failure, a `404` returned as `Err` as nothing at all.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use floodwall_resilience::Pipeline;
//! use floodwall_resilience::circuit_breaker::CircuitBreaker;
//! use floodwall_resilience::retry::{Backoff, Retry};
//!
//! let pipeline = Pipeline::builder()
//!     .timeout(Duration::from_secs(2))
//!     .retry(Retry::builder().max_attempts(NonZeroU32::new(3).unwrap())
//!         .backoff(Backoff::Constant(Duration::from_millis(10))).build())
//!     .circuit_breaker(CircuitBreaker::builder().build().unwrap())
//!     .attempt_timeout(Duration::from_millis(300))
//!     .build();
//!
//! let mut calls = 0;
//! let r = pipeline
//!     .call(|| {
//!         calls += 1;
//!         let n = calls;
//!         async move { if n == 1 { Err("503") } else { Ok(n) } }
//!     })
//!     .await;
//! assert_eq!(r, Ok(2));
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use crate::Error;
use crate::adaptive::AdaptiveLimit;
use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::{CircuitBreaker, Outcome};
use crate::retry::{Decision, Retry, RetryPolicy};
use crate::timeout::Elapsed;
use crate::timeout::deadline::Deadline;

/// The stages of a [`Pipeline`]; each is optional.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PipelineBuilder {
    timeout: Option<Duration>,
    retry: Option<Retry>,
    breaker: Option<CircuitBreaker>,
    bulkhead: Option<Bulkhead>,
    limit: Option<AdaptiveLimit>,
    attempt_timeout: Option<Duration>,
}

impl PipelineBuilder {
    /// Deadline for the whole call, retries included.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Retry failed attempts.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Guard each attempt with a circuit breaker.
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Hold a bulkhead slot during each attempt.
    pub fn bulkhead(mut self, bulkhead: Bulkhead) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Hold an adaptive-limit slot during each attempt.
    pub fn adaptive_limit(mut self, limit: AdaptiveLimit) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Bound on each attempt.
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
        self
    }

    /// Builds the pipeline.
    pub fn build(self) -> Pipeline {
        Pipeline { stages: self }
    }
}

/// The recommended stack as one plain async call. Cheap to clone. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: PipelineBuilder,
}

/// The default classification: `Ok` a success, `Err` a failure.
fn default_outcome<T, E>(r: &Result<T, E>) -> Outcome {
    if r.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failure
    }
}

/// Retries the call's own errors, timeouts and injected faults; never a rejection.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryFailures;

impl<T, E> RetryPolicy<T, Error<E>> for RetryFailures {
    fn decide(&self, result: &Result<T, Error<E>>) -> Decision {
        match result {
            Err(Error::Inner(_)) | Err(Error::Timeout(_)) | Err(Error::Injected(_)) => {
                Decision::Retry
            }
            _ => Decision::Done,
        }
    }
}

impl Pipeline {
    /// A builder with no stage.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }

    /// Runs `f` (once per attempt) through the stages, retrying with [`RetryFailures`].
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(&RetryFailures, f).await
    }

    /// Runs `f` through the stages, retrying as `policy` decides.
    pub async fn call_with<P, F, Fut, T, E>(&self, policy: &P, f: F) -> Result<T, Error<E>>
    where
        P: RetryPolicy<T, Error<E>> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_classified(policy, default_outcome, f).await
    }

    /// Runs `f` through the stages, retrying with [`RetryFailures`]; each attempt's result
    /// counts for the circuit breaker and the adaptive limit as `classify` says
    /// (resilience4j's `recordResult` / `ignoreExceptions`, Polly's `ShouldHandle`): an `Ok`
    /// that is a failure in disguise (an HTTP `503`) can be [`Outcome::Failure`], an `Err`
    /// that says nothing of the downstream's health [`Outcome::Ignored`]. An attempt cut by
    /// the attempt timeout is always a failure.
    pub async fn call_classified<C, F, Fut, T, E>(&self, classify: C, f: F) -> Result<T, Error<E>>
    where
        C: Fn(&Result<T, E>) -> Outcome,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_classified(&RetryFailures, classify, f).await
    }

    /// [`call_with`](Self::call_with) with a classifier (see
    /// [`call_classified`](Self::call_classified)).
    pub async fn call_with_classified<P, C, F, Fut, T, E>(
        &self,
        policy: &P,
        classify: C,
        mut f: F,
    ) -> Result<T, Error<E>>
    where
        P: RetryPolicy<T, Error<E>> + ?Sized,
        C: Fn(&Result<T, E>) -> Outcome,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let classify = &classify;
        let s = &self.stages;
        let attempt = || {
            // `f()` only builds the future; nothing runs before the stages admit it.
            let fut = f();
            async move {
                let permit = match &s.breaker {
                    Some(b) => Some(b.try_acquire().map_err(Error::CircuitOpen)?),
                    None => None,
                };
                let _slot = match &s.bulkhead {
                    Some(b) => Some(b.acquire().await.map_err(Error::BulkheadFull)?),
                    None => None,
                };
                let limit_permit = match &s.limit {
                    Some(l) => Some(l.try_acquire().map_err(Error::Limited)?),
                    None => None,
                };
                let ran = match s.attempt_timeout {
                    Some(d) => Deadline::new(fut, d).await.ok(),
                    None => Some(fut.await),
                };
                let (result, outcome) = match ran {
                    Some(r) => {
                        let outcome = classify(&r);
                        (r.map_err(Error::Inner), outcome)
                    }
                    None => {
                        let after = s.attempt_timeout.unwrap_or_default();
                        (Err(Error::Timeout(Elapsed { after })), Outcome::Failure)
                    }
                };
                if let Some(p) = permit {
                    p.record(outcome);
                }
                if let Some(p) = limit_permit {
                    p.record(outcome);
                }
                result
            }
        };
        let run = async {
            match &s.retry {
                Some(r) => r.call_with(policy, attempt).await,
                None => {
                    let mut attempt = attempt;
                    attempt().await
                }
            }
        };
        match s.timeout {
            Some(d) => match Deadline::new(run, d).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout(Elapsed { after: d })),
            },
            None => run.await,
        }
    }
}
