//! Adaptive concurrency limit: a bulkhead whose limit follows the downstream's latency and
//! drops ([`Aimd`], [`Gradient2`], [`Vegas`]; formulas on each).
//!
//! A call is admitted while fewer than `limit` are in flight (a compare-and-swap, no lock);
//! otherwise it is rejected at once with [`Rejected`] (the limit is the queue: waiting would
//! hide the overload the algorithm measures). When an admitted call finishes, its RTT (read
//! from the injected [`Clock`]) and whether it was dropped join the current window of
//! samples (a short lock). A window holds `limit` samples by default — about one round trip
//! at full load, as in Netflix's `WindowedLimit` and TCP's once-per-RTT updates — or a fixed
//! number ([`samples_per_update`](AdaptiveLimitBuilder::samples_per_update)); when it fills,
//! the algorithm gets one [`Sample`] — mean RTT, largest in-flight count, dropped if any call
//! was — and sets the next limit. A permit dropped unrecorded (a cancelled call) frees its
//! slot without a sample.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::ManualClock;
//! use floodwall_resilience::adaptive::{AdaptiveLimit, Aimd};
//! use floodwall_resilience::circuit_breaker::Outcome;
//!
//! let clock = ManualClock::new();
//! let limit = AdaptiveLimit::builder(Aimd { initial: 4, ..Aimd::default() })
//!     .clock(clock.clone())
//!     .build();
//! let permits: Vec<_> = (0..4).map(|_| limit.try_acquire().unwrap()).collect();
//! assert!(limit.try_acquire().is_err(), "4 in flight: the limit");
//! clock.advance(Duration::from_millis(20));
//! for p in permits {
//!     p.record(Outcome::Success);
//! }
//! // One window of 4 samples, the limit fully used and no drop: AIMD adds 1.
//! assert_eq!(limit.limit(), 5);
//! ```

mod algorithm;
#[cfg(feature = "tower")]
mod layer;
mod metrics;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::{Clock, SystemClock};

use crate::Error;
use crate::circuit_breaker::{Classify, DefaultClassifier, Outcome};

pub use algorithm::{Aimd, Gradient2, Gradient2Config, LimitAlgorithm, Sample, Vegas};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{AdaptiveLimitLayer, AdaptiveLimitService, ResponseFuture};

/// The limit was reached; the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("adaptive concurrency limit reached ({limit} in flight)")]
pub struct Rejected {
    /// The limit at the time.
    pub limit: usize,
}

struct Inner {
    metrics: self::metrics::AdaptiveMetrics,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    state: Mutex<Windowed>,
    clock: Arc<dyn Clock>,
}

/// The algorithm and the samples gathered since its last update.
struct Windowed {
    algorithm: Box<dyn LimitAlgorithm>,
    per_update: Option<usize>,
    count: usize,
    rtt_sum: Duration,
    max_in_flight: usize,
    dropped: bool,
}

/// A cheap-to-clone adaptive concurrency limiter. See the [module docs](self).
#[derive(Clone)]
pub struct AdaptiveLimit {
    inner: Arc<Inner>,
}

/// Builds an [`AdaptiveLimit`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct AdaptiveLimitBuilder {
    name: Arc<str>,
    algorithm: Box<dyn LimitAlgorithm>,
    clock: Arc<dyn Clock>,
    per_update: Option<usize>,
}

impl AdaptiveLimitBuilder {
    /// A name for traces and metrics. Default: `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Samples per algorithm update: `None` for the current limit (the default), `Some(1)` to
    /// update on every call.
    pub fn samples_per_update(mut self, n: Option<usize>) -> Self {
        self.per_update = n.map(|n| n.max(1));
        self
    }

    /// The time source for RTTs. Default: [`SystemClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the limiter.
    pub fn build(self) -> AdaptiveLimit {
        let initial = self.algorithm.initial_limit().max(1);
        AdaptiveLimit {
            inner: Arc::new(Inner {
                metrics: {
                    let m = self::metrics::AdaptiveMetrics::new(&self.name);
                    m.limit(initial);
                    m
                },
                limit: AtomicUsize::new(initial),
                in_flight: AtomicUsize::new(0),
                state: Mutex::new(Windowed {
                    algorithm: self.algorithm,
                    per_update: self.per_update,
                    count: 0,
                    rtt_sum: Duration::ZERO,
                    max_in_flight: 0,
                    dropped: false,
                }),
                clock: self.clock,
            }),
        }
    }
}

impl fmt::Debug for AdaptiveLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimitBuilder")
            .finish_non_exhaustive()
    }
}

/// A slot held by one call; [`record`](Self::record) its outcome to feed the algorithm.
#[must_use = "record the outcome, or the slot is freed without a sample"]
pub struct Permit<'a> {
    limit: &'a AdaptiveLimit,
    started: u64,
    in_flight: usize,
    done: bool,
}

impl Permit<'_> {
    /// Frees the slot and feeds the algorithm: `Failure` counts as dropped, `Ignored` gives no
    /// sample.
    pub fn record(mut self, outcome: Outcome) {
        self.done = true;
        self.limit.finish(self.started, self.in_flight, outcome);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.limit
                .finish(self.started, self.in_flight, Outcome::Ignored);
        }
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl AdaptiveLimit {
    /// A builder around `algorithm`.
    pub fn builder(algorithm: impl LimitAlgorithm) -> AdaptiveLimitBuilder {
        AdaptiveLimitBuilder {
            name: Arc::from("default"),
            algorithm: Box::new(algorithm),
            clock: Arc::new(SystemClock::new()),
            per_update: None,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Acquire)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Takes a slot if fewer than `limit` calls are in flight.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let (started, in_flight) = self.take()?;
        Ok(Permit {
            limit: self,
            started,
            in_flight,
            done: false,
        })
    }

    /// Runs `f` in a slot; `classifier` tells which results are drops (`Failure`).
    pub async fn call_classified<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        f: F,
    ) -> Result<T, Error<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(Error::Limited)?;
        let result = f().await;
        permit.record(classifier.classify(&result));
        result.map_err(Error::Inner)
    }

    /// Runs `f` in a slot; an `Err` counts as dropped.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(&DefaultClassifier, f).await
    }

    /// Reserves a slot: `(start time, in flight including this call)`.
    pub(crate) fn take(&self) -> Result<(u64, usize), Rejected> {
        let inner = &*self.inner;
        let limit = inner.limit.load(Ordering::Acquire);
        let mut cur = inner.in_flight.load(Ordering::Acquire);
        loop {
            if cur >= limit {
                inner.metrics.rejected();
                return Err(Rejected { limit });
            }
            match inner.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok((inner.clock.now_nanos(), cur + 1)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Frees a slot and feeds the sample.
    pub(crate) fn finish(&self, started: u64, in_flight: usize, outcome: Outcome) {
        let inner = &*self.inner;
        inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        let dropped = match outcome {
            Outcome::Ignored => return,
            Outcome::Success => false,
            Outcome::Failure => true,
        };
        let rtt = Duration::from_nanos(inner.clock.now_nanos().saturating_sub(started));
        let mut w = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        w.count += 1;
        w.rtt_sum = w.rtt_sum.saturating_add(rtt);
        w.max_in_flight = w.max_in_flight.max(in_flight);
        w.dropped |= dropped;
        let current = inner.limit.load(Ordering::Acquire);
        if w.count < w.per_update.unwrap_or(current).max(1) {
            return;
        }
        let sample = Sample {
            rtt: w.rtt_sum / w.count as u32,
            in_flight: w.max_in_flight,
            dropped: w.dropped,
        };
        let next = w.algorithm.update(current, sample).max(1);
        w.count = 0;
        w.rtt_sum = Duration::ZERO;
        w.max_in_flight = 0;
        w.dropped = false;
        inner.limit.store(next, Ordering::Release);
        inner.metrics.limit(next);
        drop(w);
        if next != current {
            tracing::trace!(from = current, to = next, "adaptive limit changed");
        }
    }
}

impl fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}
