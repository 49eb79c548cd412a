//! Window algorithms: fixed window and sliding window counter (in memory, one key).
//!
//! # Fixed window
//!
//! Time is cut into windows `[k * period, (k + 1) * period)` aligned to the clock's zero. A
//! request of cost `n` is admitted while `count + n <= limit` in the current window; the count
//! resets when the window changes.
//!
//! - `remaining = limit - count`, `reset_after = window end - now` (zero when nothing is
//!   counted), `retry_after = window end - now` when denied.
//! - Invariant: at most `limit` units in any one window. Two adjacent windows can together
//!   admit `2 * limit` within a span of `period` (the known edge burst of fixed windows).
//!
//! # Sliding window counter
//!
//! Cloudflare's approximation of a sliding window from two fixed-window counts: with
//! `elapsed` the time into the current window,
//!
//! ```text
//! estimate = previous * (period - elapsed) / period + current
//! admit n  iff  estimate + n <= limit        (then current += n)
//! ```
//!
//! - The estimate assumes the previous window's requests were spread evenly; if they bunched
//!   at its end, the true count over the trailing `period` is higher. Bound: at most
//!   `2 * limit` units in any span of `period`, and at most `limit` in any aligned window.
//! - `retry_after` when denied: the shortest wait after which the same request fits if
//!   nothing else is admitted meanwhile — later in this window once the previous window's
//!   weight has decayed enough, or, when the current count alone leaves no room, in the next
//!   window once this window's count (then the previous) has decayed enough.
//!
//! Both take a short lock per decision (GCRA is the lock-free algorithm).

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;
use floodwall_core::{Clock, SystemClock};

use crate::{Decision, InsufficientCapacity, Quota};

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) window: u64,
    pub(crate) current: u64,
    pub(crate) previous: u64,
}

impl Counts {
    /// Rolls the counts forward to window `w`.
    pub(crate) fn roll(&mut self, w: u64) {
        if w == self.window {
            return;
        }
        self.previous = if w == self.window + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.window = w;
    }
}

/// Which window algorithm a [`WindowLimiter`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed windows.
    Fixed,
    /// Sliding window counter.
    SlidingCounter,
}

/// An in-memory fixed-window or sliding-window-counter limiter for one key. Cheap to clone;
/// clones share the state. See the [module docs](self).
pub struct WindowLimiter<C: Clock = SystemClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    kind: WindowKind,
    quota: Quota,
    period: u64,
    counts: Mutex<Counts>,
    clock: C,
}

impl<C: Clock> Clone for WindowLimiter<C> {
    fn clone(&self) -> Self {
        WindowLimiter {
            inner: self.inner.clone(),
        }
    }
}

impl WindowLimiter<SystemClock> {
    /// `quota.limit()` per `quota.period()` (the burst is not used) on the system clock.
    pub fn new(kind: WindowKind, quota: Quota) -> Self {
        Self::with_clock(kind, quota, SystemClock::new())
    }
}

impl<C: Clock> WindowLimiter<C> {
    /// The same on `clock`.
    pub fn with_clock(kind: WindowKind, quota: Quota, clock: C) -> Self {
        WindowLimiter {
            inner: Arc::new(Inner {
                kind,
                quota,
                period: duration_to_nanos(quota.period()).max(1),
                counts: Mutex::new(Counts::default()),
                clock,
            }),
        }
    }

    /// Decides one request and, if allowed, counts it.
    pub fn check(&self) -> Decision {
        self.decide(1, true)
    }

    /// Decides a request of cost `n` (all or nothing).
    pub fn check_n(&self, n: NonZeroU32) -> Result<Decision, InsufficientCapacity> {
        let cost = InsufficientCapacity::check(n, self.inner.quota.limit().get())?;
        Ok(self.decide(cost, true))
    }

    /// What [`check`](Self::check) would answer now, without counting.
    pub fn peek(&self) -> Decision {
        self.decide(1, false)
    }

    fn decide(&self, cost: u32, consume: bool) -> Decision {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let mut counts = inner.counts.lock().unwrap_or_else(|e| e.into_inner());
        decide(
            &mut counts,
            inner.kind,
            inner.period,
            inner.quota.limit().get(),
            now,
            cost,
            consume,
        )
    }
}

/// One window decision on `counts` (the shared core of the in-memory window limiters).
pub(crate) fn decide(
    counts: &mut Counts,
    kind: WindowKind,
    period: u64,
    limit: u32,
    now: u64,
    cost: u32,
    consume: bool,
) -> Decision {
    let limit = u64::from(limit);
    let cost = u64::from(cost);
    let w = now / period;
    let elapsed = now - w * period;
    let to_end = period - elapsed;
    counts.roll(w);
    match kind {
        WindowKind::Fixed => {
            let allowed = counts.current + cost <= limit;
            if allowed && consume {
                counts.current += cost;
            }
            let used = counts.current + if allowed && !consume { cost } else { 0 };
            Decision {
                allowed,
                limit: limit as u32,
                remaining: limit.saturating_sub(used) as u32,
                reset_after: Duration::from_nanos(if used > 0 { to_end } else { 0 }),
                retry_after: (!allowed).then(|| Duration::from_nanos(to_end)),
            }
        }
        WindowKind::SlidingCounter => {
            // weighted previous = previous * to_end / period, kept exact in u128
            let weighted = |prev: u64, remaining_in_window: u64| -> u128 {
                u128::from(prev) * u128::from(remaining_in_window)
            };
            let p = u128::from(period);
            let est = weighted(counts.previous, to_end) + u128::from(counts.current) * p;
            let need = est + u128::from(cost) * p;
            let allowed = need <= u128::from(limit) * p;
            if allowed && consume {
                counts.current += cost;
            }
            let est_after = weighted(counts.previous, to_end)
                + u128::from(counts.current + if allowed && !consume { cost } else { 0 }) * p;
            let remaining = (u128::from(limit) * p).saturating_sub(est_after) / p;
            // Full capacity returns once this window's count has aged out: the end of the
            // next window.
            let reset = if counts.current > 0 {
                to_end.saturating_add(period)
            } else {
                to_end
            };
            let retry_after = (!allowed).then(|| {
                let room = u128::from(limit) * p;
                let n_p = u128::from(cost) * p;
                let cur = u128::from(counts.current) * p;
                let wait = if cur + n_p > room {
                    // Not in this window: in the next one this window's count becomes the
                    // previous and must decay until `current * to_end' + n * p <= room`.
                    let fits = (room - n_p) / u128::from(counts.current);
                    u128::from(to_end) + (p - fits.min(p))
                } else {
                    // Later in this window: `previous * (to_end - x) + cur + n*p <= room`.
                    let slack = (room - cur - n_p) / u128::from(counts.previous.max(1));
                    u128::from(to_end) - slack.min(u128::from(to_end))
                };
                Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
            });
            Decision {
                allowed,
                limit: limit as u32,
                remaining: remaining as u32,
                reset_after: Duration::from_nanos(reset),
                retry_after,
            }
        }
    }
}

impl<C: Clock> fmt::Debug for WindowLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowLimiter")
            .field("kind", &self.inner.kind)
            .field("quota", &self.inner.quota)
            .finish()
    }
}
