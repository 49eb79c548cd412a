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
//!   clock seconds (aligned to the [`Clock`](floodwall_core::Clock)'s seconds).
//! - Open wait: fixed, or backoff `initial * multiplier^(k-1)` capped at `max` for the k-th
//!   opening without a close in between. At `now >= opened_at + wait` the breaker is half-open.
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
//!   (rare) take an internal mutex so their side effects are ordered.
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
#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
mod window;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;

use crate::Error;

pub use config::{CircuitBreakerBuilder, ConfigError, OpenWait, SlidingWindow};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{CircuitBreakerLayer, CircuitBreakerService};
pub use permit::Permit;
pub use types::{
    Classify, DefaultClassifier, IllegalTransition, Outcome, Rejected, Snapshot, State, Transition,
};

mod gate;
mod manual;
mod permit;
mod types;
mod word;

use word::{Window, gen_of, issued_of, kind_of, word};

use config::Config;
use window::{CountWindow, TimeWindow, Totals};

struct Inner {
    /// Itself, for the automatic half-open task.
    me: Weak<Inner>,
    cfg: Config,
    /// `None`: slow-call detection off.
    slow_nanos: Option<u64>,
    state: AtomicU64,
    window: Window,
    /// Valid while open: the clock reading at which the breaker turns half-open.
    open_until: AtomicU64,
    /// Valid while half-open: when it became half-open.
    half_open_since: AtomicU64,
    /// Outcomes of the current half-open probes (packed like a window word).
    probes: CountWindow,
    /// Openings since the last close (for backoff); written under `transition`.
    consecutive_opens: AtomicU32,
    not_permitted: AtomicU64,
    transition: Mutex<()>,
    metrics: crate::metrics::BreakerMetrics,
}

/// A cheap-to-clone circuit breaker handle. See the [module docs](self).
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

/// What a permit remembers: the state generation it was issued in, when, and whether it is a
/// half-open probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawPermit {
    generation: u64,
    started: u64,
    probe: bool,
}

impl CircuitBreaker {
    /// A builder with resilience4j's defaults: failure rate 50%, slow-call rate 100% at 60 s,
    /// count window of 100, minimum 100 calls, 60 s open, 10 half-open probes.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }

    fn from_config(cfg: Config) -> CircuitBreaker {
        let window = match cfg.window {
            SlidingWindow::Count(n) => Window::Count(CountWindow::new(n.get() as usize)),
            SlidingWindow::Time(n) => Window::Time(TimeWindow::new(n.get() as usize)),
        };
        let probes = CountWindow::new(cfg.permitted_in_half_open as usize);
        let initial = cfg.initial_state;
        CircuitBreaker {
            inner: Arc::new_cyclic(|me| Inner {
                me: me.clone(),
                slow_nanos: cfg.slow_call_duration.map(duration_to_nanos),
                state: AtomicU64::new(word(initial, 0, 0)),
                open_until: AtomicU64::new(if initial == State::Open {
                    cfg.clock
                        .now_nanos()
                        .saturating_add(duration_to_nanos(cfg.open_wait.for_opening(1)))
                } else {
                    0
                }),
                consecutive_opens: AtomicU32::new(u32::from(initial == State::Open)),
                half_open_since: AtomicU64::new(0),
                probes,
                window,
                not_permitted: AtomicU64::new(0),
                transition: Mutex::new(()),
                metrics: {
                    let m = crate::metrics::BreakerMetrics::new(&cfg.name);
                    m.state(initial);
                    m
                },
                cfg,
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
        permit.record(classifier.classify(&result));
        result.map_err(Error::Inner)
    }

    /// The current state, applying a transition that is due (open wait or half-open max wait
    /// over).
    pub fn state(&self) -> State {
        let now = self.inner.cfg.clock.now_nanos();
        kind_of(self.inner.settle(now))
    }

    /// State, window counts and rates.
    pub fn snapshot(&self) -> Snapshot {
        let inner = &self.inner;
        let now = inner.cfg.clock.now_nanos();
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
                inner.cfg.clock.now_nanos()
            } else {
                0
            };
            return Ok(RawPermit {
                generation: gen_of(w),
                started,
                probe: false,
            });
        }
        let now = inner.cfg.clock.now_nanos();
        loop {
            match kind_of(w) {
                State::Closed | State::MetricsOnly | State::Disabled => {
                    return Ok(RawPermit {
                        generation: gen_of(w),
                        started: now,
                        probe: false,
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
                        w = inner.transition_from(w, State::Open, now);
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
        let inner = &*self.inner;
        let w = inner.state.load(Ordering::Acquire);
        if kind_of(w) == State::Disabled {
            return; // disabled: records nothing, not even metrics
        }
        inner.metrics.outcome(outcome);
        if gen_of(w) != permit.generation {
            return; // the state it was issued in is gone
        }
        let failure = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
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
            .then(|| inner.cfg.clock.now_nanos());
        let now = || known_now.unwrap_or_else(|| inner.cfg.clock.now_nanos());
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
                if kind_of(w) == State::Closed && inner.exceeds(t, inner.cfg.minimum_calls) {
                    inner.transition_from(w, State::Open, now());
                }
            }
            State::HalfOpen if permit.probe => inner.record_probe(w, failure, slow, now()),
            _ => {}
        }
    }
}

impl Inner {
    #[cold]
    #[inline(never)]
    fn record_probe(&self, w: u64, failure: bool, slow: bool, now: u64) {
        self.probes.record(failure, slow);
        let t = self.probes.totals();
        let all = u64::from(self.cfg.permitted_in_half_open);
        if t.calls >= all {
            let to = if self.exceeds(t, all) {
                State::Open
            } else {
                State::Closed
            };
            self.transition_from(w, to, now);
        }
    }

    #[cold]
    fn reject(&self, state: State, retry_after: Option<Duration>) -> Rejected {
        self.not_permitted.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected();
        Rejected { state, retry_after }
    }

    #[inline]
    fn exceeds(&self, t: Totals, minimum: u64) -> bool {
        if t.calls < minimum || t.calls == 0 {
            return false;
        }
        let calls = t.calls as f64;
        100.0 * t.failures as f64 / calls >= self.cfg.failure_rate_threshold
            || 100.0 * t.slow as f64 / calls >= self.cfg.slow_call_rate_threshold
    }

    /// With `automatic_half_open`, a Tokio task applies the half-open transition when the
    /// open wait ends, even if no call comes.
    fn schedule_half_open(&self, now: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the transition stays lazy
        };
        let wait =
            Duration::from_nanos(self.open_until.load(Ordering::Acquire).saturating_sub(now));
        let me = self.me.clone();
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(inner) = me.upgrade() {
                inner.settle(inner.cfg.clock.now_nanos());
            }
        });
    }

    fn half_open_expired(&self, now: u64) -> bool {
        self.cfg.max_wait_in_half_open.is_some_and(|max| {
            now.saturating_sub(self.half_open_since.load(Ordering::Acquire))
                >= duration_to_nanos(max)
        })
    }

    /// Applies due time-driven transitions and returns the resulting state word.
    fn settle(&self, now: u64) -> u64 {
        let mut w = self.state.load(Ordering::Acquire);
        loop {
            let due = match kind_of(w) {
                State::Open if now >= self.open_until.load(Ordering::Acquire) => State::HalfOpen,
                State::HalfOpen if self.half_open_expired(now) => State::Open,
                _ => return w,
            };
            let next = self.transition_from(w, due, now);
            if next == w {
                return w;
            }
            w = next;
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

    /// Moves from the exact state word `expected` to `to`; if another thread moved first,
    /// does nothing. Returns the state word after the call.
    #[cold]
    #[inline(never)]
    fn transition_from(&self, expected: u64, to: State, now: u64) -> u64 {
        self.transition_to(to, Some((expected, now)))
    }

    #[cold]
    #[inline(never)]
    fn transition_to(&self, to: State, expected: Option<(u64, u64)>) -> u64 {
        let now = expected.map_or_else(|| self.cfg.clock.now_nanos(), |(_, now)| now);
        let guard = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.state.load(Ordering::Acquire);
        if let Some((expected, _)) = expected
            && current != expected
        {
            return current;
        }
        let from = kind_of(current);
        match to {
            State::Open => {
                let k = self
                    .consecutive_opens
                    .load(Ordering::Relaxed)
                    .saturating_add(1);
                self.consecutive_opens.store(k, Ordering::Relaxed);
                let wait = duration_to_nanos(self.cfg.open_wait.for_opening(k));
                self.open_until
                    .store(now.saturating_add(wait), Ordering::Release);
                self.window.reset();
            }
            State::HalfOpen => {
                self.probes.reset();
                self.half_open_since.store(now, Ordering::Release);
            }
            // Only a close ends a run of consecutive openings (the backoff's `k`).
            State::Closed => {
                self.consecutive_opens.store(0, Ordering::Relaxed);
                self.window.reset();
            }
            State::Disabled | State::ForcedOpen | State::MetricsOnly => self.window.reset(),
        }
        let next = word(to, gen_of(current) + 1, 0);
        self.state.store(next, Ordering::Release);
        self.metrics.state(to);
        drop(guard);
        if to == State::Open && self.cfg.automatic_half_open {
            self.schedule_half_open(now);
        }
        let t = Transition {
            from,
            to,
            at_nanos: now,
        };
        tracing::info!(breaker = &*self.cfg.name, from = ?from, to = ?to, "circuit breaker state change");
        if let Some(hook) = &self.cfg.on_transition {
            hook(&t);
        }
        next
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
