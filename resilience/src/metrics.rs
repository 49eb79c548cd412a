//! Metric handles (feature `metrics`), bound once per primitive — at construction, or at the
//! first event after a recorder was installed — so the hot path only bumps an existing
//! handle. Without the feature every handle is a zero-sized no-op.
//!
//! Names and labels are listed in the crate docs.

use crate::bulkhead::RejectReason;
use crate::circuit_breaker::{Outcome, State};

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

    use std::time::Instant;

    use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

    use super::{Outcome, RejectReason, State};

    /// A primitive's handles, bound to the recorder as soon as one is installed: at
    /// construction when it already is (so every series exists from then on, at zero), else
    /// at the first event after it was. Events before any recorder existed go nowhere, as
    /// with the `metrics` macros. Once bound, an event is one `OnceLock` read and the
    /// handle's own update: no lock, no allocation.
    pub(crate) struct Bound<H> {
        name: Box<str>,
        handles: OnceLock<H>,
        make: fn(&str) -> H,
    }

    impl<H> Bound<H> {
        pub(crate) fn new(name: &str, make: fn(&str) -> H) -> Self {
            let bound = Bound {
                name: name.into(),
                handles: OnceLock::new(),
                make,
            };
            let _ = bound.get();
            bound
        }

        /// The handles, binding them now if a recorder has been installed since.
        #[inline]
        pub(crate) fn get(&self) -> Option<&H> {
            match self.handles.get() {
                Some(h) => Some(h),
                None => self.bind(),
            }
        }

        /// The no-op recorder the facade falls back to is zero-sized; every real recorder
        /// holds state.
        #[cold]
        fn bind(&self) -> Option<&H> {
            let installed = metrics::with_recorder(|r| std::mem::size_of_val(r) != 0);
            if !installed {
                return None;
            }
            crate::describe_metrics();
            Some(self.handles.get_or_init(|| (self.make)(&self.name)))
        }

        /// Whether this call bound the handles (so gauges must be brought up to date).
        fn bind_fresh(&self) -> Option<(&H, bool)> {
            if let Some(h) = self.handles.get() {
                return Some((h, false));
            }
            self.bind().map(|h| (h, true))
        }
    }

    /// Handles that include a call-duration histogram.
    pub(crate) trait Timed {
        fn duration(&self) -> &Histogram;
    }

    impl<H: Timed> Bound<H> {
        /// When a measured call starts, if anyone is recording.
        #[inline]
        fn start(&self) -> Option<Instant> {
            self.get().map(|_| Instant::now())
        }

        /// Records how long the call that started at `started` took.
        #[inline]
        fn finish(&self, started: Option<Instant>) {
            if let Some(t) = started
                && let Some(h) = self.get()
            {
                h.duration().record(t.elapsed().as_secs_f64());
            }
        }
    }

    impl Timed for BreakerHandles {
        fn duration(&self) -> &Histogram {
            &self.duration
        }
    }

    struct BreakerHandles {
        duration: Histogram,
        state: Gauge,
        success: Counter,
        failure: Counter,
        ignored: Counter,
        rejected: Counter,
    }

    pub(crate) struct BreakerMetrics {
        bound: Bound<BreakerHandles>,
        /// The state last set, for a gauge bound later.
        state: AtomicU8,
    }

    impl BreakerMetrics {
        pub(crate) fn new(name: &str) -> Self {
            BreakerMetrics {
                bound: Bound::new(name, |name| {
                    let calls = |outcome: &'static str| counter!("floodwall_circuit_breaker_calls_total", "breaker" => name.to_owned(), "outcome" => outcome);
                    BreakerHandles {
                        duration: histogram!("floodwall_circuit_breaker_call_duration_seconds", "breaker" => name.to_owned()),
                        state: gauge!("floodwall_circuit_breaker_state", "breaker" => name.to_owned()),
                        success: calls("success"),
                        failure: calls("failure"),
                        ignored: calls("ignored"),
                        rejected: calls("rejected"),
                    }
                }),
                state: AtomicU8::new(State::Closed as u8),
            }
        }

        fn handles(&self) -> Option<&BreakerHandles> {
            let (h, fresh) = self.bound.bind_fresh()?;
            if fresh {
                h.state.set(f64::from(self.state.load(Ordering::Relaxed)));
            }
            Some(h)
        }

        #[inline]
        pub(crate) fn outcome(&self, o: Outcome) {
            let Some(h) = self.handles() else { return };
            match o {
                Outcome::Success => h.success.increment(1),
                Outcome::Failure => h.failure.increment(1),
                Outcome::Ignored => h.ignored.increment(1),
            }
        }

        pub(crate) fn rejected(&self) {
            if let Some(h) = self.handles() {
                h.rejected.increment(1);
            }
        }

        /// When an admitted call starts, if anyone is recording.
        #[inline]
        pub(crate) fn start(&self) -> Option<Instant> {
            self.handles().map(|_| Instant::now())
        }

        /// Records how long the call that started at `started` took.
        #[inline]
        pub(crate) fn finish(&self, started: Option<Instant>) {
            self.bound.finish(started);
        }

        pub(crate) fn state(&self, s: State) {
            self.state.store(s as u8, Ordering::Relaxed);
            if let Some(h) = self.handles() {
                h.state.set(f64::from(s as u8));
            }
        }
    }

    impl Timed for RetryHandles {
        fn duration(&self) -> &Histogram {
            &self.duration
        }
    }

    struct RetryHandles {
        duration: Histogram,
        retries: Counter,
        exhausted: Counter,
    }

    pub(crate) struct RetryMetrics(Bound<RetryHandles>);

    impl RetryMetrics {
        pub(crate) fn new(name: &str) -> Self {
            RetryMetrics(Bound::new(name, |name| RetryHandles {
                duration: histogram!("floodwall_retry_call_duration_seconds", "retry" => name.to_owned()),
                retries: counter!("floodwall_retry_retries_total", "retry" => name.to_owned()),
                exhausted: counter!("floodwall_retry_budget_exhausted_total", "retry" => name.to_owned()),
            }))
        }

        pub(crate) fn retry(&self) {
            if let Some(h) = self.0.get() {
                h.retries.increment(1);
            }
        }

        pub(crate) fn budget_exhausted(&self) {
            if let Some(h) = self.0.get() {
                h.exhausted.increment(1);
            }
        }

        /// Whether anyone is recording (binding the handles if a recorder came since).
        #[inline]
        pub(crate) fn recording(&self) -> bool {
            self.0.get().is_some()
        }

        /// Records how long a call took, retries and waits included.
        #[inline]
        pub(crate) fn record(&self, took: std::time::Duration) {
            if let Some(h) = self.0.get() {
                h.duration.record(took.as_secs_f64());
            }
        }
    }

    impl Timed for TimeoutHandles {
        fn duration(&self) -> &Histogram {
            &self.duration
        }
    }

    struct TimeoutHandles {
        duration: Histogram,
        timed_out: Counter,
    }

    pub(crate) struct TimeoutMetrics(Bound<TimeoutHandles>);

    impl TimeoutMetrics {
        pub(crate) fn new(name: &str) -> Self {
            TimeoutMetrics(Bound::new(name, |name| TimeoutHandles {
                duration: histogram!("floodwall_timeout_call_duration_seconds", "timeout" => name.to_owned()),
                timed_out: counter!("floodwall_timeout_timeouts_total", "timeout" => name.to_owned()),
            }))
        }

        /// When a timed call starts, if anyone is recording.
        #[inline]
        pub(crate) fn start(&self) -> Option<Instant> {
            self.0.start()
        }

        /// Records how long a call that finished in time took.
        #[inline]
        pub(crate) fn finish(&self, started: Option<Instant>) {
            self.0.finish(started);
        }

        pub(crate) fn timed_out(&self) {
            if let Some(h) = self.0.get() {
                h.timed_out.increment(1);
            }
        }
    }

    struct BulkheadHandles {
        in_flight: Gauge,
        queue: Gauge,
        full: Counter,
        queue_full: Counter,
        timed_out: Counter,
    }

    pub(crate) struct BulkheadMetrics {
        bound: Bound<BulkheadHandles>,
        /// The gauges' values, for gauges bound later.
        in_flight: AtomicI64,
        queue: AtomicI64,
    }

    impl BulkheadMetrics {
        pub(crate) fn new(name: &str) -> Self {
            BulkheadMetrics {
                bound: Bound::new(name, |name| {
                    let rejected = |reason: &'static str| counter!("floodwall_bulkhead_rejected_total", "bulkhead" => name.to_owned(), "reason" => reason);
                    BulkheadHandles {
                        in_flight: gauge!("floodwall_bulkhead_in_flight", "bulkhead" => name.to_owned()),
                        queue: gauge!("floodwall_bulkhead_queue_depth", "bulkhead" => name.to_owned()),
                        full: rejected("full"),
                        queue_full: rejected("queue_full"),
                        timed_out: rejected("wait_timed_out"),
                    }
                }),
                in_flight: AtomicI64::new(0),
                queue: AtomicI64::new(0),
            }
        }

        fn handles(&self) -> Option<&BulkheadHandles> {
            let (h, fresh) = self.bound.bind_fresh()?;
            if fresh {
                h.in_flight
                    .set(self.in_flight.load(Ordering::Relaxed) as f64);
                h.queue.set(self.queue.load(Ordering::Relaxed) as f64);
            }
            Some(h)
        }

        #[inline]
        pub(crate) fn admitted(&self) {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            if let Some(h) = self.handles() {
                h.in_flight.increment(1.0);
            }
        }

        #[inline]
        pub(crate) fn released(&self) {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Some(h) = self.handles() {
                h.in_flight.decrement(1.0);
            }
        }

        pub(crate) fn queued(&self, delta: f64) {
            self.queue.fetch_add(delta as i64, Ordering::Relaxed);
            if let Some(h) = self.handles() {
                h.queue.increment(delta);
            }
        }

        pub(crate) fn rejected(&self, r: RejectReason) {
            let Some(h) = self.handles() else { return };
            match r {
                RejectReason::Full => h.full.increment(1),
                RejectReason::QueueFull => h.queue_full.increment(1),
                RejectReason::WaitTimedOut => h.timed_out.increment(1),
            }
        }
    }

    pub(crate) struct ThrottleMetrics(Bound<Counter>);

    impl ThrottleMetrics {
        pub(crate) fn new(name: &str) -> Self {
            ThrottleMetrics(Bound::new(
                name,
                |name| counter!("floodwall_throttle_rejected_total", "throttle" => name.to_owned()),
            ))
        }

        pub(crate) fn rejected(&self) {
            if let Some(h) = self.0.get() {
                h.increment(1);
            }
        }
    }

    pub(crate) struct HedgeMetrics(Bound<HedgeHandles>);

    struct HedgeHandles {
        attempts: Counter,
        budget_exhausted: Counter,
        delay: Gauge,
    }

    impl HedgeMetrics {
        pub(crate) fn new(name: &str) -> Self {
            HedgeMetrics(Bound::new(name, |name| HedgeHandles {
                attempts: counter!("floodwall_hedge_attempts_total", "hedge" => name.to_owned()),
                budget_exhausted: counter!("floodwall_hedge_budget_exhausted_total", "hedge" => name.to_owned()),
                delay: gauge!("floodwall_hedge_delay_seconds", "hedge" => name.to_owned()),
            }))
        }

        pub(crate) fn hedged(&self) {
            if let Some(h) = self.0.get() {
                h.attempts.increment(1);
            }
        }

        pub(crate) fn budget_exhausted(&self) {
            if let Some(h) = self.0.get() {
                h.budget_exhausted.increment(1);
            }
        }

        /// The hedge delay the percentile set.
        pub(crate) fn delay(&self, d: std::time::Duration) {
            if let Some(h) = self.0.get() {
                h.delay.set(d.as_secs_f64());
            }
        }
    }

    struct AdaptiveHandles {
        limit: Gauge,
        rejected: Counter,
    }

    pub(crate) struct AdaptiveMetrics {
        bound: Bound<AdaptiveHandles>,
        limit: AtomicU64,
    }

    impl AdaptiveMetrics {
        pub(crate) fn new(name: &str) -> Self {
            AdaptiveMetrics {
                bound: Bound::new(name, |name| AdaptiveHandles {
                    limit: gauge!("floodwall_adaptive_limit", "limiter" => name.to_owned()),
                    rejected: counter!("floodwall_adaptive_rejected_total", "limiter" => name.to_owned()),
                }),
                limit: AtomicU64::new(0),
            }
        }

        fn handles(&self) -> Option<&AdaptiveHandles> {
            let (h, fresh) = self.bound.bind_fresh()?;
            if fresh {
                h.limit.set(self.limit.load(Ordering::Relaxed) as f64);
            }
            Some(h)
        }

        pub(crate) fn limit(&self, l: usize) {
            self.limit.store(l as u64, Ordering::Relaxed);
            if let Some(h) = self.handles() {
                h.limit.set(l as f64);
            }
        }

        pub(crate) fn rejected(&self) {
            if let Some(h) = self.handles() {
                h.rejected.increment(1);
            }
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use super::{Outcome, RejectReason, State};

    pub(crate) struct BreakerMetrics;
    impl BreakerMetrics {
        pub(crate) fn new(_: &str) -> Self {
            BreakerMetrics
        }
        #[inline(always)]
        pub(crate) fn start(&self) -> Option<std::time::Instant> {
            None
        }
        #[inline(always)]
        pub(crate) fn finish(&self, _: Option<std::time::Instant>) {}
        #[inline]
        pub(crate) fn outcome(&self, _: Outcome) {}
        pub(crate) fn rejected(&self) {}
        pub(crate) fn state(&self, _: State) {}
    }

    pub(crate) struct RetryMetrics;
    impl RetryMetrics {
        pub(crate) fn new(_: &str) -> Self {
            RetryMetrics
        }
        #[inline(always)]
        pub(crate) fn recording(&self) -> bool {
            false
        }
        #[inline(always)]
        pub(crate) fn record(&self, _: std::time::Duration) {}
        pub(crate) fn retry(&self) {}
        pub(crate) fn budget_exhausted(&self) {}
    }

    pub(crate) struct TimeoutMetrics;
    impl TimeoutMetrics {
        pub(crate) fn new(_: &str) -> Self {
            TimeoutMetrics
        }
        #[inline(always)]
        pub(crate) fn start(&self) -> Option<std::time::Instant> {
            None
        }
        #[inline(always)]
        pub(crate) fn finish(&self, _: Option<std::time::Instant>) {}
        pub(crate) fn timed_out(&self) {}
    }

    pub(crate) struct BulkheadMetrics;
    impl BulkheadMetrics {
        pub(crate) fn new(_: &str) -> Self {
            BulkheadMetrics
        }
        #[inline]
        pub(crate) fn admitted(&self) {}
        #[inline]
        pub(crate) fn released(&self) {}
        pub(crate) fn queued(&self, _: f64) {}
        pub(crate) fn rejected(&self, _: RejectReason) {}
    }

    pub(crate) struct ThrottleMetrics;
    impl ThrottleMetrics {
        pub(crate) fn new(_: &str) -> Self {
            ThrottleMetrics
        }
        pub(crate) fn rejected(&self) {}
    }

    pub(crate) struct HedgeMetrics;
    impl HedgeMetrics {
        pub(crate) fn new(_: &str) -> Self {
            HedgeMetrics
        }
        pub(crate) fn hedged(&self) {}
        pub(crate) fn budget_exhausted(&self) {}
        pub(crate) fn delay(&self, _: std::time::Duration) {}
    }

    pub(crate) struct AdaptiveMetrics;
    impl AdaptiveMetrics {
        pub(crate) fn new(_: &str) -> Self {
            AdaptiveMetrics
        }
        pub(crate) fn limit(&self, _: usize) {}
        pub(crate) fn rejected(&self) {}
    }
}

#[cfg(feature = "metrics")]
pub(crate) use imp::Bound;
pub(crate) use imp::*;
