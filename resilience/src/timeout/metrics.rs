//! A named timeout's metric handles (feature `metrics`), bound through floodwall-core's `Bound`.
//! Without the feature every handle is a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {
    use std::time::Instant;

    use metrics::{Counter, Histogram, counter, histogram};

    use crate::metrics::{Bound, Timed, bound};

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
            TimeoutMetrics(bound(name, |name| TimeoutHandles {
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
}

#[cfg(not(feature = "metrics"))]
mod imp {
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
}

pub(crate) use imp::*;
