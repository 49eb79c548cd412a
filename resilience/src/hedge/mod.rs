//! Hedging: when a call is slow, start a second (third, …) copy and take the first success.
//!
//! # Semantics
//!
//! - The first attempt starts at once. While no attempt has succeeded and fewer than
//!   `1 + max_hedged_attempts` have started, another starts each time the hedge delay passes
//!   since the last one started, and at once when a running attempt fails.
//! - The first success wins; the other attempts are dropped (cancelled). If every attempt
//!   fails, the last error is returned. With [`Hedge::call_with`] a predicate says which
//!   outcomes are failures worth hedging (Polly's `ShouldHandle`); any other outcome wins at
//!   once.
//! - The delay is fixed, or the `p`-th percentile of recently observed successful attempt
//!   latencies (a ring of the last 256), recomputed every 32 observations and kept within
//!   [`delay_bounds`](HedgeBuilder::delay_bounds); until `min_samples` latencies are known
//!   the fallback delay is used.
//! - With a [`budget`](HedgeBuilder::budget) (a [`RetryBudget`]: each call deposits, each
//!   extra attempt withdraws), extra attempts stay within the budget's share of calls: a
//!   hedge the budget refuses is not made, and the call goes on with the attempts it has —
//!   hedging adds load exactly when a dependency is slow, and the budget caps it.
//!
//! Hedge only idempotent work: a hedged call may run more than once downstream.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use floodwall_resilience::hedge::{Hedge, HedgeDelay};
//!
//! let hedge = Hedge::builder().delay(HedgeDelay::Fixed(Duration::from_millis(50))).build();
//! let mut n = 0;
//! let answer = hedge
//!     .call(|| {
//!         n += 1;
//!         let slow = n == 1; // the first attempt stalls, the hedge answers
//!         async move {
//!             if slow { tokio::time::sleep(Duration::from_secs(10)).await; }
//!             Ok::<_, ()>(n)
//!         }
//!     })
//!     .await;
//! assert_eq!(answer, Ok(2));
//! # }
//! ```

#[cfg(feature = "tower")]
mod layer;
mod metrics;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use floodwall_core::clock::duration_to_nanos;

use crate::retry::RetryBudget;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{HedgeLayer, HedgeService, ResponseFuture};

const RING: usize = 256;
const RECOMPUTE_EVERY: u64 = 32;

/// Says which outcomes of an attempt are failures to hedge against (Polly's `ShouldHandle`).
pub trait ShouldHedge<T, E> {
    /// Whether `result` is a failure that another attempt may beat.
    fn should_hedge(&self, result: &Result<T, E>) -> bool;
}

/// Hedges against every `Err` (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct HandleErrors;

impl<T, E> ShouldHedge<T, E> for HandleErrors {
    #[inline]
    fn should_hedge(&self, result: &Result<T, E>) -> bool {
        result.is_err()
    }
}

impl<T, E, F> ShouldHedge<T, E> for F
where
    F: Fn(&Result<T, E>) -> bool,
{
    fn should_hedge(&self, result: &Result<T, E>) -> bool {
        self(result)
    }
}

/// When to start the next attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// A fixed delay.
    Fixed(Duration),
    /// The `percentile` (in `(0, 100]`) of recent successful latencies; `fallback` until
    /// `min_samples` are known.
    Percentile {
        /// Which percentile, e.g. 95.0.
        percentile: f64,
        /// Samples needed before the percentile is trusted.
        min_samples: usize,
        /// The delay until then.
        fallback: Duration,
    },
}

struct Inner {
    name: Arc<str>,
    metrics: self::metrics::HedgeMetrics,
    delay: HedgeDelay,
    max_hedged: usize,
    budget: Option<RetryBudget>,
    /// `(floor, cap)` of a percentile delay, in nanoseconds.
    bounds: (u64, u64),
    samples: Box<[AtomicU64]>,
    recorded: AtomicU64,
    cached_delay: AtomicU64,
    hedges_started: AtomicUsize,
}

/// A cheap-to-clone hedging policy. See the [module docs](self).
#[derive(Clone)]
pub struct Hedge {
    inner: Arc<Inner>,
}

/// Builds a [`Hedge`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct HedgeBuilder {
    name: Arc<str>,
    delay: HedgeDelay,
    max_hedged: usize,
    budget: Option<RetryBudget>,
    bounds: (Duration, Duration),
}

impl HedgeBuilder {
    /// A name for traces and metrics. Default: `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// When to hedge. Default: the 95th percentile after 20 samples, 100 ms before.
    pub fn delay(mut self, delay: HedgeDelay) -> Self {
        self.delay = delay;
        self
    }

    /// Extra attempts at most. Default: 1 (tower's hedge and Polly's default).
    pub fn max_hedged_attempts(mut self, n: usize) -> Self {
        self.max_hedged = n;
        self
    }

    /// Caps extra attempts with `budget` (shared with other hedges or retries if cloned):
    /// each call deposits, each extra attempt withdraws, so with `ratio(0.1)` extra attempts
    /// stay near 10 % of calls (plus the budget's `min_per_sec`). Default: none.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Keeps a percentile delay within `[floor, cap]` (a too-short delay hedges nearly every
    /// call; a too-long one never helps). Default: 1 ms to 10 s.
    pub fn delay_bounds(mut self, floor: Duration, cap: Duration) -> Self {
        self.bounds = (floor, cap.max(floor));
        self
    }

    /// Builds the policy. A percentile outside `(0, 100]` is clamped into it.
    pub fn build(self) -> Hedge {
        let delay = match self.delay {
            HedgeDelay::Percentile {
                percentile,
                min_samples,
                fallback,
            } => HedgeDelay::Percentile {
                percentile: if percentile.is_nan() {
                    100.0
                } else {
                    percentile.clamp(f64::MIN_POSITIVE, 100.0)
                },
                min_samples: min_samples.clamp(1, RING),
                fallback,
            },
            fixed => fixed,
        };
        let initial = match delay {
            HedgeDelay::Fixed(d) | HedgeDelay::Percentile { fallback: d, .. } => d,
        };
        Hedge {
            inner: Arc::new(Inner {
                metrics: self::metrics::HedgeMetrics::new(&self.name),
                name: self.name,
                delay,
                max_hedged: self.max_hedged,
                budget: self.budget,
                bounds: (
                    duration_to_nanos(self.bounds.0),
                    duration_to_nanos(self.bounds.1),
                ),
                samples: (0..RING).map(|_| AtomicU64::new(0)).collect(),
                recorded: AtomicU64::new(0),
                cached_delay: AtomicU64::new(duration_to_nanos(initial)),
                hedges_started: AtomicUsize::new(0),
            }),
        }
    }
}

impl Hedge {
    /// A builder; defaults are listed on each method.
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder {
            name: Arc::from("default"),
            delay: HedgeDelay::Percentile {
                percentile: 95.0,
                min_samples: 20,
                fallback: Duration::from_millis(100),
            },
            max_hedged: 1,
            budget: None,
            bounds: (Duration::from_millis(1), Duration::from_secs(10)),
        }
    }

    /// The delay the next call would wait before hedging.
    pub fn current_delay(&self) -> Duration {
        match self.inner.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile { .. } => {
                Duration::from_nanos(self.inner.cached_delay.load(Ordering::Relaxed))
            }
        }
    }

    /// Extra attempts started so far.
    pub fn hedges_started(&self) -> usize {
        self.inner.hedges_started.load(Ordering::Relaxed)
    }

    /// Records a successful attempt's latency (done by [`call`](Self::call)).
    pub fn observe(&self, latency: Duration) {
        let inner = &*self.inner;
        let HedgeDelay::Percentile {
            percentile,
            min_samples,
            ..
        } = inner.delay
        else {
            return;
        };
        let n = inner.recorded.fetch_add(1, Ordering::Relaxed);
        inner.samples[(n % RING as u64) as usize]
            .store(duration_to_nanos(latency), Ordering::Relaxed);
        let known = (n + 1).min(RING as u64) as usize;
        if known >= min_samples && (known == min_samples || (n + 1).is_multiple_of(RECOMPUTE_EVERY))
        {
            let mut v: Vec<u64> = inner.samples[..known]
                .iter()
                .map(|s| s.load(Ordering::Relaxed))
                .collect();
            // Nearest-rank percentile.
            let rank = ((percentile / 100.0) * known as f64).ceil() as usize;
            let idx = rank.clamp(1, known) - 1;
            let (_, p, _) = v.select_nth_unstable(idx);
            let delay = (*p).clamp(inner.bounds.0, inner.bounds.1);
            inner.cached_delay.store(delay, Ordering::Relaxed);
            inner.metrics.delay(Duration::from_nanos(delay));
        }
    }

    /// Whether the budget (if any) allows one more attempt; counts the hedge when it does.
    fn may_hedge(&self) -> bool {
        if let Some(b) = &self.inner.budget
            && !b.try_withdraw()
        {
            tracing::debug!(
                hedge = &*self.inner.name,
                "hedge budget exhausted; not hedging"
            );
            self.inner.metrics.budget_exhausted();
            return false;
        }
        self.inner.hedges_started.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.hedged();
        true
    }

    /// Runs `f`, hedging as configured. `f` is called once per attempt; every `Err` is
    /// handled (starts the next attempt at once).
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(&HandleErrors, f).await
    }

    /// Runs `f`, hedging as configured, where `handle` says which outcomes are failures to
    /// hedge against (Polly's `ShouldHandle`). A handled outcome starts the next attempt at
    /// once, if one is left; an unhandled one — a success, or an error hedging cannot help,
    /// such as a 400 — is returned at once and the other attempts are dropped. When every
    /// attempt ends handled, the last outcome is returned.
    pub async fn call_with<H, F, Fut, T, E>(&self, handle: &H, mut f: F) -> Result<T, E>
    where
        H: ShouldHedge<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut max = 1 + self.inner.max_hedged;
        if let Some(b) = &self.inner.budget {
            b.deposit();
        }
        let delay = self.current_delay();
        let timed = |fut: Fut| {
            let started = Instant::now();
            async move { (fut.await, started.elapsed()) }
        };
        let mut running = FuturesUnordered::new();
        running.push(timed(f()));
        let mut started = 1;
        let mut next_at = floodwall_core::clock::deadline_after(delay);
        loop {
            let can_hedge = started < max;
            tokio::select! {
                done = running.next(), if !running.is_empty() => {
                    let Some((result, took)) = done else { continue };
                    if !handle.should_hedge(&result) {
                        if result.is_ok() {
                            self.observe(took);
                        }
                        return result;
                    }
                    if can_hedge && self.may_hedge() {
                        running.push(timed(f()));
                        started += 1;
                        next_at = floodwall_core::clock::deadline_after(delay);
                    } else if running.is_empty() {
                        // Every attempt ended handled; this one was the last.
                        return result;
                    } else {
                        // No more attempts: the budget is spent, or the attempts are.
                        max = started;
                    }
                }
                _ = tokio::time::sleep_until(next_at), if can_hedge => {
                    if !self.may_hedge() {
                        max = started;
                        continue;
                    }
                    tracing::debug!(hedge = &*self.inner.name, ?delay, attempt = started + 1, "hedging a slow call");
                    running.push(timed(f()));
                    started += 1;
                    next_at = floodwall_core::clock::deadline_after(delay);
                }
            }
        }
    }
}

impl fmt::Debug for Hedge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("name", &self.inner.name)
            .field("delay", &self.inner.delay)
            .field("max_hedged_attempts", &self.inner.max_hedged)
            .field("current_delay", &self.current_delay())
            .finish()
    }
}
