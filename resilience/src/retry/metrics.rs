//! The retry's metric handles (feature `metrics`), bound through floodwall-core's `Bound`.
//! Without the feature every handle is a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {

    use metrics::{Counter, Histogram, counter, histogram};

    use crate::metrics::{Bound, Timed, bound};

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
            RetryMetrics(bound(name, |name| RetryHandles {
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
}

#[cfg(not(feature = "metrics"))]
mod imp {
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
}

pub(crate) use imp::*;
