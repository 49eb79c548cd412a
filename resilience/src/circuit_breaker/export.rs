//! A breaker's state as a value: [`CircuitBreaker::export`] and [`CircuitBreaker::import`],
//! so a new breaker — a restarted process, a new instance of a fleet — continues where
//! another one was, instead of starting CLOSED against a dependency known to be down
//! (opossum's `state` option). With the `serde` feature the value serializes.
//!
//! What travels: the state, the window's outcomes (a count window's in order, a time
//! window's per second, each as seconds ago), how long an open wait still runs, and the
//! number of consecutive openings (the backoff's `k`); while half-open, the probes recorded
//! and how long ago it became half-open (probes still in flight are not: the new breaker may
//! admit as many more as were not recorded). Times are relative, so a snapshot taken on one
//! machine means the same on another whose clock reads differently.
//!
//! **Invariant:** importing a breaker's export into a breaker with the same window settings
//! gives the same state, window totals, remaining open wait (to the nanosecond, on the same
//! clock reading) and backoff count; any other window setting is refused naming the field.

use std::time::Duration;

use super::word::{Window, word};
use super::{CircuitBreaker, SlidingWindow, State};

/// The format of [`ExportedState`]; an import of another version is refused.
pub const EXPORT_VERSION: u32 = 1;

/// One second of a time window: how many whole seconds ago, and its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SecondCounts {
    /// Whole seconds before the export (0: the current second).
    pub ago: u64,
    /// Calls recorded in it.
    pub calls: u64,
    /// Of which failures.
    pub failures: u64,
    /// Of which slow.
    pub slow: u64,
}

/// A recorded call in a count window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RecordedCall {
    /// The call failed.
    pub failure: bool,
    /// The call was slow.
    pub slow: bool,
}

/// The outcomes a window holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum WindowContents {
    /// A count window's calls, oldest first.
    Count(Vec<RecordedCall>),
    /// A time window's seconds that hold calls, oldest first.
    Time(Vec<SecondCounts>),
}

/// A breaker's state as a value, from [`CircuitBreaker::export`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ExportedState {
    /// [`EXPORT_VERSION`] when exported.
    pub version: u32,
    /// The state.
    pub state: State,
    /// The window setting it was exported with (an import checks it).
    pub window: SlidingWindow,
    /// The window's outcomes.
    pub contents: WindowContents,
    /// While OPEN: how much of the open wait is left.
    pub open_remaining: Option<Duration>,
    /// Openings since the breaker was last CLOSED (the backoff's `k`).
    pub consecutive_opens: u32,
    /// While HALF_OPEN: the probes recorded so far, and how long ago it became half-open.
    pub half_open: Option<(Vec<RecordedCall>, Duration)>,
}

/// Why an [`ExportedState`] was not imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot import the breaker state: `{field}` {why}")]
pub struct ImportError {
    /// The setting or field that does not match.
    pub field: &'static str,
    /// How.
    pub why: String,
}

impl CircuitBreaker {
    /// This breaker's state as a value, for [`import`](Self::import) into a new breaker: the
    /// state, the window's outcomes, how long an open wait still runs, the backoff count and,
    /// while half-open, the probes recorded. Times are relative to now, so the value means the
    /// same on a machine whose clock reads differently; with the `serde` feature it
    /// serializes. Importing it into a breaker with the same window setting gives the same
    /// state, window totals, remaining wait and backoff count.
    pub fn export(&self) -> ExportedState {
        let inner = &*self.inner;
        let _guard = inner.transition.lock().unwrap_or_else(|e| e.into_inner());
        let now = inner.clock.now_nanos();
        let state = super::word::kind_of(inner.state.load(std::sync::atomic::Ordering::Acquire));
        let contents = match &inner.window {
            Window::Count(w) => WindowContents::Count(
                w.outcomes()
                    .into_iter()
                    .map(|(failure, slow)| RecordedCall { failure, slow })
                    .collect(),
            ),
            Window::Time(w) => WindowContents::Time(
                w.seconds_at(now)
                    .into_iter()
                    .map(|(ago, [calls, failures, slow])| SecondCounts {
                        ago,
                        calls,
                        failures,
                        slow,
                    })
                    .collect(),
            ),
        };
        let open_remaining = (state == State::Open).then(|| {
            let until = inner.open_until.load(std::sync::atomic::Ordering::Acquire);
            Duration::from_nanos(until.saturating_sub(now))
        });
        let half_open = (state == State::HalfOpen).then(|| {
            let since = inner
                .half_open_since
                .load(std::sync::atomic::Ordering::Acquire);
            let probes = inner
                .probes
                .outcomes()
                .into_iter()
                .map(|(failure, slow)| RecordedCall { failure, slow })
                .collect();
            (probes, Duration::from_nanos(now.saturating_sub(since)))
        });
        ExportedState {
            half_open,
            version: EXPORT_VERSION,
            state,
            window: inner.cfg.window,
            contents,
            open_remaining,
            consecutive_opens: inner
                .consecutive_opens
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Takes over `exported` — state, window, remaining open wait, backoff count — if it was
    /// exported with this breaker's window setting; otherwise refuses, naming the field.
    /// Meant for a breaker just built, before its first call; no transition is published
    /// (the state is continued, not entered), and the permits issued before count for
    /// nothing.
    pub fn import(&self, exported: &ExportedState) -> Result<(), ImportError> {
        let inner = &*self.inner;
        if exported.version != EXPORT_VERSION {
            return Err(ImportError {
                field: "version",
                why: format!("is {}, this build reads {EXPORT_VERSION}", exported.version),
            });
        }
        if exported.window != inner.cfg.window {
            return Err(ImportError {
                field: "window",
                why: format!(
                    "was {:?} where this breaker has {:?}",
                    exported.window, inner.cfg.window
                ),
            });
        }
        let guard = inner.transition.lock().unwrap_or_else(|e| e.into_inner());
        let now = inner.clock.now_nanos();
        match (&inner.window, &exported.contents) {
            (Window::Count(w), WindowContents::Count(calls)) => {
                let calls: Vec<_> = calls.iter().map(|c| (c.failure, c.slow)).collect();
                w.restore(&calls);
            }
            (Window::Time(w), WindowContents::Time(seconds)) => {
                let seconds: Vec<_> = seconds
                    .iter()
                    .map(|s| (s.ago, [s.calls, s.failures, s.slow]))
                    .collect();
                w.restore(now, &seconds);
            }
            _ => {
                return Err(ImportError {
                    field: "contents",
                    why: "do not match the window kind".to_owned(),
                });
            }
        }
        let remaining = exported.open_remaining.unwrap_or_default();
        let until = now.saturating_add(floodwall_core::clock::duration_to_nanos(remaining));
        inner
            .open_until
            .store(until, std::sync::atomic::Ordering::Release);
        let mut issued = 0;
        match (&exported.half_open, exported.state) {
            (Some((probes, ago)), State::HalfOpen) => {
                let probes: Vec<_> = probes.iter().map(|c| (c.failure, c.slow)).collect();
                inner.probes.restore(&probes);
                issued = probes.len().min(inner.cfg.permitted_in_half_open as usize) as u32;
                let since = now.saturating_sub(floodwall_core::clock::duration_to_nanos(*ago));
                inner
                    .half_open_since
                    .store(since, std::sync::atomic::Ordering::Release);
            }
            (None, State::HalfOpen) => {
                inner.probes.reset();
                inner
                    .half_open_since
                    .store(now, std::sync::atomic::Ordering::Release);
            }
            _ => {}
        }
        inner.consecutive_opens.store(
            exported.consecutive_opens,
            std::sync::atomic::Ordering::Relaxed,
        );
        let current = inner.state.load(std::sync::atomic::Ordering::Acquire);
        let next = word(exported.state, super::word::gen_of(current) + 1, issued);
        inner
            .state
            .store(next, std::sync::atomic::Ordering::Release);
        inner.metrics.state(exported.state);
        drop(guard);
        if exported.state == State::Open && inner.cfg.automatic_half_open {
            inner.schedule_half_open(now);
        }
        Ok(())
    }
}
