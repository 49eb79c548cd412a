//! Transitions: when one is due (a window or the half-open probes over a threshold, a wait
//! over), the side effects of entering each state, the tripping error, the open wait, and
//! the automatic half-open task.

use std::sync::atomic::Ordering;
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;

use super::config::Config;
use super::window::Totals;
use super::word::{gen_of, kind_of, word};
use super::{BreakInfo, BreakerEvent, Cause, Inner, Opening, State, Transition};

impl Inner {
    /// The window `t` crossed a threshold: publishes which, and opens with `cause`.
    #[cold]
    #[inline(never)]
    pub(super) fn trip(&self, w: u64, t: Totals, now: u64, cause: Option<Cause>) {
        self.report_thresholds(t);
        let rate = |n: u64| 100.0 * n as f64 / t.calls.max(1) as f64;
        let opening = Opening {
            wait_nanos: None,
            cause,
            rates: Some((rate(t.failures), rate(t.slow))),
        };
        self.transition_to(State::Open, Some((w, now)), opening);
    }

    /// The window `t` of state word `w` (CLOSED or METRICS_ONLY) crossed a threshold: trips a
    /// CLOSED breaker, reports once in METRICS_ONLY.
    pub(super) fn crossed(
        &self,
        w: u64,
        t: Totals,
        now: impl FnOnce() -> u64,
        cause: impl FnOnce() -> Option<Cause>,
    ) {
        match kind_of(w) {
            State::Closed => self.trip(w, t, now(), cause()),
            _ => self.report_thresholds_once(t),
        }
    }

    /// In METRICS_ONLY the window `t` crossed a threshold: publishes which, once per stay in
    /// that state (resilience4j's `MetricsOnlyState` does the same); the breaker stays
    /// as it is.
    #[cold]
    #[inline(never)]
    pub(super) fn report_thresholds_once(&self, t: Totals) {
        if !self.thresholds_reported.swap(true, Ordering::AcqRel) {
            self.report_thresholds(t);
        }
    }

    /// Publishes which thresholds the window `t` crossed.
    fn report_thresholds(&self, t: Totals) {
        if self.events.has_listeners() && t.calls > 0 {
            let rate = |n: u64| 100.0 * n as f64 / t.calls as f64;
            if rate(t.failures) >= self.cfg.failure_rate_threshold {
                self.events
                    .emit(|| BreakerEvent::FailureRateExceeded(rate(t.failures)));
            }
            if rate(t.slow) >= self.cfg.slow_call_rate_threshold {
                self.events
                    .emit(|| BreakerEvent::SlowCallRateExceeded(rate(t.slow)));
            }
        }
    }

    /// With `automatic_half_open`, a Tokio task applies the half-open transition when the
    /// open wait ends, even if no call comes.
    pub(super) fn schedule_half_open(&self, now: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the transition stays lazy
        };
        let wait =
            Duration::from_nanos(self.open_until.load(Ordering::Acquire).saturating_sub(now));
        let me = self.me.clone();
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(inner) = me.upgrade() {
                inner.settle(inner.clock.now_nanos());
            }
        });
    }

    /// Moves from the exact state word `expected` to `to`; if another thread moved first,
    /// does nothing. Returns the state word after the call.
    #[cold]
    #[inline(never)]
    pub(super) fn transition_from(&self, expected: u64, to: State, now: u64) -> u64 {
        self.transition_to(to, Some((expected, now)), Opening::default())
    }

    #[cold]
    #[inline(never)]
    pub(super) fn transition_to(
        &self,
        to: State,
        expected: Option<(u64, u64)>,
        opening: Opening,
    ) -> u64 {
        let now = expected.map_or_else(|| self.clock.now_nanos(), |(_, now)| now);
        let guard = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.state.load(Ordering::Acquire);
        if let Some((expected, _)) = expected
            && current != expected
        {
            return current;
        }
        let from = kind_of(current);
        let rates = opening.rates;
        self.enter(from, to, now, opening);
        let next = word(to, gen_of(current) + 1, 0);
        self.state.store(next, Ordering::Release);
        self.metrics.state(to);
        drop(guard);
        self.nudge();
        if to == State::Open && self.cfg.automatic_half_open {
            self.schedule_half_open(now);
        }
        let t = Transition {
            from,
            to,
            at_nanos: now,
            failure_rate: rates.map(|r| r.0),
            slow_call_rate: rates.map(|r| r.1),
        };
        match rates {
            Some((failure_rate, slow_call_rate)) => tracing::info!(
                breaker = &*self.cfg.name,
                from = ?from,
                to = ?to,
                failure_rate,
                slow_call_rate,
                "circuit breaker state change"
            ),
            None => tracing::info!(
                breaker = &*self.cfg.name,
                from = ?from,
                to = ?to,
                "circuit breaker state change"
            ),
        }
        if let Some(hook) = &self.cfg.on_transition {
            hook(&t);
        }
        self.events.emit(|| BreakerEvent::StateTransition(t));
        next
    }

    /// The side effects of entering `to` (under the transition lock).
    fn enter(&self, from: State, to: State, now: u64, opening: Opening) {
        match to {
            State::Open => {
                let k = self
                    .consecutive_opens
                    .load(Ordering::Relaxed)
                    .saturating_add(1);
                self.consecutive_opens.store(k, Ordering::Relaxed);
                let wait = opening.wait_nanos.unwrap_or_else(|| {
                    let t = if from == State::HalfOpen {
                        self.probes.totals()
                    } else {
                        self.window.totals(now)
                    };
                    let info = BreakInfo {
                        opening: k,
                        calls: t.calls,
                        failures: t.failures,
                        failure_rate: if t.calls == 0 {
                            0.0
                        } else {
                            100.0 * t.failures as f64 / t.calls as f64
                        },
                    };
                    wait_nanos(&self.cfg, &info)
                });
                self.open_until
                    .store(now.saturating_add(wait), Ordering::Release);
                self.window.reset();
                self.set_cause(opening.cause);
            }
            State::HalfOpen => {
                self.probes.reset();
                self.half_open_since.store(now, Ordering::Release);
            }
            // A forced opening counts as the next consecutive opening (the backoff's `k`), as
            // resilience4j's attempts do: open → forced open → open waits the third wait.
            State::ForcedOpen => {
                let k = self.consecutive_opens.load(Ordering::Relaxed);
                self.consecutive_opens
                    .store(k.saturating_add(1), Ordering::Relaxed);
                self.window.reset();
                self.set_cause(None);
            }
            // Closed, disabled and metrics-only end a run of consecutive openings.
            State::Closed | State::Disabled | State::MetricsOnly => {
                self.consecutive_opens.store(0, Ordering::Relaxed);
                self.thresholds_reported.store(false, Ordering::Relaxed);
                self.window.reset();
                self.set_cause(None);
            }
        }
    }

    /// A CLOSED breaker starts afresh in place: an empty window, the backoff reset, no
    /// cause; permits issued before count for nothing. No state transition is published.
    pub(super) fn restart_closed(&self, w: u64, now: u64) -> bool {
        let guard = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        if self.state.load(Ordering::Acquire) != w {
            return false;
        }
        self.enter(State::Closed, State::Closed, now, Opening::default());
        self.state
            .store(word(State::Closed, gen_of(w) + 1, 0), Ordering::Release);
        drop(guard);
        true
    }

    fn set_cause(&self, cause: Option<Cause>) {
        if cause.is_none() && !self.has_cause.load(Ordering::Acquire) {
            return;
        }
        let mut slot = self.cause.lock().unwrap_or_else(|e| e.into_inner());
        self.has_cause.store(cause.is_some(), Ordering::Release);
        *slot = cause;
    }
}

/// The open wait for an opening: the generator's answer, or the configured wait.
pub(super) fn wait_nanos(cfg: &Config, info: &BreakInfo) -> u64 {
    duration_to_nanos(match &cfg.break_duration {
        Some(generator) => generator(info),
        None => cfg.open_wait.for_opening(info.opening),
    })
}

impl Inner {
    #[cold]
    #[inline(never)]
    pub(super) fn record_probe(
        &self,
        w: u64,
        failure: bool,
        slow: bool,
        now: u64,
        cause: impl FnOnce() -> Option<Cause>,
    ) {
        self.probes.record(failure, slow);
        let t = self.probes.totals();
        let all = u64::from(self.cfg.permitted_in_half_open);
        if t.calls >= all {
            if self.exceeds(t, all) {
                self.trip(w, t, now, cause());
            } else {
                self.transition_from(w, State::Closed, now);
            }
        }
    }

    #[inline]
    pub(super) fn exceeds(&self, t: Totals, minimum: u64) -> bool {
        if t.calls < minimum || t.calls == 0 {
            return false;
        }
        let calls = t.calls as f64;
        100.0 * t.failures as f64 / calls >= self.cfg.failure_rate_threshold
            || 100.0 * t.slow as f64 / calls >= self.cfg.slow_call_rate_threshold
    }

    pub(super) fn half_open_expired(&self, now: u64) -> bool {
        self.cfg.max_wait_in_half_open.is_some_and(|max| {
            now.saturating_sub(self.half_open_since.load(Ordering::Acquire))
                >= duration_to_nanos(max)
        })
    }

    /// Applies due time-driven transitions and returns the resulting state word.
    pub(super) fn settle(&self, now: u64) -> u64 {
        let mut w = self.state.load(Ordering::Acquire);
        loop {
            let due = match kind_of(w) {
                State::Open if now >= self.open_until.load(Ordering::Acquire) => State::HalfOpen,
                State::HalfOpen if self.half_open_expired(now) => self.cfg.after_half_open_wait,
                _ => return w,
            };
            let next = self.transition_from(w, due, now);
            if next == w {
                return w;
            }
            w = next;
        }
    }
}
