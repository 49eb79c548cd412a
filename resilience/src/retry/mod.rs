//! Retry with backoff, jitter, a total-time budget and a shared retry budget.
//!
//! # Choices
//!
//! - `max_attempts` counts the first call (resilience4j): `max_attempts(3)` is one call and at
//!   most two retries.
//! - The retry number `n` in the backoff formulas is 0-based: the delay before the first retry
//!   is `initial`. See [`Backoff`] and [`Jitter`] for the formulas; the cap (`max_delay`)
//!   bounds the final, jittered delay.
//! - A [`Decision::RetryAfter`] from the policy (e.g. an HTTP `Retry-After`) is honoured: the
//!   delay is at least that long. If it is longer than `max_delay`, or would end past
//!   `max_elapsed`, the call gives up with the last error rather than retry early.
//! - `max_elapsed` bounds the time from the first call to the start of the last retry: a retry
//!   whose delay would end past it is not made.
//! - With a [`RetryBudget`], each call deposits once and each retry withdraws; when the budget
//!   is spent the call returns its last error at once.
//! - The error returned is the last attempt's own error; the caller's error type is kept.
//!
//! Delays are slept with Tokio's timer, so `#[tokio::test(start_paused = true)]` tests run
//! instantly; the jitter RNG is seeded (`rng_seed`) for reproducible tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use floodwall_resilience::retry::{Backoff, Jitter, Retry};
//!
//! let retry = Retry::builder()
//!     .max_attempts(NonZeroU32::new(4).unwrap())
//!     .backoff(Backoff::Exponential { initial: Duration::from_millis(1), multiplier: 2.0 })
//!     .jitter(Jitter::Full)
//!     .build();
//!
//! let mut calls = 0;
//! let answer = retry
//!     .call(|| {
//!         calls += 1;
//!         let n = calls;
//!         async move { if n < 3 { Err("503") } else { Ok(n) } }
//!     })
//!     .await;
//! assert_eq!(answer, Ok(3));
//! # }
//! ```

mod backoff;
mod budget;
mod builder;
#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
mod metrics;
mod plan;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;

pub use backoff::{Backoff, Jitter, JitterState, RandomSource, Schedule};
pub use budget::{BudgetConfigError, RetryBudget, RetryBudgetBuilder};
pub use builder::RetryBuilder;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{RetryLayer, RetryService};
use plan::Plan;

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Return this result.
    Done,
    /// Retry after the schedule's delay.
    Retry,
    /// Retry, waiting at least this long (a server's `Retry-After`).
    RetryAfter(Duration),
}

/// A call through [`Retry::try_call_with`] that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError<T, E> {
    /// The last attempt failed with this error.
    #[error("{0}")]
    Failed(E),
    /// Retries ran out while the last result was still one the policy wanted to retry.
    #[error("gave up after {attempts} attempts with a result still to be retried")]
    Exhausted {
        /// Attempts made, the first included.
        attempts: u32,
        /// The last attempt's result.
        last: T,
    },
}

impl<T, E> RetryError<T, E> {
    /// The last result, if retries ran out on one.
    pub fn into_last_result(self) -> Option<T> {
        match self {
            RetryError::Exhausted { last, .. } => Some(last),
            RetryError::Failed(_) => None,
        }
    }
}

/// Decides from an attempt's result whether to retry.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot decide retries for a call whose result is `Result<{T}, {E}>`",
    label = "this retry policy does not take `Result<{T}, {E}>`",
    note = "`HttpRetryPolicy` decides on results `Result<R, floodwall_resilience::Error<E>>` whose `R` is an HTTP response (`http::Response<B>`, or a type implementing `floodwall_resilience::http::HttpResponse`); otherwise pass a closure `|r: &Result<{T}, {E}>| -> Decision`, or implement `RetryPolicy<{T}, {E}>`"
)]
pub trait RetryPolicy<T, E> {
    /// The decision for `result`.
    fn decide(&self, result: &Result<T, E>) -> Decision;
}

/// Retries every `Err`, returns every `Ok`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryOnError;

impl<T, E> RetryPolicy<T, E> for RetryOnError {
    #[inline]
    fn decide(&self, result: &Result<T, E>) -> Decision {
        if result.is_ok() {
            Decision::Done
        } else {
            Decision::Retry
        }
    }
}

impl<T, E, F> RetryPolicy<T, E> for F
where
    F: Fn(&Result<T, E>) -> Decision,
{
    fn decide(&self, result: &Result<T, E>) -> Decision {
        self(result)
    }
}

/// Copies a request for another attempt; `None` means "send it once, never retry" (a
/// streaming body that cannot be replayed, or a method that must not be repeated).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot copy requests of type `{Req}` for a retry",
    label = "this request cloner does not take `{Req}`",
    note = "`IdempotentRequests` copies HTTP requests (`http::Request<B>` with a `Clone` body, or a type implementing `floodwall_resilience::http::HttpRequest`), idempotent methods only; otherwise pass a closure `|r: &{Req}| -> Option<{Req}>` that keeps the method check, or implement `RetryRequest<{Req}>`"
)]
pub trait RetryRequest<Req> {
    /// A copy of `req` for the next attempt, or `None`.
    fn clone_request(&self, req: &Req) -> Option<Req>;
}

/// Copies every request with `Clone`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequest;

impl<Req: Clone> RetryRequest<Req> for CloneRequest {
    #[inline]
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

impl<Req, F> RetryRequest<Req> for F
where
    F: Fn(&Req) -> Option<Req>,
{
    fn clone_request(&self, req: &Req) -> Option<Req> {
        self(req)
    }
}

/// Passed to the [`on_retry`](RetryBuilder::on_retry) hook before each retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryEvent {
    /// The 1-based number of the attempt that just failed.
    pub attempt: u32,
    /// How long the retry waits.
    pub delay: Duration,
}

type Hook = Arc<dyn Fn(&RetryEvent) + Send + Sync>;

/// What the calls of one policy share. Only a policy with a name, a budget, a hook or its
/// own random source has one; the others copy their [`Plan`] and nothing else, so a call that
/// needs no retry touches no shared counter.
struct Shared {
    name: Arc<str>,
    budget: Option<RetryBudget>,
    /// `None`: each thread's own generator.
    random: Option<Mutex<Box<RandomSource>>>,
    on_retry: Option<Hook>,
    metrics: self::metrics::RetryMetrics,
}

/// The name of a policy built without one; its metrics are one series for all of them.
const DEFAULT_NAME: &str = "default";

/// The metrics of every unnamed policy (`retry="default"`).
#[inline]
fn default_metrics() -> &'static self::metrics::RetryMetrics {
    static METRICS: std::sync::LazyLock<self::metrics::RetryMetrics> =
        std::sync::LazyLock::new(|| self::metrics::RetryMetrics::new(DEFAULT_NAME));
    &METRICS
}

/// A cheap-to-clone retry policy. See the [module docs](self).
///
/// Cloning copies the limits and the schedule; what calls share (name, budget, hook, random
/// source, metrics) sits behind one reference count, and only when the policy has any of it.
#[derive(Clone)]
pub struct Retry {
    plan: Plan,
    shared: Option<Arc<Shared>>,
}

/// The progress of one call through a [`Retry`]: attempts made, the jitter's state, the start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempts {
    made: u32,
    jitter: JitterState,
    /// Read only when `max_elapsed` is set (a clock read costs more than the rest of the
    /// no-retry path).
    started: Option<Instant>,
}

impl Retry {
    /// A builder; defaults are listed on each method.
    pub fn builder() -> RetryBuilder {
        RetryBuilder::default()
    }

    /// The budget, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.shared.as_ref().and_then(|s| s.budget.as_ref())
    }

    /// The name given to the builder (`"default"` if none).
    pub fn name(&self) -> &str {
        self.shared.as_ref().map_or(DEFAULT_NAME, |s| &s.name)
    }

    #[inline]
    fn metrics(&self) -> &self::metrics::RetryMetrics {
        match &self.shared {
            Some(s) => &s.metrics,
            None => default_metrics(),
        }
    }

    /// Starts one call whose attempts the caller makes itself — a middleware's own loop,
    /// where a closure per attempt does not fit (an attempt that borrows the caller's state
    /// mutably). After each attempt, ask [`RetryAttempts::next_delay`]; the budget, the hook,
    /// the metrics and `max_elapsed` apply as in [`call`](Self::call).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use floodwall_resilience::retry::{Decision, Retry};
    ///
    /// let retry = Retry::builder().backoff(floodwall_resilience::retry::Backoff::Constant(
    ///     std::time::Duration::from_millis(1),
    /// )).build();
    /// let mut log = Vec::new(); // state each attempt borrows mutably
    /// let mut run = retry.begin();
    /// let answer = loop {
    ///     log.push(run.made() + 1);
    ///     let result: Result<u32, &str> = if log.len() < 2 { Err("503") } else { Ok(7) };
    ///     let decision = if result.is_ok() { Decision::Done } else { Decision::Retry };
    ///     match run.next_delay(decision) {
    ///         Some(delay) => tokio::time::sleep(delay).await,
    ///         None => break result,
    ///     }
    /// };
    /// assert_eq!((answer, log), (Ok(7), vec![1, 2]));
    /// # }
    /// ```
    pub fn begin(&self) -> RetryAttempts<'_> {
        RetryAttempts {
            retry: self,
            attempts: self.start(),
        }
    }

    /// Runs `f` until it succeeds, retrying every `Err` per the schedule.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(&RetryOnError, f).await
    }

    /// Runs `f`, asking `policy` after each attempt whether to retry. When retries run out,
    /// the last attempt's result is returned as it is — an `Ok` the policy still wanted to
    /// retry included (use [`try_call_with`](Self::try_call_with) to fail on it).
    pub async fn call_with<P, F, Fut, T, E>(&self, policy: &P, f: F) -> Result<T, E>
    where
        P: RetryPolicy<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run(policy, f).await.0
    }

    /// Runs `f` like [`call_with`](Self::call_with), but when retries run out (attempts,
    /// `max_elapsed` or the budget) while the last result is an `Ok` the policy still wanted
    /// to retry, fails with [`RetryError::Exhausted`] carrying that result — resilience4j's
    /// `retryOnResult` with `failAfterMaxAttempts(true)` (`MaxRetriesExceeded`).
    pub async fn try_call_with<P, F, Fut, T, E>(
        &self,
        policy: &P,
        f: F,
    ) -> Result<T, RetryError<T, E>>
    where
        P: RetryPolicy<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match self.run(policy, f).await {
            (Ok(v), Decision::Done, _) => Ok(v),
            (Ok(last), _, attempts) => Err(RetryError::Exhausted { attempts, last }),
            (Err(e), _, _) => Err(RetryError::Failed(e)),
        }
    }

    /// The attempt loop: the last result, the policy's decision on it, and attempts made.
    async fn run<P, F, Fut, T, E>(&self, policy: &P, mut f: F) -> (Result<T, E>, Decision, u32)
    where
        P: RetryPolicy<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempts = self.start();
        loop {
            let result = f().await;
            let decision = policy.decide(&result);
            match self.next_delay(&mut attempts, decision) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    self.finish(&attempts);
                    return (result, decision, attempts.made);
                }
            }
        }
    }

    /// Records the latency of a call (when metrics are recorded, its start was read).
    #[inline]
    pub(crate) fn finish(&self, a: &Attempts) {
        if let Some(started) = a.started {
            self.metrics().record(started.elapsed());
        }
    }

    /// Starts a call: deposits in the budget.
    #[inline]
    pub(crate) fn start(&self) -> Attempts {
        if let Some(b) = self.budget() {
            b.deposit();
        }
        Attempts {
            made: 0,
            jitter: JitterState::default(),
            started: (self.plan.max_elapsed != u64::MAX || self.metrics().recording())
                .then(Instant::now),
        }
    }

    /// After an attempt: `Some(delay)` to retry after `delay`, `None` to return the result.
    #[inline]
    pub(crate) fn next_delay(&self, a: &mut Attempts, decision: Decision) -> Option<Duration> {
        a.made += 1;
        let at_least = match decision {
            Decision::Done => return None,
            Decision::Retry => Duration::ZERO,
            Decision::RetryAfter(d) => d,
        };
        self.retry_delay(a, at_least)
    }

    #[cold]
    fn retry_delay(&self, a: &mut Attempts, at_least: Duration) -> Option<Duration> {
        let plan = &self.plan;
        if a.made >= plan.max_attempts {
            return None;
        }
        let schedule = plan.schedule();
        if at_least > schedule.cap {
            tracing::debug!(
                retry = self.name(),
                ?at_least,
                "Retry-After beyond max_delay; giving up"
            );
            return None;
        }
        let mut jitter = a.jitter;
        let jittered = match self.shared.as_ref().and_then(|s| s.random.as_ref()) {
            Some(random) => {
                let mut random = random.lock().unwrap_or_else(|e| e.into_inner());
                schedule.delay(a.made - 1, &mut jitter, &mut **random)
            }
            None => {
                let mut rng = rand::rng();
                schedule.delay(a.made - 1, &mut jitter, &mut || rng.random::<f64>())
            }
        };
        let delay = jittered.max(at_least);
        if let (Some(max), Some(started)) = (plan.max_elapsed(), a.started)
            && started.elapsed().saturating_add(delay) > max
        {
            return None;
        }
        if let Some(b) = self.budget()
            && !b.try_withdraw()
        {
            tracing::warn!(retry = self.name(), "retry budget exhausted; not retrying");
            self.metrics().budget_exhausted();
            return None;
        }
        a.jitter = jitter;
        let event = RetryEvent {
            attempt: a.made,
            delay,
        };
        tracing::debug!(retry = self.name(), attempt = a.made, ?delay, "retrying");
        self.metrics().retry();
        if let Some(hook) = self.shared.as_ref().and_then(|s| s.on_retry.as_ref()) {
            hook(&event);
        }
        Some(delay)
    }
}

/// One call's attempts, made by the caller: see [`Retry::begin`].
#[derive(Debug)]
#[must_use = "ask `next_delay` after each attempt"]
pub struct RetryAttempts<'r> {
    retry: &'r Retry,
    attempts: Attempts,
}

impl RetryAttempts<'_> {
    /// After an attempt whose result the caller judged `decision`: `Some(delay)` — sleep
    /// `delay`, then make the next attempt; `None` — that result is final (no more attempts,
    /// `max_elapsed` reached or the budget spent), and the call's latency is recorded.
    pub fn next_delay(&mut self, decision: Decision) -> Option<Duration> {
        let delay = self.retry.next_delay(&mut self.attempts, decision);
        if delay.is_none() {
            self.retry.finish(&self.attempts);
        }
        delay
    }

    /// Attempts judged so far.
    pub fn made(&self) -> u32 {
        self.attempts.made
    }
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("name", &self.name())
            .field("max_attempts", &self.plan.max_attempts)
            .field("schedule", &self.plan.schedule())
            .field("budget", &self.budget())
            .finish_non_exhaustive()
    }
}
