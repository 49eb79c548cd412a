//! The adaptive throttle's metric handles (feature `metrics`), bound through floodwall-core's `Bound`.
//! Without the feature every handle is a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {

    use metrics::{Counter, counter};

    use crate::metrics::{Bound, bound};

    pub(crate) struct ThrottleMetrics(Bound<Counter>);

    impl ThrottleMetrics {
        pub(crate) fn new(name: &str) -> Self {
            ThrottleMetrics(bound(
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
}

#[cfg(not(feature = "metrics"))]
mod imp {
    pub(crate) struct ThrottleMetrics;
    impl ThrottleMetrics {
        pub(crate) fn new(_: &str) -> Self {
            ThrottleMetrics
        }
        pub(crate) fn rejected(&self) {}
    }
}

pub(crate) use imp::*;
