//! Manual control: forced states and transitions by hand, following the state machine.

use super::word::kind_of;
use super::{CircuitBreaker, IllegalTransition, State};

impl CircuitBreaker {
    /// Manual: reject every call until another manual transition. A manual transition to
    /// the state the breaker is in is a no-op (no event, no restarted wait); none resets the
    /// open-wait backoff except a close ([`reset`](Self::reset)).
    pub fn force_open(&self) {
        self.manual(State::ForcedOpen);
    }

    /// Manual: admit every call and record nothing (no window, no metrics).
    pub fn disable(&self) {
        self.manual(State::Disabled);
    }

    /// Manual: record and report, never reject.
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
        let now = self.inner.cfg.clock.now_nanos();
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

    /// Back to closed with an empty window and the backoff reset.
    pub fn reset(&self) {
        self.manual(State::Closed);
    }

    /// A manual transition from the breaker's current (settled) state; none when it is there
    /// already. A transition that races an automatic one loses to it.
    fn manual(&self, to: State) {
        let inner = &*self.inner;
        let now = inner.cfg.clock.now_nanos();
        let w = inner.settle(now);
        if kind_of(w) != to {
            inner.transition_to(to, Some((w, now)));
        }
    }
}
