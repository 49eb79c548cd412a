//! The breaker's public vocabulary: states, outcomes, transitions, rejections, snapshots.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
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
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Clock reading (ns) at the transition.
    pub at_nanos: u64,
    /// For a trip (CLOSED or HALF_OPEN → OPEN on a threshold): the failure rate, in percent,
    /// of the window (or the half-open probes) that tripped it. `None` for every other
    /// transition (a manual one, an open wait ending, probes closing the breaker).
    pub failure_rate: Option<f64>,
    /// For a trip, as [`failure_rate`](Self::failure_rate): the slow-call rate in percent.
    pub slow_call_rate: Option<f64>,
}

/// The error that tripped a breaker, as a [`Classify::cause`] gave it.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// A call was not admitted.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The state that rejected the call.
    pub state: State,
    /// When the breaker will admit calls again: the rest of the open wait when open; `None`
    /// when unknown (forced open, or half-open with every probe slot taken).
    pub retry_after: Option<Duration>,
    /// The error that tripped the breaker into its current opening, when the failure was
    /// recorded with one (a classifier's [`cause`](Classify::cause), e.g. [`KeepCause`], or
    /// [`Permit::failure_with`](super::Permit::failure_with)); also the
    /// [`source`](std::error::Error::source) of this rejection (Polly's
    /// `BrokenCircuitException.InnerException`).
    pub cause: Option<Cause>,
}

impl PartialEq for Rejected {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
            && self.retry_after == other.retry_after
            && match (&self.cause, &other.cause) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for Rejected {}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced open",
            State::MetricsOnly => "metrics-only",
        })
    }
}

impl fmt::Display for Rejected {
    /// `circuit breaker open: call not admitted; retry after 1.996s` (the wait rounded up to
    /// the millisecond), or without the retry part when it is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker {}: call not admitted", self.state)?;
        if let Some(wait) = self.retry_after {
            let ms = wait.as_nanos().div_ceil(1_000_000);
            let wait = Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX));
            write!(f, "; retry after {wait:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// Decides the [`Outcome`] of a call from its result.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot classify a call whose result is `Result<{T}, {E}>`",
    label = "this classifier does not take `Result<{T}, {E}>`",
    note = "`HttpClassifier` classifies results whose `Ok` is an HTTP response (`http::Response<B>`, or a type implementing `floodwall_resilience::http::HttpResponse`); otherwise pass a closure `|r: &Result<{T}, {E}>| -> Outcome`, or implement `Classify<{T}, {E}>`"
)]
pub trait Classify<T, E> {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;

    /// The error to keep as the [`Rejected::cause`] if this failure trips the breaker. Asked
    /// only for the failure that trips it. Default: none.
    fn cause(&self, _result: &Result<T, E>) -> Option<Cause> {
        None
    }
}

/// Classifies with `C` and keeps the error that trips the breaker, by its message, as the
/// rejections' [`cause`](Rejected::cause) (errors are owned by the caller, so the breaker
/// keeps a [`TripError`] with the error's `Display` and `Debug` text).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepCause<C = DefaultClassifier>(pub C);

impl KeepCause {
    /// Keeps the cause, classifying `Ok` as success and `Err` as failure.
    pub const fn new() -> Self {
        KeepCause(DefaultClassifier)
    }
}

impl<T, E: fmt::Display + fmt::Debug, C: Classify<T, E>> Classify<T, E> for KeepCause<C> {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self.0.classify(result)
    }

    fn cause(&self, result: &Result<T, E>) -> Option<Cause> {
        match result {
            Err(e) => Some(Arc::new(TripError {
                message: e.to_string(),
                debug: format!("{e:?}"),
            })),
            Ok(_) => self.0.cause(result),
        }
    }
}

/// The text of the error that tripped a breaker (kept by [`KeepCause`]).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TripError {
    /// The error's `Display` text.
    pub message: String,
    /// The error's `Debug` text.
    pub debug: String,
}

impl fmt::Debug for TripError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.debug)
    }
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

/// What a breaker did, published to its [`events`](super::CircuitBreaker::events) listeners
/// (resilience4j's `CircuitBreakerEvent`s).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// A call recorded a success.
    Success,
    /// A call recorded a failure.
    Error,
    /// A call's outcome was ignored (dropped unrecorded, or classified [`Outcome::Ignored`]).
    Ignored,
    /// A call was not admitted (resilience4j's `CallNotPermitted`).
    NotPermitted(State),
    /// The failure rate reached its threshold (percent).
    FailureRateExceeded(f64),
    /// The slow-call rate reached its threshold (percent).
    SlowCallRateExceeded(f64),
    /// The state changed.
    StateTransition(Transition),
    /// [`reset`](super::CircuitBreaker::reset) was called.
    Reset,
}

/// What a break-duration generator is told about the opening it sizes (Polly's
/// `BreakDurationGeneratorArguments`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakInfo {
    /// Consecutive openings without a close, this one included (1 for the first; Polly's
    /// half-open attempts + 1).
    pub opening: u32,
    /// Calls counted in the window (or by the probes) that tripped it.
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// `100 * failures / calls`; 0 when no calls were counted (a manual opening).
    pub failure_rate: f64,
}
