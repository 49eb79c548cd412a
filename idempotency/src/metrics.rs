//! Metrics (feature `metrics`), all counters:
//!
//! - `floodwall_idempotency_executions_total`: operations run (claims won);
//! - `floodwall_idempotency_replays_total`: results replayed;
//! - `floodwall_idempotency_conflicts_total`: duplicates answered "in progress";
//! - `floodwall_idempotency_mismatches_total`: keys reused with another payload;
//! - `floodwall_idempotency_duplicates_total`: queue messages skipped as already processed;
//! - `floodwall_idempotency_unrecorded_total`: operations that ran but whose result could
//!   not be stored (a retry may run them again);
//! - `floodwall_idempotency_unreleased_total`: claims that could not be released (their key
//!   answers "in progress" until the lease ends).

macro_rules! counter_fn {
    ($f:ident, $name:literal) => {
        #[cfg(feature = "metrics")]
        pub(crate) fn $f() {
            metrics::counter!($name).increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        #[inline(always)]
        pub(crate) fn $f() {}
    };
}

counter_fn!(executed, "floodwall_idempotency_executions_total");
counter_fn!(replayed, "floodwall_idempotency_replays_total");
counter_fn!(conflict, "floodwall_idempotency_conflicts_total");
counter_fn!(mismatch, "floodwall_idempotency_mismatches_total");
counter_fn!(duplicate, "floodwall_idempotency_duplicates_total");
counter_fn!(unrecorded, "floodwall_idempotency_unrecorded_total");
counter_fn!(unreleased, "floodwall_idempotency_unreleased_total");
