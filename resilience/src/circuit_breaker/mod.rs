//! Circuit breaker: stop calling a downstream that is failing or slow, probe it, resume.
//!
//! # State machine
//!
//! ```text
//!            failure rate >= threshold or slow-call rate >= threshold
//!   CLOSED ───────────────────────────────────────────────────────────▶ OPEN
//!     ▲        (judged after every outcome, once the window holds        │
//!     │         `minimum_calls`; below that the rates are unknown)       │ wait_in_open elapsed
//!     │                                                                   ▼ (at exactly the wait: half-open)
//!     └──────────── probes' rates below both thresholds ──────────── HALF-OPEN
//!                   probes' rates at or above a threshold, or `max_wait_in_half_open` ──▶ OPEN
//! ```
//!
//! Manual states: [`State::Disabled`] (always admits, records nothing), [`State::ForcedOpen`]
//! (always rejects), [`State::MetricsOnly`] (records and reports rates, never rejects).
//!
//! # Formulas and choices
//!
//! - Outcomes are three-valued ([`Outcome`]): success, failure, ignored. Ignored calls do not
//!   count; a half-open probe that ends ignored (or whose [`Permit`] is dropped unrecorded,
//!   e.g. a cancelled future) hands its probe slot back.
//! - `failure_rate = 100 * failures / calls` and `slow_rate = 100 * slow / calls` over the
//!   window, where `calls` counts successes and failures and a call is slow when it took at
//!   least `slow_call_duration` (successes and failures alike; with
//!   `slow_call_duration(None)` no call is slow and the closed path of a count window reads
//!   no clock at all). The breaker trips when
//!   `calls >= minimum_calls` and either rate is **at or above** its threshold.
//! - Count window: the last `n` outcomes. Time window: the outcomes of the last `n` whole
//!   clock seconds (aligned to the [`Clock`]'s seconds).
//! - Open wait: fixed, or backoff `initial * multiplier^(k-1)` capped at `max` for the k-th
//!   opening without a close in between (a forced opening counts as one, as resilience4j's
//!   attempts do; disabled and metrics-only end the run as a close does). At
//!   `now >= opened_at + wait` the breaker is half-open.
//! - Half-open admits exactly `permitted_calls_in_half_open` probes; once all of them have
//!   recorded an outcome, their own rates decide close or re-open.
//! - Transitions are made lazily, by the first [`try_acquire`](CircuitBreaker::try_acquire)
//!   or [`state`](CircuitBreaker::state) that finds them due, so no background task runs and
//!   a [`ManualClock`](floodwall_core::ManualClock) drives everything. With
//!   [`automatic_half_open`](CircuitBreakerBuilder::automatic_half_open) a Tokio task also
//!   applies the open → half-open transition when the wait ends, so the event and the state
//!   gauge change on time without traffic (resilience4j's
//!   `automaticTransitionFromOpenToHalfOpenEnabled`).
//! - Outcomes recorded with a permit from before a transition are dropped: they belong to a
//!   state that no longer exists.
//!
//! # Invariants
//!
//! - In half-open, at most `permitted_calls_in_half_open` permits are outstanding, however
//!   many threads race.
//! - The closed path — admit and record — takes no lock and allocates nothing; transitions
//!   (rare) take an internal mutex so their side effects are ordered. In a
//!   [fleet], a failure that finds no wake-up pending also wakes the fleet's sync
//!   task (once per sync).
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use floodwall_core::ManualClock;
//! use floodwall_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, OpenWait, State};
//!
//! let clock = ManualClock::new();
//! let breaker = CircuitBreaker::builder()
//!     .sliding_window(SlidingWindow::Count(NonZeroU32::new(4).unwrap()))
//!     .minimum_calls(4)
//!     .failure_rate_threshold(50.0)
//!     .open_wait(OpenWait::Fixed(Duration::from_secs(10)))
//!     .permitted_calls_in_half_open(NonZeroU32::new(1).unwrap())
//!     .clock(clock.clone())
//!     .build()
//!     .unwrap();
//!
//! for ok in [true, false, true, false] {
//!     let permit = breaker.try_acquire().unwrap();
//!     if ok { permit.success() } else { permit.failure() }
//! }
//! // 2 of 4 failed: 50% >= 50%, so it opened and tells callers when to come back.
//! let rejected = breaker.try_acquire().unwrap_err();
//! assert_eq!(rejected.state, State::Open);
//! assert_eq!(rejected.retry_after, Some(Duration::from_secs(10)));
//!
//! clock.advance(Duration::from_secs(10));
//! assert_eq!(breaker.state(), State::HalfOpen);
//! breaker.try_acquire().unwrap().success(); // the one probe succeeds
//! assert_eq!(breaker.state(), State::Closed);
//! ```

mod config;
mod export;
pub mod fleet;
#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
mod metrics;
mod window;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;
use floodwall_core::{Clock, SystemClock};

use crate::Error;
use crate::events::Events;

pub use config::{CircuitBreakerBuilder, ConfigError, OpenWait, SlidingWindow};
pub use export::{
    EXPORT_VERSION, ExportedState, ImportError, RecordedCall, SecondCounts, WindowContents,
};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{CircuitBreakerLayer, CircuitBreakerService};
pub use permit::Permit;
pub use types::{
    BreakInfo, BreakerEvent, Cause, Classify, DefaultClassifier, IllegalTransition, KeepCause,
    Outcome, Rejected, Snapshot, State, Transition, TripError,
};

mod gate;
mod manual;
mod permit;
mod transition;
mod types;
mod word;

use word::{Window, gen_of, issued_of, kind_of, word};

use config::Config;
use transition::wait_nanos;
use window::{CountWindow, TimeWindow};

/// The breaker's clock: the system clock inline (no pointer to chase on the hot path), or
/// one given to the builder.
enum TimeSource {
    System(SystemClock),
    Given(Arc<dyn Clock>),
}

impl TimeSource {
    #[inline(always)]
    fn now_nanos(&self) -> u64 {
        match self {
            TimeSource::System(c) => c.now_nanos(),
            TimeSource::Given(c) => c.now_nanos(),
        }
    }
}

/// `repr(C)`, on a cache line's start: what every call reads (state word, slow-call bound,
/// clock, window) fills the first two lines, the events' flag and metric handles follow, so a
/// call that waited on the network misses on a few lines rather than one per field.
#[repr(C, align(64))]
struct Inner {
    state: AtomicU64,
    /// `None`: slow-call detection off.
    slow_nanos: Option<u64>,
    clock: TimeSource,
    window: Window,
    events: Events<BreakerEvent>,
    metrics: self::metrics::BreakerMetrics,
    /// Itself, for the automatic half-open task.
    me: Weak<Inner>,
    cfg: Config,
    /// Valid while open: the clock reading at which the breaker turns half-open.
    open_until: AtomicU64,
    /// Valid while half-open: when it became half-open.
    half_open_since: AtomicU64,
    /// Outcomes of the current half-open probes (packed like a window word).
    probes: CountWindow,
    /// Openings since the last close (for backoff); written under `transition`.
    consecutive_opens: AtomicU32,
    not_permitted: AtomicU64,
    /// The error that tripped the current opening, if one was recorded; `has_cause` lets a
    /// rejection skip the lock when none was.
    cause: Mutex<Option<Cause>>,
    has_cause: AtomicBool,
    /// In METRICS_ONLY: the threshold events were published once since it was entered.
    thresholds_reported: AtomicBool,
    transition: Mutex<()>,
    /// Woken on a failure or a transition, once the breaker is in a fleet.
    fleet_nudge: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    /// A [`fleet::FleetBreaker`] syncs this breaker.
    in_fleet: AtomicBool,
    /// A nudge is pending: the sync task has not started the sync it asks for yet.
    nudged: AtomicBool,
}

/// What a transition into OPEN carries: a manual wait, and the error that tripped it.
#[derive(Default)]
struct Opening {
    wait_nanos: Option<u64>,
    cause: Option<Cause>,
    /// `(failure rate, slow-call rate)` in percent of the window that tripped it.
    rates: Option<(f64, f64)>,
}

/// A cheap-to-clone circuit breaker handle. See the [module docs](self).
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

/// What a permit remembers: the state generation it was issued in, when, whether it is a
/// half-open probe, and (when metrics are recorded) when its call started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawPermit {
    generation: u64,
    started: u64,
    probe: bool,
    timer: Option<std::time::Instant>,
}

impl CircuitBreaker {
    /// A builder with resilience4j's defaults: failure rate 50%, slow-call rate 100% at 60 s,
    /// count window of 100, minimum 100 calls, 60 s open, 10 half-open probes.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }

    fn from_config(mut cfg: Config) -> CircuitBreaker {
        let window = match cfg.window {
            SlidingWindow::Count(n) => Window::Count(CountWindow::new(n.get() as usize)),
            SlidingWindow::Time(n) => Window::Time(TimeWindow::new(n.get() as usize)),
        };
        let probes = CountWindow::new(cfg.permitted_in_half_open as usize);
        let initial = cfg.initial_state;
        // Moved out of the config: the breaker reads its clock only through `Inner::clock`.
        let clock = match cfg.clock.take() {
            Some(c) => TimeSource::Given(c),
            None => TimeSource::System(SystemClock::new()),
        };
        CircuitBreaker {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                slow_nanos: cfg.slow_call_duration.map(duration_to_nanos),
                state: AtomicU64::new(word(initial, 0, 0)),
                open_until: AtomicU64::new(if initial == State::Open {
                    let first = BreakInfo {
                        opening: 1,
                        calls: 0,
                        failures: 0,
                        failure_rate: 0.0,
                    };
                    clock.now_nanos().saturating_add(wait_nanos(&cfg, &first))
                } else {
                    0
                }),
                consecutive_opens: AtomicU32::new(u32::from(initial == State::Open)),
                half_open_since: AtomicU64::new(0),
                probes,
                window,
                not_permitted: AtomicU64::new(0),
                cause: Mutex::new(None),
                has_cause: AtomicBool::new(false),
                thresholds_reported: AtomicBool::new(false),
                events: Events::default(),
                transition: Mutex::new(()),
                fleet_nudge: std::sync::OnceLock::new(),
                in_fleet: AtomicBool::new(false),
                nudged: AtomicBool::new(false),
                metrics: {
                    let m = self::metrics::BreakerMetrics::new(&cfg.name);
                    m.state(initial);
                    m
                },
                cfg,
                clock,
            }),
        }
    }

    /// The name given at build time.
    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    /// Asks to make one call. On success, record its outcome through the [`Permit`] (dropping
    /// it unrecorded counts as [`Outcome::Ignored`]).
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        let raw = self.acquire_raw()?;
        Ok(Permit { breaker: self, raw })
    }

    /// Runs `f` if admitted; `Err` is a failure, `Ok` a success.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(&DefaultClassifier, f).await
    }

    /// Runs `f` if admitted and records the outcome `classifier` gives its result (e.g. an
    /// `Ok` HTTP 503 as a failure).
    pub async fn call_classified<C, F, Fut, T, E>(
        &self,
        classifier: &C,
        f: F,
    ) -> Result<T, Error<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(Error::CircuitOpen)?;
        let result = f().await;
        permit.record_with(classifier.classify(&result), || classifier.cause(&result));
        result.map_err(Error::Inner)
    }

    /// The listeners of this breaker's [`BreakerEvent`]s: per call (success, error, ignored,
    /// not permitted), thresholds exceeded, transitions and resets.
    pub fn events(&self) -> &Events<BreakerEvent> {
        &self.inner.events
    }

    /// The current state, applying a transition that is due (open wait or half-open max wait
    /// over).
    pub fn state(&self) -> State {
        let now = self.inner.clock.now_nanos();
        kind_of(self.inner.settle(now))
    }

    /// State, window counts and rates.
    pub fn snapshot(&self) -> Snapshot {
        let inner = &self.inner;
        let now = inner.clock.now_nanos();
        let w = inner.settle(now);
        let state = kind_of(w);
        let (t, judged) = if state == State::HalfOpen {
            let t = inner.probes.totals();
            (t, t.calls >= u64::from(inner.cfg.permitted_in_half_open))
        } else {
            let t = inner.window.totals(now);
            (t, t.calls >= inner.cfg.minimum_calls)
        };
        let rate = |n: u64| (judged && t.calls > 0).then(|| 100.0 * n as f64 / t.calls as f64);
        Snapshot {
            state,
            calls: t.calls,
            failures: t.failures,
            slow_calls: t.slow,
            failure_rate: rate(t.failures),
            slow_call_rate: rate(t.slow),
            not_permitted: inner.not_permitted.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn acquire_raw(&self) -> Result<RawPermit, Rejected> {
        let inner = &*self.inner;
        let mut w = inner.state.load(Ordering::Acquire);
        if matches!(
            kind_of(w),
            State::Closed | State::MetricsOnly | State::Disabled
        ) {
            // The hot path: the clock is read only when slow calls are detected.
            let started = if inner.slow_nanos.is_some() {
                inner.clock.now_nanos()
            } else {
                0
            };
            return Ok(RawPermit {
                generation: gen_of(w),
                started,
                probe: false,
                timer: inner.metrics.start(),
            });
        }
        let now = inner.clock.now_nanos();
        loop {
            match kind_of(w) {
                State::Closed | State::MetricsOnly | State::Disabled => {
                    return Ok(RawPermit {
                        generation: gen_of(w),
                        started: now,
                        probe: false,
                        timer: inner.metrics.start(),
                    });
                }
                State::ForcedOpen => return Err(inner.reject(State::ForcedOpen, None)),
                State::Open => {
                    let until = inner.open_until.load(Ordering::Acquire);
                    if now < until {
                        return Err(
                            inner.reject(State::Open, Some(Duration::from_nanos(until - now)))
                        );
                    }
                    w = inner.transition_from(w, State::HalfOpen, now);
                }
                State::HalfOpen => {
                    if inner.half_open_expired(now) {
                        w = inner.transition_from(w, inner.cfg.after_half_open_wait, now);
                        continue;
                    }
                    if issued_of(w) >= inner.cfg.permitted_in_half_open {
                        return Err(inner.reject(State::HalfOpen, None));
                    }
                    let next = word(State::HalfOpen, gen_of(w), issued_of(w) + 1);
                    match inner.state.compare_exchange_weak(
                        w,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            return Ok(RawPermit {
                                generation: gen_of(w),
                                started: now,
                                probe: true,
                                timer: inner.metrics.start(),
                            });
                        }
                        Err(actual) => w = actual,
                    }
                }
            }
        }
    }

    #[inline(always)]
    pub(crate) fn record_raw(&self, permit: RawPermit, outcome: Outcome) {
        self.record_with(permit, outcome, || None);
    }

    /// Records `outcome`; `cause` is asked for the error only if this failure trips the
    /// breaker.
    #[inline(always)]
    pub(crate) fn record_with(
        &self,
        permit: RawPermit,
        outcome: Outcome,
        cause: impl FnOnce() -> Option<Cause>,
    ) {
        let inner = &*self.inner;
        let w = inner.state.load(Ordering::Acquire);
        if kind_of(w) == State::Disabled {
            return; // disabled: records nothing, not even metrics or events
        }
        // Every admitted call's duration and outcome, whichever way it was admitted (a call, a
        // permit, a layer, a pipeline stage) — if a recorder was there when it was admitted:
        // without one, the permit carries no timer and recording asks the facade nothing.
        if permit.timer.is_some() {
            inner.metrics.finish(permit.timer);
            inner.metrics.outcome(outcome);
        }
        inner.events.emit(|| match outcome {
            Outcome::Success => BreakerEvent::Success,
            Outcome::Failure => BreakerEvent::Error,
            Outcome::Ignored => BreakerEvent::Ignored,
        });
        if gen_of(w) != permit.generation {
            return; // the state it was issued in is gone
        }
        let failure = match outcome {
            Outcome::Success => false,
            Outcome::Failure => {
                inner.nudge();
                true
            }
            Outcome::Ignored => {
                if permit.probe {
                    inner.hand_back_probe(w);
                }
                return;
            }
        };
        // Read the clock only if something needs it: slow-call detection, a time window, or
        // a transition (read then).
        let known_now = (inner.slow_nanos.is_some() || inner.window.is_timed())
            .then(|| inner.clock.now_nanos());
        let now = || known_now.unwrap_or_else(|| inner.clock.now_nanos());
        let slow = match (inner.slow_nanos, known_now) {
            (Some(limit), Some(now)) => now.saturating_sub(permit.started) >= limit,
            _ => false,
        };
        match kind_of(w) {
            State::Closed | State::MetricsOnly => {
                let at = known_now.unwrap_or(0);
                if !inner.window.record(at, failure, slow) {
                    // Same totals as before this call: no new verdict.
                    return;
                }
                let t = inner.window.totals(at);
                if inner.exceeds(t, inner.cfg.minimum_calls) {
                    inner.crossed(w, t, now, cause);
                }
            }
            State::HalfOpen if permit.probe => {
                inner.record_probe(w, failure, slow, now(), cause);
            }
            _ => {}
        }
    }
}

impl Inner {
    /// Wakes the fleet's sync task, if the breaker is in a fleet — once per sync: a failure
    /// that finds a nudge pending only reads a flag.
    #[inline]
    pub(super) fn nudge(&self) {
        if let Some(n) = self.fleet_nudge.get()
            && !self.nudged.load(Ordering::Relaxed)
            && !self.nudged.swap(true, Ordering::AcqRel)
        {
            n.notify_one();
        }
    }

    #[cold]
    fn reject(&self, state: State, retry_after: Option<Duration>) -> Rejected {
        self.not_permitted.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected();
        self.events.emit(|| BreakerEvent::NotPermitted(state));
        let cause = if self.has_cause.load(Ordering::Acquire) {
            self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone()
        } else {
            None
        };
        Rejected {
            state,
            retry_after,
            cause,
        }
    }

    #[cold]
    fn hand_back_probe(&self, mut w: u64) {
        let generation = gen_of(w);
        while kind_of(w) == State::HalfOpen && gen_of(w) == generation && issued_of(w) > 0 {
            let next = word(State::HalfOpen, generation, issued_of(w) - 1);
            match self
                .state
                .compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => w = actual,
            }
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name())
            .field("state", &kind_of(self.inner.state.load(Ordering::Acquire)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{align_of, offset_of, size_of};

    use super::{Inner, Window};

    /// What a closed breaker reads on every call — the state word, the slow-call bound, the
    /// clock, the window — lies in the first two cache lines of `Inner`, which starts one.
    #[test]
    fn the_fields_every_call_reads_lie_in_two_cache_lines() {
        let order = [
            offset_of!(Inner, state),
            offset_of!(Inner, slow_nanos),
            offset_of!(Inner, clock),
            offset_of!(Inner, window),
            offset_of!(Inner, events),
            offset_of!(Inner, metrics),
        ];
        let hot_end = offset_of!(Inner, window) + size_of::<Window>();
        println!("breaker field offsets {order:?}; every call's fields end at byte {hot_end}");
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "declared order kept: {order:?}"
        );
        assert_eq!(align_of::<Inner>(), 64);
        assert!(hot_end <= 128, "{hot_end}");
    }
}
