//! Metric handles (feature `metrics`), created once per primitive so the hot path only bumps
//! an existing handle. Without the feature every handle is a zero-sized no-op.
//!
//! Names and labels are listed in the crate docs.

use crate::bulkhead::RejectReason;
use crate::circuit_breaker::{Outcome, State};

#[cfg(feature = "metrics")]
mod imp {
    use metrics::{Counter, Gauge, counter, gauge};

    use super::{Outcome, RejectReason, State};

    pub(crate) struct BreakerMetrics {
        state: Gauge,
        success: Counter,
        failure: Counter,
        ignored: Counter,
        rejected: Counter,
    }

    impl BreakerMetrics {
        pub(crate) fn new(name: &str) -> Self {
            crate::describe_metrics();
            let calls = |outcome: &'static str| counter!("floodwall_circuit_breaker_calls_total", "breaker" => name.to_owned(), "outcome" => outcome);
            BreakerMetrics {
                state: gauge!("floodwall_circuit_breaker_state", "breaker" => name.to_owned()),
                success: calls("success"),
                failure: calls("failure"),
                ignored: calls("ignored"),
                rejected: calls("rejected"),
            }
        }

        #[inline]
        pub(crate) fn outcome(&self, o: Outcome) {
            match o {
                Outcome::Success => self.success.increment(1),
                Outcome::Failure => self.failure.increment(1),
                Outcome::Ignored => self.ignored.increment(1),
            }
        }

        pub(crate) fn rejected(&self) {
            self.rejected.increment(1);
        }

        pub(crate) fn state(&self, s: State) {
            self.state.set(s as u8 as f64);
        }
    }

    pub(crate) struct RetryMetrics {
        retries: Counter,
        exhausted: Counter,
    }

    impl RetryMetrics {
        pub(crate) fn new(name: &str) -> Self {
            crate::describe_metrics();
            RetryMetrics {
                retries: counter!("floodwall_retry_retries_total", "retry" => name.to_owned()),
                exhausted: counter!("floodwall_retry_budget_exhausted_total", "retry" => name.to_owned()),
            }
        }

        pub(crate) fn retry(&self) {
            self.retries.increment(1);
        }

        pub(crate) fn budget_exhausted(&self) {
            self.exhausted.increment(1);
        }
    }

    pub(crate) struct BulkheadMetrics {
        in_flight: Gauge,
        queue: Gauge,
        full: Counter,
        queue_full: Counter,
        timed_out: Counter,
    }

    impl BulkheadMetrics {
        pub(crate) fn new(name: &str) -> Self {
            crate::describe_metrics();
            let rejected = |reason: &'static str| counter!("floodwall_bulkhead_rejected_total", "bulkhead" => name.to_owned(), "reason" => reason);
            BulkheadMetrics {
                in_flight: gauge!("floodwall_bulkhead_in_flight", "bulkhead" => name.to_owned()),
                queue: gauge!("floodwall_bulkhead_queue_depth", "bulkhead" => name.to_owned()),
                full: rejected("full"),
                queue_full: rejected("queue_full"),
                timed_out: rejected("wait_timed_out"),
            }
        }

        #[inline]
        pub(crate) fn admitted(&self) {
            self.in_flight.increment(1.0);
        }

        #[inline]
        pub(crate) fn released(&self) {
            self.in_flight.decrement(1.0);
        }

        pub(crate) fn queued(&self, delta: f64) {
            self.queue.increment(delta);
        }

        pub(crate) fn rejected(&self, r: RejectReason) {
            match r {
                RejectReason::Full => self.full.increment(1),
                RejectReason::QueueFull => self.queue_full.increment(1),
                RejectReason::WaitTimedOut => self.timed_out.increment(1),
            }
        }
    }

    pub(crate) struct HedgeMetrics {
        hedges: Counter,
    }

    impl HedgeMetrics {
        pub(crate) fn new(name: &str) -> Self {
            crate::describe_metrics();
            HedgeMetrics {
                hedges: counter!("floodwall_hedge_attempts_total", "hedge" => name.to_owned()),
            }
        }

        pub(crate) fn hedged(&self) {
            self.hedges.increment(1);
        }
    }

    pub(crate) struct AdaptiveMetrics {
        limit: Gauge,
        rejected: Counter,
    }

    impl AdaptiveMetrics {
        pub(crate) fn new(name: &str) -> Self {
            crate::describe_metrics();
            AdaptiveMetrics {
                limit: gauge!("floodwall_adaptive_limit", "limiter" => name.to_owned()),
                rejected: counter!("floodwall_adaptive_rejected_total", "limiter" => name.to_owned()),
            }
        }

        pub(crate) fn limit(&self, l: usize) {
            self.limit.set(l as f64);
        }

        pub(crate) fn rejected(&self) {
            self.rejected.increment(1);
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
        pub(crate) fn retry(&self) {}
        pub(crate) fn budget_exhausted(&self) {}
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

    pub(crate) struct HedgeMetrics;
    impl HedgeMetrics {
        pub(crate) fn new(_: &str) -> Self {
            HedgeMetrics
        }
        pub(crate) fn hedged(&self) {}
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

pub(crate) use imp::*;
