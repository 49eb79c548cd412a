//! The circuit breaker's metric handles (feature `metrics`), bound through floodwall-core's `Bound`.
//! Without the feature every handle is a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::Instant;

    use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

    use crate::circuit_breaker::{Outcome, State};
    use crate::metrics::{Bound, Timed, bound};

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
                bound: bound(name, |name| {
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
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use crate::circuit_breaker::{Outcome, State};

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
}

pub(crate) use imp::*;
