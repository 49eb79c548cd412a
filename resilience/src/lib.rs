//! # floodwall-resilience
//!
//! Keeps a call standing when what it calls misbehaves. Each primitive is a cheap-to-clone
//! handle with a plain async API and (feature `tower`) a `tower::Layer` sharing its state;
//! every one reads time through an injected [`Clock`], so tests drive it with a
//! [`ManualClock`].
//!
//! This release has the [`circuit_breaker`], [`retry`] (with jitter and a shared
//! [`RetryBudget`](retry::RetryBudget)), [`timeout`], [`bulkhead`], [`fallback`] and
//! [`chaos`] fault injection, [`hedge`], the [`adaptive`] concurrency limit (AIMD,
//! Gradient2), and with the `http` feature the HTTP classifiers in `http`.
//!
//! # Events
//!
//! The breaker and the bulkhead publish what they do, call by call, to listeners registered
//! through their `events()` ([`events::Events`]: callbacks, or a broadcast receiver); with no
//! listener, publishing costs one relaxed atomic load.
//!
//! # Time
//!
//! Whatever measures time without sleeping — the breaker's windows and open wait, the retry
//! budget, the adaptive limit's RTTs — reads an injected [`Clock`] ([`ManualClock`] in tests,
//! [`TokioClock`] to follow paused Tokio time). Whatever waits — retry backoff, timeouts,
//! bulkhead waits, hedge delays, injected latency — sleeps on Tokio's timer, so
//! `#[tokio::test(start_paused = true)]` runs it instantly.
//!
//! # One error type
//!
//! Every plain API returns [`Error<E>`]: `CircuitOpen`, `BulkheadFull`, `Limited`, `Timeout`,
//! `Injected`, or `Inner(E)` for the call's own error. The layers keep their inner service's error type and
//! only need it to be buildable `From` their rejection, so with [`ErrorLayer`] innermost a
//! whole stack reports one `Error<E>` to match on.
//!
//! # Recommended order
//!
//! Outermost first, as in `tower::ServiceBuilder`:
//!
//! 1. `FallbackLayer` — answers for whatever is left below;
//! 2. `TimeoutLayer` — the overall deadline, retries included;
//! 3. `RetryLayer` — with a policy that retries transient errors and per-attempt timeouts
//!    but not rejections (an open circuit says when to come back);
//! 4. `CircuitBreakerLayer` — sees every attempt, so a dead downstream trips it quickly;
//! 5. `BulkheadLayer` — holds a slot only while an attempt runs;
//! 6. `TimeoutLayer` — the bound on each attempt (a timeout counts as a breaker failure);
//! 7. `ErrorLayer` — turns the service's error `E` into `Error<E>`;
//! 8. the service.
//!
//! Without tower, [`Pipeline`] runs the same stages in the same order around a plain async
//! call.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use floodwall_resilience::Error;
//! use floodwall_resilience::circuit_breaker::CircuitBreaker;
//!
//! let breaker = CircuitBreaker::builder().name("payments").build().unwrap();
//! let charged: Result<u32, Error<&str>> = breaker.call(|| async { Ok(42) }).await;
//! assert_eq!(charged, Ok(42));
//! # }
//! ```
//!
//! # Metrics
//!
//! With the `metrics` feature each primitive registers its handles with the
//! [`metrics`](https://docs.rs/metrics) facade when it is built (install a recorder first,
//! e.g. a Prometheus exporter); the hot path only bumps them. Labels name the primitive
//! (`name(..)` on its builder, `"default"` otherwise). Building a primitive also registers
//! each metric's description and unit; `describe_metrics()` does it again, for primitives
//! built before the recorder was installed. A call admitted before a recorder was installed is not
//! recorded.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `floodwall_circuit_breaker_state` | gauge | `breaker` | 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only |
//! | `floodwall_circuit_breaker_calls_total` | counter | `breaker`, `outcome` = `success` / `failure` / `ignored` / `rejected` | calls by outcome |
//! | `floodwall_circuit_breaker_call_duration_seconds` | histogram | `breaker` | calls the breaker admitted |
//! | `floodwall_circuit_breaker_fleet_connected` | gauge | `breaker` | a fleet breaker's last sync was answered (1) or it decides alone (0) |
//! | `floodwall_circuit_breaker_fleet_open` | gauge | `breaker` | the fleet's verdict at the last sync (1 open) |
//! | `floodwall_circuit_breaker_fleet_instances` | gauge | `breaker` | live instances in the fleet at the last sync |
//! | `floodwall_circuit_breaker_fleet_sync_errors_total` | counter | `breaker` | syncs the fleet's store did not answer |
//! | `floodwall_retry_call_duration_seconds` | histogram | `retry` | calls through a retry, every attempt and wait included |
//! | `floodwall_retry_retries_total` | counter | `retry` | retries made (first attempts not counted) |
//! | `floodwall_retry_budget_exhausted_total` | counter | `retry` | retries refused by the budget |
//! | `floodwall_timeout_call_duration_seconds` | histogram | `timeout` | calls through a named timeout that finished in time |
//! | `floodwall_timeout_timeouts_total` | counter | `timeout` | calls a named timeout cut |
//! | `floodwall_bulkhead_in_flight` | gauge | `bulkhead` | calls holding a slot |
//! | `floodwall_bulkhead_queue_depth` | gauge | `bulkhead` | callers waiting for a slot |
//! | `floodwall_bulkhead_rejected_total` | counter | `bulkhead`, `reason` = `full` / `queue_full` / `wait_timed_out` | rejections |
//! | `floodwall_hedge_attempts_total` | counter | `hedge` | hedged (extra) attempts started |
//! | `floodwall_hedge_budget_exhausted_total` | counter | `hedge` | hedges the budget refused |
//! | `floodwall_hedge_delay_seconds` | gauge | `hedge` | the hedge delay the latency percentile sets |
//! | `floodwall_throttle_rejected_total` | counter | `throttle` | calls an adaptive throttle rejected locally |
//! | `floodwall_shed_level` | gauge | `shedder` | a load shedder's level: 0 sheds nothing, 0.5 every sheddable request, 1 every non-critical one |
//! | `floodwall_shed_pressure` | gauge | `shedder` | the highest signal's last reading (1 = at its threshold) |
//! | `floodwall_shed_signal_pressure` | gauge | `shedder`, `signal` | each signal's last reading |
//! | `floodwall_shed_in_flight` | gauge | `shedder` | requests counted in flight (with a capacity or a latency target) |
//! | `floodwall_shed_reserved_in_use` | gauge | `shedder` | requests in flight beyond the non-critical share |
//! | `floodwall_shed_rejected_total` | counter | `shedder`, `priority` | requests shed |
//! | `floodwall_adaptive_limit` | gauge | `limiter` | the current adaptive limit |
//! | `floodwall_adaptive_rejected_total` | counter | `limiter` | calls over the adaptive limit |
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod adaptive;
pub mod bulkhead;
pub mod chaos;
pub mod circuit_breaker;
mod clock;
mod error;
pub mod events;
pub mod fallback;
pub mod hedge;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod metrics;
pub mod pipeline;
pub mod registry;
pub mod retry;
pub mod shed;
pub mod throttle;
pub mod timeout;

// The primitives that refuse or cut calls, each with its variant of the family's [`Error`]:
// a new one adds its folder above and its line here.
error::rejections! {
    /// A circuit breaker did not admit the call.
    CircuitOpen(circuit_breaker::Rejected),
    /// A bulkhead did not admit the call.
    BulkheadFull(bulkhead::Rejected),
    /// An adaptive concurrency limit did not admit the call.
    Limited(adaptive::Rejected),
    /// A timeout cut the call.
    Timeout(timeout::Elapsed),
    /// Fault injection failed the call on purpose.
    Injected(chaos::Injected),
    /// A load shedder turned the call away (the process is overloaded).
    Shed(shed::Shed),
}

pub use clock::TokioClock;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use error::{ErrorLayer, ErrorService};
/// `nonzero!(3)`: a `NonZero` count checked at build time (from floodwall-core).
pub use floodwall_core::nonzero;
pub use floodwall_core::{Clock, ManualClock, SystemClock};
pub use pipeline::Pipeline;

/// The hedge's metrics (see [`describe_metrics`]).
#[cfg(feature = "metrics")]
fn describe_hedge_metrics() {
    use ::metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        "floodwall_hedge_attempts_total",
        Unit::Count,
        "Hedged (extra) attempts started"
    );
    describe_counter!(
        "floodwall_hedge_budget_exhausted_total",
        Unit::Count,
        "Hedges a hedge's budget refused"
    );
    describe_gauge!(
        "floodwall_hedge_delay_seconds",
        Unit::Seconds,
        "The hedge delay the recent latency percentile sets"
    );
}

/// The fleet breaker's metrics (see [`describe_metrics`]).
#[cfg(feature = "metrics")]
fn describe_fleet_metrics() {
    use ::metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        "floodwall_circuit_breaker_fleet_connected",
        "A fleet breaker's last sync was answered (1), or it decides alone (0)"
    );
    describe_gauge!(
        "floodwall_circuit_breaker_fleet_open",
        "The fleet's verdict at a fleet breaker's last sync (1 open)"
    );
    describe_gauge!(
        "floodwall_circuit_breaker_fleet_instances",
        Unit::Count,
        "Live instances in a fleet breaker's fleet at its last sync"
    );
    describe_counter!(
        "floodwall_circuit_breaker_fleet_sync_errors_total",
        Unit::Count,
        "Syncs a fleet breaker's store did not answer"
    );
}

/// The load shedder's metrics (see [`describe_metrics`]).
#[cfg(feature = "metrics")]
fn describe_overload_metrics() {
    use ::metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        "floodwall_shed_level",
        Unit::Count,
        "A load shedder's level: 0 sheds nothing, 0.5 all sheddable requests, 1 every non-critical one"
    );
    describe_gauge!(
        "floodwall_shed_signal_pressure",
        Unit::Count,
        "Each overload signal's last reading over its threshold (1 = at it), by signal"
    );
    describe_gauge!(
        "floodwall_shed_pressure",
        Unit::Count,
        "The highest overload signal a load shedder read last (1 = at its threshold)"
    );
    describe_gauge!(
        "floodwall_shed_in_flight",
        Unit::Count,
        "Requests a load shedder counts in flight (with a capacity or a latency target)"
    );
    describe_gauge!(
        "floodwall_shed_reserved_in_use",
        Unit::Count,
        "Requests in flight beyond the non-critical share: the reserve critical requests use"
    );
    describe_counter!(
        "floodwall_shed_rejected_total",
        Unit::Count,
        "Requests a load shedder turned away, by priority"
    );
}

/// Registers the description and unit of every metric this crate emits with the installed
/// `metrics` recorder (so Prometheus shows `# HELP`). Each primitive does it when built; call
/// it yourself after installing a recorder if primitives were built before.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe_metrics() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "floodwall_circuit_breaker_call_duration_seconds",
        Unit::Seconds,
        "How long calls admitted by a circuit breaker took (call and call_classified)"
    );
    describe_overload_metrics();
    describe_fleet_metrics();
    describe_histogram!(
        "floodwall_retry_call_duration_seconds",
        Unit::Seconds,
        "How long calls through a retry took, every attempt and wait included"
    );
    describe_histogram!(
        "floodwall_timeout_call_duration_seconds",
        Unit::Seconds,
        "How long calls through a named timeout took, when they finished in time"
    );
    describe_counter!(
        "floodwall_timeout_timeouts_total",
        Unit::Count,
        "Calls a named timeout cut"
    );
    describe_gauge!(
        "floodwall_circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only"
    );
    describe_counter!(
        "floodwall_circuit_breaker_calls_total",
        Unit::Count,
        "Calls through a circuit breaker, by outcome (success, failure, ignored, rejected)"
    );
    describe_counter!(
        "floodwall_retry_retries_total",
        Unit::Count,
        "Retries made (first attempts not counted)"
    );
    describe_counter!(
        "floodwall_retry_budget_exhausted_total",
        Unit::Count,
        "Retries refused by the retry budget"
    );
    describe_gauge!(
        "floodwall_bulkhead_in_flight",
        Unit::Count,
        "Calls holding a bulkhead slot"
    );
    describe_gauge!(
        "floodwall_bulkhead_queue_depth",
        Unit::Count,
        "Callers waiting for a bulkhead slot"
    );
    describe_counter!(
        "floodwall_bulkhead_rejected_total",
        Unit::Count,
        "Calls a bulkhead rejected, by reason"
    );
    describe_hedge_metrics();
    describe_counter!(
        "floodwall_throttle_rejected_total",
        Unit::Count,
        "Calls an adaptive throttle rejected locally"
    );
    describe_gauge!(
        "floodwall_adaptive_limit",
        Unit::Count,
        "The current adaptive concurrency limit"
    );
    describe_counter!(
        "floodwall_adaptive_rejected_total",
        Unit::Count,
        "Calls over the adaptive concurrency limit"
    );
}

/// The README's example, compiled and run as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
