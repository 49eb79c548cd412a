//! Sliding window log: the exact count over the trailing period (in memory, one key).
//!
//! # Formula
//!
//! Each admitted request is logged with its time and cost. A request of cost `n` at `now` is
//! admitted iff
//!
//! ```text
//! sum(cost of entries with time > now - period) + n <= limit
//! ```
//!
//! - `remaining = limit - that sum` (after the decision);
//! - `reset_after` = time until the newest entry leaves the window;
//! - `retry_after` (when denied) = time until enough of the oldest entries leave the window
//!   for `n` to fit.
//!
//! # Invariant
//!
//! In every interval of length `period`, at most `limit` units are admitted — exactly, with
//! no edge burst. The log holds at most `limit` entries, so memory per key is bounded by the
//! limit.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;
use floodwall_core::{Clock, SystemClock};

use crate::{Decision, InsufficientCapacity, Quota};

/// An in-memory sliding-log limiter for one key. Cheap to clone; clones share the log.
pub struct SlidingLog<C: Clock = SystemClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    quota: Quota,
    period: u64,
    log: Mutex<VecDeque<(u64, u32)>>,
    clock: C,
}

impl<C: Clock> Clone for SlidingLog<C> {
    fn clone(&self) -> Self {
        SlidingLog {
            inner: self.inner.clone(),
        }
    }
}

impl SlidingLog<SystemClock> {
    /// `quota.limit()` per trailing `quota.period()` on the system clock.
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, SystemClock::new())
    }
}

impl<C: Clock> SlidingLog<C> {
    /// The same on `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        SlidingLog {
            inner: Arc::new(Inner {
                quota,
                period: duration_to_nanos(quota.period()).max(1),
                log: Mutex::new(VecDeque::new()),
                clock,
            }),
        }
    }

    /// Decides one request and, if allowed, logs it.
    pub fn check(&self) -> Decision {
        self.decide(1, true)
    }

    /// Decides a request of cost `n` (all or nothing).
    pub fn check_n(&self, n: NonZeroU32) -> Result<Decision, InsufficientCapacity> {
        let cost = InsufficientCapacity::check(n, self.inner.quota.limit().get())?;
        Ok(self.decide(cost, true))
    }

    /// What [`check`](Self::check) would answer now, without logging.
    pub fn peek(&self) -> Decision {
        self.decide(1, false)
    }

    fn decide(&self, cost: u32, consume: bool) -> Decision {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let mut log = inner.log.lock().unwrap_or_else(|e| e.into_inner());
        decide(
            &mut log,
            inner.period,
            inner.quota.limit().get(),
            now,
            cost,
            consume,
        )
    }
}

/// One sliding-log decision on `log` (entries `(time, cost)`, oldest first).
pub(crate) fn decide(
    log: &mut VecDeque<(u64, u32)>,
    period: u64,
    limit: u32,
    now: u64,
    cost: u32,
    consume: bool,
) -> Decision {
    let limit = u64::from(limit);
    // Entries at or before now - period have left the window.
    while log
        .front()
        .is_some_and(|&(t, _)| t.saturating_add(period) <= now)
    {
        log.pop_front();
    }
    let used: u64 = log.iter().map(|&(_, n)| u64::from(n)).sum();
    let allowed = used + u64::from(cost) <= limit;
    if allowed && consume {
        log.push_back((now, cost));
    }
    let used_after = used + if allowed { u64::from(cost) } else { 0 };
    let reset_after = if allowed && !consume {
        period
    } else {
        log.back()
            .map_or(0, |&(t, _)| t.saturating_add(period).saturating_sub(now))
    };
    let retry_after = (!allowed).then(|| {
        // Drop the oldest entries until `cost` fits; the last one dropped sets the wait.
        let mut freed = 0u64;
        let need = used + u64::from(cost) - limit;
        let mut wait = 0;
        for &(t, n) in log.iter() {
            freed += u64::from(n);
            wait = t.saturating_add(period).saturating_sub(now);
            if freed >= need {
                break;
            }
        }
        Duration::from_nanos(wait)
    });
    Decision {
        allowed,
        limit: limit as u32,
        remaining: limit.saturating_sub(used_after) as u32,
        reset_after: Duration::from_nanos(reset_after),
        retry_after,
    }
}

impl<C: Clock> fmt::Debug for SlidingLog<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlidingLog")
            .field("quota", &self.inner.quota)
            .finish()
    }
}
