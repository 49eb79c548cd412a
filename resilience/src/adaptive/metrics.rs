//! The adaptive limit's metric handles (feature `metrics`), bound through floodwall-core's `Bound`.
//! Without the feature every handle is a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};

    use metrics::{Counter, Gauge, counter, gauge};

    use crate::metrics::{Bound, bound};

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
                bound: bound(name, |name| AdaptiveHandles {
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
    pub(crate) struct AdaptiveMetrics;
    impl AdaptiveMetrics {
        pub(crate) fn new(_: &str) -> Self {
            AdaptiveMetrics
        }
        pub(crate) fn limit(&self, _: usize) {}
        pub(crate) fn rejected(&self) {}
    }
}

pub(crate) use imp::*;
