//! The hedge's metric handles (feature `metrics`), bound through floodwall-core's `Bound`.
//! Without the feature every handle is a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {

    use metrics::{Counter, Gauge, counter, gauge};

    use crate::metrics::{Bound, bound};

    pub(crate) struct HedgeMetrics(Bound<HedgeHandles>);

    struct HedgeHandles {
        attempts: Counter,
        budget_exhausted: Counter,
        delay: Gauge,
    }

    impl HedgeMetrics {
        pub(crate) fn new(name: &str) -> Self {
            HedgeMetrics(bound(name, |name| HedgeHandles {
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
}

#[cfg(not(feature = "metrics"))]
mod imp {
    pub(crate) struct HedgeMetrics;
    impl HedgeMetrics {
        pub(crate) fn new(_: &str) -> Self {
            HedgeMetrics
        }
        pub(crate) fn hedged(&self) {}
        pub(crate) fn budget_exhausted(&self) {}
        pub(crate) fn delay(&self, _: std::time::Duration) {}
    }
}

pub(crate) use imp::*;
