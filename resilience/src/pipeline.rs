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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::Error;
use crate::adaptive::AdaptiveLimit;
use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::{CircuitBreaker, Outcome};
use crate::retry::{Attempts, Decision, Retry, RetryPolicy};
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

    /// Runs `f` through the stages, retrying with [`RetryFailures`]; `f` makes each attempt's
    /// future once the stages have admitted the attempt (a refused attempt does not call it).
    pub fn call<F, Fut, T, E>(&self, f: F) -> impl Future<Output = Result<T, Error<E>>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_classified(&RetryFailures, default_outcome, f)
    }

    /// Runs `f` through the stages, retrying as `policy` decides.
    pub fn call_with<P, F, Fut, T, E>(
        &self,
        policy: &P,
        f: F,
    ) -> impl Future<Output = Result<T, Error<E>>>
    where
        P: RetryPolicy<T, Error<E>> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_classified(policy, default_outcome, f)
    }

    /// Runs `f` through the stages, retrying with [`RetryFailures`]; each attempt's result
    /// counts for the circuit breaker and the adaptive limit as `classify` says
    /// (resilience4j's `recordResult` / `ignoreExceptions`, Polly's `ShouldHandle`): an `Ok`
    /// that is a failure in disguise (an HTTP `503`) can be [`Outcome::Failure`], an `Err`
    /// that says nothing of the downstream's health [`Outcome::Ignored`]. An attempt cut by
    /// the attempt timeout is always a failure.
    pub fn call_classified<C, F, Fut, T, E>(
        &self,
        classify: C,
        f: F,
    ) -> impl Future<Output = Result<T, Error<E>>>
    where
        C: Fn(&Result<T, E>) -> Outcome,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with_classified(&RetryFailures, classify, f)
    }

    /// [`call_with`](Self::call_with) with a classifier (see
    /// [`call_classified`](Self::call_classified)).
    pub fn call_with_classified<P, C, F, Fut, T, E>(
        &self,
        policy: &P,
        classify: C,
        f: F,
    ) -> impl Future<Output = Result<T, Error<E>>>
    where
        P: RetryPolicy<T, Error<E>> + ?Sized,
        C: Fn(&Result<T, E>) -> Outcome,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.bounded(self.attempts(policy, classify, f))
    }

    /// `fut` bounded by the overall [`timeout`](PipelineBuilder::timeout), if one was set
    /// (from the first time `fut` waits): a call driven through [`start`](Self::start) gets
    /// the same bound as [`call`](Self::call) this way.
    pub fn bounded<F, T, E>(&self, fut: F) -> Bounded<F>
    where
        F: Future<Output = Result<T, Error<E>>>,
    {
        Bounded::new(fut, self.stages.timeout)
    }

    /// The retry loop, driven through [`start`](Self::start): one state machine, so a call
    /// moves its futures once rather than once per stage.
    ///
    /// A plain `fn` returning an `async` block, here and below: an `async fn` would hold
    /// its arguments twice.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` would hold its arguments twice"
    )]
    fn attempts<P, C, F, Fut, T, E>(
        &self,
        policy: &P,
        classify: C,
        mut f: F,
    ) -> impl Future<Output = Result<T, Error<E>>>
    where
        P: RetryPolicy<T, Error<E>> + ?Sized,
        C: Fn(&Result<T, E>) -> Outcome,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        async move {
            let mut call = self.start();
            loop {
                // The result lives in this block only, so the backoff's wait does not hold it.
                let delay = {
                    let result = 'attempt: {
                        let admitted = match call.admit().await {
                            Ok(admitted) => admitted,
                            Err(rejected) => break 'attempt Err(rejected),
                        };
                        // The attempt's future is made only once the stages have admitted it.
                        admitted.run(f(), &classify).await
                    };
                    match call.next_delay(policy, &result) {
                        Some(delay) => delay,
                        None => return result,
                    }
                };
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Starts a call driven by the caller, for attempts a closure cannot make — an attempt
    /// whose future borrows from the caller (a buffer, a map each attempt writes into). The
    /// loop is [`call_with_classified`](Self::call_with_classified)'s, less the overall
    /// [`timeout`](PipelineBuilder::timeout) (see [`overall_timeout`](Self::overall_timeout)):
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
    /// use std::num::NonZeroU32;
    /// use floodwall_resilience::{Error, Pipeline};
    /// use floodwall_resilience::circuit_breaker::Outcome;
    /// use floodwall_resilience::pipeline::RetryFailures;
    /// use floodwall_resilience::retry::Retry;
    ///
    /// async fn fill(buf: &mut Vec<u8>) -> Result<usize, &'static str> {
    ///     buf.push(1);
    ///     if buf.len() < 2 { Err("short") } else { Ok(buf.len()) }
    /// }
    ///
    /// let pipeline = Pipeline::builder()
    ///     .retry(Retry::builder().max_attempts(NonZeroU32::new(3).unwrap()).build())
    ///     .build();
    /// let mut buf = Vec::new();
    /// let mut call = pipeline.start();
    /// let result = loop {
    ///     let result: Result<usize, Error<&str>> = match call.admit().await {
    ///         Ok(admitted) => {
    ///             admitted.run(fill(&mut buf), |r| if r.is_ok() { Outcome::Success } else { Outcome::Failure }).await
    ///         }
    ///         Err(rejected) => Err(rejected),
    ///     };
    ///     match call.next_delay(&RetryFailures, &result) {
    ///         Some(delay) => tokio::time::sleep(delay).await,
    ///         None => break result,
    ///     }
    /// };
    /// assert_eq!(result, Ok(2));
    /// # }
    /// ```
    pub fn start(&self) -> Call<'_> {
        Call {
            stages: &self.stages,
            tries: self.stages.retry.as_ref().map(|r| (r, r.start())),
        }
    }

    /// The deadline for a whole call, retries included, if one was set.
    pub fn overall_timeout(&self) -> Option<Duration> {
        self.stages.timeout
    }

    /// The bound on each attempt, if one was set.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.stages.attempt_timeout
    }

    /// The retry stage, if any.
    pub fn retry(&self) -> Option<&Retry> {
        self.stages.retry.as_ref()
    }

    /// The circuit breaker stage, if any: its state, its metrics, `force_open`, `reset`.
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.stages.breaker.as_ref()
    }

    /// The bulkhead stage, if any.
    pub fn bulkhead(&self) -> Option<&Bulkhead> {
        self.stages.bulkhead.as_ref()
    }
}

/// A call through a [`Pipeline`] driven by the caller (see [`Pipeline::start`]): it admits
/// each attempt through the stages and decides whether to retry.
#[derive(Debug)]
pub struct Call<'p> {
    stages: &'p PipelineBuilder,
    tries: Option<(&'p Retry, Attempts)>,
}

impl<'p> Call<'p> {
    /// Admits one attempt: a circuit-breaker permit, a bulkhead slot (waiting as the bulkhead
    /// is configured) and an adaptive-limit slot, in that order; the first stage that refuses
    /// is the error ([`Error::CircuitOpen`], [`Error::BulkheadFull`], [`Error::Limited`]).
    pub fn admit<E>(&self) -> impl Future<Output = Result<Admitted<'p>, Error<E>>> + use<'p, E> {
        let s = self.stages;
        async move {
            let permit = match &s.breaker {
                Some(b) => Some(b.try_acquire().map_err(Error::CircuitOpen)?),
                None => None,
            };
            let slot = match &s.bulkhead {
                Some(b) => match b.take_now() {
                    Some(p) => Some(p),
                    // Waiting is the rare path: its future is boxed, so the common one stays small.
                    None => Some(Box::pin(b.acquire()).await.map_err(Error::BulkheadFull)?),
                },
                None => None,
            };
            let limit = match &s.limit {
                Some(l) => Some(l.try_acquire().map_err(Error::Limited)?),
                None => None,
            };
            Ok(Admitted {
                permit,
                _slot: slot,
                limit,
                attempt_timeout: s.attempt_timeout,
            })
        }
    }

    /// After an attempt: `Some(delay)` to retry after `delay`, as `policy` decides within the
    /// retry's attempts, budget and backoff; `None` to return `result` (the call's latency is
    /// recorded then). Without a retry stage, always `None`.
    pub fn next_delay<P, T, E>(
        &mut self,
        policy: &P,
        result: &Result<T, Error<E>>,
    ) -> Option<Duration>
    where
        P: RetryPolicy<T, Error<E>> + ?Sized,
    {
        let (retry, attempts) = self.tries.as_mut()?;
        let delay = retry.next_delay(attempts, policy.decide(result));
        if delay.is_none() {
            retry.finish(attempts);
        }
        delay
    }
}

/// One admitted attempt (see [`Call::admit`]): it holds the stages' permits until
/// [`run`](Self::run) has recorded its outcome; dropped unrun, it gives its slots back and
/// its breaker permit counts as [`Outcome::Ignored`].
#[derive(Debug)]
#[must_use = "an admitted attempt holds its stages' permits until it is run"]
pub struct Admitted<'p> {
    permit: Option<crate::circuit_breaker::Permit<'p>>,
    _slot: Option<crate::bulkhead::Permit<'p>>,
    limit: Option<crate::adaptive::Permit<'p>>,
    attempt_timeout: Option<Duration>,
}

impl Admitted<'_> {
    /// This attempt bounded by `after` instead of the pipeline's attempt timeout (a caller's
    /// per-request setting); `None` keeps the pipeline's.
    pub fn attempt_timeout(mut self, after: Option<Duration>) -> Self {
        if after.is_some() {
            self.attempt_timeout = after;
        }
        self
    }

    /// Runs the attempt's future under the attempt timeout; its result counts for the
    /// circuit breaker and the adaptive limit as `classify` says (an attempt cut by the
    /// timeout is a failure).
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` would hold its arguments twice"
    )]
    pub fn run<Fut, T, E>(
        self,
        fut: Fut,
        classify: impl Fn(&Result<T, E>) -> Outcome,
    ) -> impl Future<Output = Result<T, Error<E>>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        async move {
            let ran = Deadline::maybe(fut, self.attempt_timeout).await.ok();
            let (result, outcome) = match ran {
                Some(r) => {
                    let outcome = classify(&r);
                    (r.map_err(Error::Inner), outcome)
                }
                None => {
                    let after = self.attempt_timeout.unwrap_or_default();
                    (Err(Error::Timeout(Elapsed { after })), Outcome::Failure)
                }
            };
            if let Some(p) = self.permit {
                p.record(outcome);
            }
            if let Some(p) = self.limit {
                p.record(outcome);
            }
            result
        }
    }
}

pin_project! {
    /// A future bounded by a [`Pipeline`]'s overall timeout (see [`Pipeline::bounded`]): its
    /// own result, or [`Error::Timeout`] once the bound has passed.
    #[must_use = "futures do nothing unless polled"]
    pub struct Bounded<F> {
        #[pin]
        inner: Deadline<F>,
    }
}

impl<F> Bounded<F> {
    /// `fut` bounded by `after` if given (from the first time `fut` waits), else `fut` as it
    /// is — what [`Pipeline::bounded`] makes with the pipeline's overall timeout.
    pub fn new(fut: F, after: Option<Duration>) -> Self {
        Bounded {
            inner: Deadline::maybe(fut, after),
        }
    }
}

impl<F, T, E> Future for Bounded<F>
where
    F: Future<Output = Result<T, Error<E>>>,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(elapsed)) => Poll::Ready(Err(Error::Timeout(elapsed))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F> fmt::Debug for Bounded<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bounded").finish_non_exhaustive()
    }
}
