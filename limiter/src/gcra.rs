//! GCRA — the generic cell rate algorithm, a token bucket kept as one timestamp.
//!
//! # Formula
//!
//! With emission interval `T = period / limit`, burst `b`, and the stored *theoretical
//! arrival time* `TAT` (0 when unknown), a request of cost `n` at time `now`:
//!
//! ```text
//! base    = max(TAT, now)
//! new_TAT = base + n * T
//! allowed = new_TAT - now <= b * T            (allowed exactly at the earliest time)
//! TAT     = new_TAT if allowed, else unchanged
//! remaining   = floor((b * T - (TAT' - now)) / T)     TAT' = new_TAT if allowed else base
//! reset_after = TAT' - now
//! retry_after = new_TAT - b * T - now          (when denied)
//! ```
//!
//! A request costing more than `b` is an error ([`InsufficientCapacity`]), never a denial.
//!
//! This is the one GCRA decision of the crate: the in-memory limiters call
//! `Params::evaluate` through one CAS loop, and the Redis store's `limit.lua` is its line-by-line
//! twin in microseconds (`limiter/tests/redis.rs::redis_decides_like_the_memory_store` checks
//! that they agree).
//!
//! # Invariants
//!
//! - Over any interval of length `d` starting from a full bucket, at most
//!   `b + floor(d / T)` units are admitted: the burst plus the rate.
//! - `TAT <= now + b * T` after every decision, so `remaining` never exceeds `b`.
//! - This is governor's GCRA (burst `b` = governor's `max_burst`; the first of `b` requests
//!   at the same instant and every later one at exactly its earliest time are admitted).
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use floodwall_core::ManualClock;
//! use floodwall_limiter::{Quota, gcra::Gcra};
//!
//! let clock = ManualClock::new();
//! let limiter = Gcra::with_clock(Quota::per_second(NonZeroU32::new(2).unwrap()), clock.clone());
//! assert!(limiter.check().allowed);
//! let second = limiter.check();
//! assert!(second.allowed && second.remaining == 0);
//! let third = limiter.check();
//! assert!(!third.allowed);
//! assert_eq!(third.retry_after, Some(Duration::from_millis(500)));
//! clock.advance(Duration::from_millis(500));
//! assert!(limiter.check().allowed, "allowed exactly at the earliest time");
//! ```

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::{Clock, SystemClock};

use crate::{Decision, InsufficientCapacity, Quota};

/// GCRA's constants for one quota, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Params {
    /// Emission interval `T`.
    pub(crate) t: u64,
    /// Burst `b`.
    pub(crate) burst: u32,
    /// `b * T`.
    pub(crate) capacity: u64,
    /// `1 / T`, to divide by `T` with a multiply (corrected to the exact quotient).
    inv_t: f64,
    /// `T` as a `Duration`: the `reset_after` of a cost-1 request into a drained bucket.
    t_duration: Duration,
}

impl Params {
    pub(crate) fn new(q: &Quota) -> Params {
        let t = q.emission_interval_nanos();
        let burst = q.burst().get();
        Params {
            t,
            burst,
            capacity: t.saturating_mul(u64::from(burst)),
            inv_t: 1.0 / t as f64,
            t_duration: Duration::from_nanos(t),
        }
    }

    /// `floor(x / T)` for `x <= b * T` (a quotient below 2^32, where the floating estimate is
    /// off by at most one), exactly, without a hardware division on the hot path.
    #[inline]
    fn div_t(&self, x: u64) -> u64 {
        let mut q = (x as f64 * self.inv_t) as u64;
        let (t, x128) = (u128::from(self.t), u128::from(x));
        if u128::from(q) * t > x128 {
            q -= 1;
        } else if (u128::from(q) + 1) * t <= x128 {
            q += 1;
        }
        q
    }

    /// Evaluates a request of `cost` at `now` against `tat`: the decision and the TAT to store
    /// (equal to `tat` when denied).
    #[inline]
    pub(crate) fn evaluate(&self, tat: u64, now: u64, cost: u32) -> (Decision, u64) {
        if tat <= now && cost == 1 {
            // A drained bucket and one unit (the most common case): everything is a constant.
            let next = now.saturating_add(self.t);
            return (
                Decision {
                    allowed: true,
                    limit: self.burst,
                    remaining: self.burst - 1,
                    reset_after: self.t_duration,
                    retry_after: None,
                },
                next,
            );
        }
        self.evaluate_slow(tat, now, cost)
    }

    #[inline]
    fn evaluate_slow(&self, tat: u64, now: u64, cost: u32) -> (Decision, u64) {
        let base = tat.max(now);
        let new_tat = base.saturating_add(self.t.saturating_mul(u64::from(cost)));
        let allowed = new_tat - now <= self.capacity;
        let level = if allowed { new_tat } else { base } - now;
        let decision = Decision {
            allowed,
            limit: self.burst,
            // A drained bucket (TAT <= now) leaves exactly `b - cost`: no division.
            remaining: if allowed && tat <= now {
                self.burst - cost
            } else {
                self.div_t(self.capacity.saturating_sub(level)) as u32
            },
            reset_after: Duration::from_nanos(level),
            retry_after: (!allowed).then(|| Duration::from_nanos(new_tat - self.capacity - now)),
        };
        (decision, if allowed { new_tat } else { tat })
    }
}

/// An in-memory GCRA limiter for one key (a "direct" limiter). Cheap to clone; clones share
/// the state.
///
/// The decision is one compare-and-swap on one `AtomicU64`: no lock, no allocation.
pub struct Gcra<C: Clock = SystemClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    tat: AtomicU64,
    params: Params,
    quota: Quota,
    clock: C,
}

impl<C: Clock> Clone for Gcra<C> {
    fn clone(&self) -> Self {
        Gcra {
            inner: self.inner.clone(),
        }
    }
}

impl Gcra<SystemClock> {
    /// A limiter enforcing `quota` on the system clock.
    pub fn new(quota: Quota) -> Self {
        Gcra::with_clock(quota, SystemClock::new())
    }
}

impl<C: Clock> Gcra<C> {
    /// A limiter enforcing `quota` on `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        Gcra {
            inner: Arc::new(Inner {
                tat: AtomicU64::new(0),
                params: Params::new(&quota),
                quota,
                clock,
            }),
        }
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.inner.quota
    }

    /// Decides one request of cost 1 and, if allowed, consumes it.
    #[inline]
    pub fn check(&self) -> Decision {
        self.decide(1)
    }

    /// Decides a request of cost `n` (all or nothing).
    pub fn check_n(&self, n: NonZeroU32) -> Result<Decision, InsufficientCapacity> {
        let cost = InsufficientCapacity::check(n, self.inner.params.burst)?;
        Ok(self.decide(cost))
    }

    /// What [`check`](Self::check) would answer now, without consuming anything.
    pub fn peek(&self) -> Decision {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        inner
            .params
            .evaluate(inner.tat.load(Ordering::Acquire), now, 1)
            .0
    }

    #[inline]
    fn decide(&self, cost: u32) -> Decision {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        decide(&inner.tat, &inner.params, now, cost, true)
    }
}

impl<C: Clock> fmt::Debug for Gcra<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcra")
            .field("quota", &self.inner.quota)
            .finish()
    }
}

/// GCRA on a shared TAT: one compare-and-swap loop, no lock.
#[inline]
pub(crate) fn decide(
    tat: &AtomicU64,
    params: &Params,
    now: u64,
    cost: u32,
    consume: bool,
) -> Decision {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let (decision, next) = params.evaluate(current, now, cost);
        if !decision.allowed || !consume {
            return decision;
        }
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return decision,
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn division_by_t_is_exact() {
        for t in [1u64, 3, 7, 1_000, 33_333_333, 1_000_000_007, u64::MAX / 5] {
            let p = Params {
                t,
                burst: 1,
                capacity: t,
                inv_t: 1.0 / t as f64,
                t_duration: Duration::from_nanos(t),
            };
            // The domain: x <= b * T with b <= u32::MAX.
            let top = t.saturating_mul(u64::from(u32::MAX));
            for x in [
                0u64,
                1,
                t - 1,
                t,
                t + 1,
                2 * t - 1,
                12_345_678_901,
                top / 3,
                top - 1,
                top,
            ] {
                if x <= top && x / t <= u64::from(u32::MAX) {
                    assert_eq!(p.div_t(x), x / t, "{x} / {t}");
                }
            }
        }
    }
}
