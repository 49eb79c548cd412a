//! The bulkhead's metric handles (feature `metrics`), bound through floodwall-core's `Bound`.
//! Without the feature every handle is a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::atomic::{AtomicI64, Ordering};

    use metrics::{Counter, Gauge, counter, gauge};

    use crate::bulkhead::RejectReason;
    use crate::metrics::{Bound, bound};

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
                bound: bound(name, |name| {
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
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use crate::bulkhead::RejectReason;

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
}

pub(crate) use imp::*;
