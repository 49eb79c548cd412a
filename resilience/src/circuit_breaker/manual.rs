//! Manual control: forced states and transitions by hand, following the state machine.

use std::time::{Duration, Instant};

use floodwall_core::clock::duration_to_nanos;

use super::word::kind_of;
use super::{BreakerEvent, CircuitBreaker, IllegalTransition, Opening, State};

impl CircuitBreaker {
    /// Manual: reject every call until another manual transition. A manual transition to
    /// the state the breaker is in is a no-op (no event, no restarted wait).
    ///
    /// Like resilience4j's attempts, a forced opening counts as the next consecutive opening
    /// for the open-wait backoff: open (wait 1) → forced open → open waits the third wait
    /// (5 s × 1.5² = 11.25 s with a 5 s, ×1.5 backoff). A close ([`reset`](Self::reset) or
    /// the probes passing), [`disable`](Self::disable) and
    /// [`metrics_only`](Self::metrics_only) end the run.
    pub fn force_open(&self) {
        self.manual(State::ForcedOpen);
    }

    /// Manual: admit every call and record nothing (no window, no metrics).
    pub fn disable(&self) {
        self.manual(State::Disabled);
    }

    /// Manual: record and report, never reject. Crossing the failure-rate or slow-call-rate
    /// threshold publishes [`BreakerEvent::FailureRateExceeded`] /
    /// [`BreakerEvent::SlowCallRateExceeded`] once per stay in this state, as resilience4j
    /// does.
    pub fn metrics_only(&self) {
        self.manual(State::MetricsOnly);
    }

    /// Opens now, as if the thresholds had been crossed (counts as the next consecutive
    /// opening for the backoff). Entering OPEN starts an empty window, as resilience4j does
    /// not: the closed window's counts are not carried into OPEN or HALF_OPEN.
    pub fn open(&self) {
        self.manual(State::Open);
    }

    /// Half-opens now, as if the open wait were over. Only an OPEN breaker can half-open, as
    /// in resilience4j; from any other state this is refused with [`IllegalTransition`].
    pub fn half_open(&self) -> Result<(), IllegalTransition> {
        let now = self.inner.clock.now_nanos();
        let from = kind_of(self.inner.settle(now));
        if from != State::Open && from != State::HalfOpen {
            return Err(IllegalTransition {
                from,
                to: State::HalfOpen,
            });
        }
        self.manual(State::HalfOpen);
        Ok(())
    }

    /// Back to closed with an empty window and the backoff reset, from any state — a CLOSED
    /// breaker too, which starts a fresh window in place (resilience4j's `reset`, which always
    /// starts a new CLOSED state); publishes a state transition when the breaker was not
    /// closed, then [`BreakerEvent::Reset`].
    pub fn reset(&self) {
        let inner = &*self.inner;
        loop {
            let now = inner.clock.now_nanos();
            let w = inner.settle(now);
            if kind_of(w) != State::Closed {
                self.manual(State::Closed);
                break;
            }
            if inner.restart_closed(w, now) {
                break;
            }
        }
        inner.events.emit(|| BreakerEvent::Reset);
    }

    /// Opens now for exactly `wait`, then half-opens as after any opening (resilience4j's
    /// `transitionToOpenStateFor`). Counts as the next consecutive opening for the backoff.
    /// On a breaker already open, only the wait changes (no event).
    pub fn open_for(&self, wait: Duration) {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let w = inner.settle(now);
        let until = now.saturating_add(duration_to_nanos(wait));
        if kind_of(w) == State::Open {
            inner
                .open_until
                .store(until, std::sync::atomic::Ordering::Release);
            return;
        }
        let opening = Opening {
            wait_nanos: Some(duration_to_nanos(wait)),
            cause: None,
            rates: None,
        };
        inner.transition_to(State::Open, Some((w, now)), opening);
    }

    /// Opens now until `at` (resilience4j's `transitionToOpenStateUntil`), then half-opens.
    /// `at` is read against the real time now and mapped onto the breaker's clock; an
    /// instant already past half-opens at the next call.
    pub fn open_until(&self, at: Instant) {
        self.open_for(at.saturating_duration_since(Instant::now()));
    }

    /// A manual transition from the breaker's current (settled) state; none when it is there
    /// already. A transition that races an automatic one loses to it.
    fn manual(&self, to: State) {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let w = inner.settle(now);
        if kind_of(w) != to {
            inner.transition_to(to, Some((w, now)), Opening::default());
        }
    }
}
