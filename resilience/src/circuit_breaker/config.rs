//! Circuit breaker configuration.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::Clock;

use super::window::FIELD_MAX;
use super::{BreakInfo, State, Transition};

/// Which calls the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum SlidingWindow {
    /// The last `n` recorded calls (at most 2,097,151).
    Count(NonZeroU32),
    /// The calls of the last `n` whole clock seconds, the current one included (at most
    /// 2,097,151 calls per second are counted).
    Time(NonZeroU32),
}

/// How long the breaker stays open before letting probes through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpenWait {
    /// The same wait every time.
    Fixed(Duration),
    /// `initial * multiplier^(k-1)` for the k-th consecutive opening (without a close in
    /// between), capped at `max`.
    Backoff {
        /// Wait after the first opening.
        initial: Duration,
        /// Growth per consecutive opening (at least 1.0).
        multiplier: f64,
        /// Upper bound.
        max: Duration,
    },
}

impl OpenWait {
    /// The wait for the `k`-th consecutive opening (`k >= 1`).
    pub fn for_opening(&self, k: u32) -> Duration {
        match *self {
            OpenWait::Fixed(d) => d,
            OpenWait::Backoff {
                initial,
                multiplier,
                max,
            } => {
                let exp = k.saturating_sub(1).min(1024) as i32;
                let secs = initial.as_secs_f64() * multiplier.powi(exp);
                if !secs.is_finite() || secs >= max.as_secs_f64() {
                    max
                } else {
                    Duration::from_secs_f64(secs)
                }
            }
        }
    }
}

/// A configuration value was out of range; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid circuit breaker setting `{field}`: {reason}")]
pub struct ConfigError {
    /// The builder method whose value is wrong.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

pub(crate) type TransitionHook = Arc<dyn Fn(&Transition) + Send + Sync>;
pub(crate) type BreakDurationFn = Arc<dyn Fn(&BreakInfo) -> Duration + Send + Sync>;

/// Validated settings of a [`CircuitBreaker`](super::CircuitBreaker).
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) name: Arc<str>,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u64,
    pub(crate) open_wait: OpenWait,
    pub(crate) permitted_in_half_open: u32,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    pub(crate) after_half_open_wait: State,
    pub(crate) break_duration: Option<BreakDurationFn>,
    pub(crate) automatic_half_open: bool,
    pub(crate) initial_state: State,
    /// `None`: the system clock.
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) on_transition: Option<TransitionHook>,
}

/// Builds a [`CircuitBreaker`](super::CircuitBreaker). Defaults follow resilience4j.
#[must_use = "a builder does nothing until `build` is called"]
pub struct CircuitBreakerBuilder {
    cfg: Config,
    failure_rate_threshold: f32,
    slow_call_rate_threshold: f32,
    minimum_calls: u32,
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        CircuitBreakerBuilder {
            cfg: Config {
                name: Arc::from("default"),
                failure_rate_threshold: 50.0,
                slow_call_rate_threshold: 100.0,
                slow_call_duration: Some(Duration::from_secs(60)),
                window: SlidingWindow::Count(NonZeroU32::new(100).expect("non-zero")),
                minimum_calls: 100,
                open_wait: OpenWait::Fixed(Duration::from_secs(60)),
                permitted_in_half_open: 10,
                max_wait_in_half_open: None,
                after_half_open_wait: State::Open,
                break_duration: None,
                automatic_half_open: false,
                initial_state: State::Closed,
                clock: None,
                on_transition: None,
            },
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            minimum_calls: 100,
        }
    }
}

impl CircuitBreakerBuilder {
    /// A name for events and traces. Default: `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.cfg.name = name.into();
        self
    }

    /// Open when at least this percent of the window's calls failed (`0 < p <= 100`).
    /// Default: 50.
    pub fn failure_rate_threshold(mut self, percent: f32) -> Self {
        self.failure_rate_threshold = percent;
        self
    }

    /// Open when at least this percent of the window's calls were slow (`0 < p <= 100`).
    /// Default: 100.
    pub fn slow_call_rate_threshold(mut self, percent: f32) -> Self {
        self.slow_call_rate_threshold = percent;
        self
    }

    /// A call taking at least this long is slow; `None` turns slow-call detection off (and
    /// with it the clock reads of a count window's closed path). Default: 60 s.
    pub fn slow_call_duration(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.cfg.slow_call_duration = d.into();
        self
    }

    /// The window rates are computed over. Default: the last 100 calls.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.cfg.window = window;
        self
    }

    /// Rates are "unknown" (never trip) until the window holds this many calls. With a count
    /// window larger than its size, the size is used. Default: 100.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// How long to stay open. Default: fixed 60 s.
    pub fn open_wait(mut self, wait: OpenWait) -> Self {
        self.cfg.open_wait = wait;
        self
    }

    /// Probes let through in half-open; their outcomes decide close or re-open. Default: 10.
    pub fn permitted_calls_in_half_open(mut self, n: NonZeroU32) -> Self {
        self.cfg.permitted_in_half_open = n.get();
        self
    }

    /// Go back to open if the probes have not all finished after this long in half-open.
    /// Default: `None` (wait for them).
    pub fn max_wait_in_half_open(mut self, d: Option<Duration>) -> Self {
        self.cfg.max_wait_in_half_open = d;
        self
    }

    /// The state to move to when `max_wait_in_half_open` passes with probes unfinished:
    /// [`State::Open`] (the default) or [`State::Closed`] (resilience4j's
    /// `transitionToStateAfterWaitDuration`). Anything else is refused by `build`.
    pub fn state_after_half_open_wait(mut self, state: State) -> Self {
        self.cfg.after_half_open_wait = state;
        self
    }

    /// Sizes each open wait with `generator` instead of [`open_wait`](Self::open_wait)
    /// (Polly's `BreakDurationGenerator`): it is told the opening's number and the rates
    /// that tripped it. A zero answer half-opens at the next call.
    pub fn break_duration_generator(
        mut self,
        generator: impl Fn(&BreakInfo) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.cfg.break_duration = Some(Arc::new(generator));
        self
    }

    /// Move to half-open as soon as the open wait ends, from a task on the Tokio runtime that
    /// is current when the breaker opens (none: the transition stays lazy). The task sleeps
    /// on Tokio's timer; the transition re-checks the breaker's clock, so pair it with the
    /// system clock or [`TokioClock`](crate::TokioClock). Default: `false` (lazy, like
    /// resilience4j).
    pub fn automatic_half_open(mut self, on: bool) -> Self {
        self.cfg.automatic_half_open = on;
        self
    }

    /// Start in this state (e.g. [`State::MetricsOnly`] for a dry run). Default: closed.
    pub fn initial_state(mut self, state: State) -> Self {
        self.cfg.initial_state = state;
        self
    }

    /// The time source. Default: [`SystemClock`](floodwall_core::SystemClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.cfg.clock = Some(Arc::new(clock));
        self
    }

    /// Called after every state transition (outside the breaker's internal lock).
    pub fn on_transition(mut self, hook: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.cfg.on_transition = Some(Arc::new(hook));
        self
    }

    /// Validates and builds.
    pub fn build(mut self) -> Result<super::CircuitBreaker, ConfigError> {
        fn percent(field: &'static str, p: f32) -> Result<f64, ConfigError> {
            if p.is_finite() && p > 0.0 && p <= 100.0 {
                Ok(f64::from(p))
            } else {
                Err(ConfigError {
                    field,
                    reason: "must be a percentage in (0, 100]",
                })
            }
        }
        self.cfg.failure_rate_threshold =
            percent("failure_rate_threshold", self.failure_rate_threshold)?;
        self.cfg.slow_call_rate_threshold =
            percent("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if self.minimum_calls == 0 {
            return Err(ConfigError {
                field: "minimum_calls",
                reason: "must be at least 1",
            });
        }
        let size = match self.cfg.window {
            SlidingWindow::Count(n) | SlidingWindow::Time(n) => u64::from(n.get()),
        };
        if size > FIELD_MAX {
            return Err(ConfigError {
                field: "sliding_window",
                reason: "must be at most 2,097,151",
            });
        }
        self.cfg.minimum_calls = match self.cfg.window {
            SlidingWindow::Count(n) => u64::from(self.minimum_calls.min(n.get())),
            SlidingWindow::Time(_) => u64::from(self.minimum_calls),
        };
        self.validate_waits()?;
        if self.cfg.max_wait_in_half_open == Some(Duration::ZERO) {
            return Err(ConfigError {
                field: "max_wait_in_half_open",
                reason: "must be non-zero (use None to wait for the probes)",
            });
        }
        if !matches!(self.cfg.after_half_open_wait, State::Open | State::Closed) {
            return Err(ConfigError {
                field: "state_after_half_open_wait",
                reason: "must be Open or Closed",
            });
        }
        if self.cfg.initial_state == State::HalfOpen {
            return Err(ConfigError {
                field: "initial_state",
                reason: "a breaker cannot start half-open",
            });
        }
        Ok(super::CircuitBreaker::from_config(self.cfg))
    }
}

impl CircuitBreakerBuilder {
    /// The slow-call threshold and the open wait: zero makes no sense for either.
    fn validate_waits(&self) -> Result<(), ConfigError> {
        if self.cfg.slow_call_duration == Some(Duration::ZERO) {
            return Err(ConfigError {
                field: "slow_call_duration",
                reason: "must be more than zero (every call would be slow); None turns it off",
            });
        }
        if matches!(self.cfg.open_wait, OpenWait::Fixed(d) | OpenWait::Backoff { initial: d, .. } if d.is_zero())
        {
            return Err(ConfigError {
                field: "open_wait",
                reason: "must be more than zero",
            });
        }
        if let OpenWait::Backoff {
            initial,
            multiplier,
            max,
        } = self.cfg.open_wait
        {
            if !(multiplier.is_finite() && multiplier >= 1.0) {
                return Err(ConfigError {
                    field: "open_wait",
                    reason: "backoff multiplier must be finite and >= 1",
                });
            }
            if max < initial {
                return Err(ConfigError {
                    field: "open_wait",
                    reason: "backoff max must be >= initial",
                });
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("name", &self.cfg.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let w = OpenWait::Backoff {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(10),
        };
        assert_eq!(w.for_opening(1), Duration::from_secs(1));
        assert_eq!(w.for_opening(2), Duration::from_secs(2));
        assert_eq!(w.for_opening(4), Duration::from_secs(8));
        assert_eq!(w.for_opening(5), Duration::from_secs(10));
        assert_eq!(w.for_opening(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn bad_settings_name_their_field() {
        use super::super::CircuitBreaker;
        let e = CircuitBreaker::builder()
            .failure_rate_threshold(0.0)
            .build()
            .unwrap_err();
        assert_eq!(e.field, "failure_rate_threshold");
        let e = CircuitBreaker::builder()
            .slow_call_rate_threshold(f32::NAN)
            .build()
            .unwrap_err();
        assert_eq!(e.field, "slow_call_rate_threshold");
        let e = CircuitBreaker::builder()
            .minimum_calls(0)
            .build()
            .unwrap_err();
        assert_eq!(e.field, "minimum_calls");
        let e = CircuitBreaker::builder()
            .open_wait(OpenWait::Backoff {
                initial: Duration::from_secs(2),
                multiplier: 0.5,
                max: Duration::from_secs(9),
            })
            .build()
            .unwrap_err();
        assert_eq!(e.field, "open_wait");
        let e = CircuitBreaker::builder()
            .initial_state(State::HalfOpen)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("initial_state"));
    }
}
