//! The breaker's public vocabulary: states, outcomes, transitions, rejections, snapshots.

use std::time::Duration;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes are recorded and judged.
    Closed,
    /// Calls are rejected until the open wait has passed.
    Open,
    /// A fixed number of probe calls are let through to decide close or re-open.
    HalfOpen,
    /// Manual: every call is admitted, nothing is recorded.
    Disabled,
    /// Manual: every call is rejected until another manual transition.
    ForcedOpen,
    /// Manual: outcomes are recorded and rates reported, but no call is ever rejected.
    MetricsOnly,
}

impl State {
    #[inline(always)]
    pub(super) fn code(self) -> u64 {
        self as u64
    }

    #[inline(always)]
    pub(super) fn from_code(c: u64) -> State {
        match c {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::Disabled,
            4 => State::ForcedOpen,
            _ => State::MetricsOnly,
        }
    }
}

/// How a finished call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Counts as a success.
    Success,
    /// Counts as a failure.
    Failure,
    /// Does not count (e.g. a client error that says nothing about the downstream's health).
    Ignored,
}

/// A state change, passed to the [`on_transition`](super::CircuitBreakerBuilder::on_transition)
/// hook and emitted as a `tracing` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Clock reading (ns) at the transition.
    pub at_nanos: u64,
}

/// A call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is {state:?}; retry after {retry_after:?}")]
pub struct Rejected {
    /// The state that rejected the call.
    pub state: State,
    /// When the breaker will admit calls again: the rest of the open wait when open; `None`
    /// when unknown (forced open, or half-open with every probe slot taken).
    pub retry_after: Option<Duration>,
}

/// Decides the [`Outcome`] of a call from its result.
pub trait Classify<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

/// `Ok` is a success, `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<T, E> Classify<T, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// A point-in-time view of the breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// The state.
    pub state: State,
    /// Successes plus failures in the window (in half-open: recorded probes).
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// Slow calls among them.
    pub slow_calls: u64,
    /// `100 * failures / calls`, or `None` while below `minimum_calls` (in half-open: until
    /// every probe has finished).
    pub failure_rate: Option<f64>,
    /// `100 * slow_calls / calls`, with the same rule.
    pub slow_call_rate: Option<f64>,
    /// Calls rejected since the breaker was built.
    pub not_permitted: u64,
}

/// A manual transition the breaker's state machine does not allow (resilience4j's
/// `IllegalStateTransitionException`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a circuit breaker cannot go from {from:?} to {to:?}")]
pub struct IllegalTransition {
    /// The state it was in.
    pub from: State,
    /// The state asked for.
    pub to: State,
}
