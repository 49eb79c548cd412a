//! Leaky bucket, as a meter and as a queue.
//!
//! # As a meter
//!
//! A bucket of capacity `b` (the quota's burst) leaks at the quota's rate, one unit every
//! `T = period / limit`. A request of cost `n` is admitted iff the water level, after
//! leaking, plus `n` fits in the bucket:
//!
//! ```text
//! level = max(0, level - elapsed / T)
//! admit n iff level + n <= b        (then level += n)
//! ```
//!
//! This is GCRA written as a level (`level * T = TAT - now`), so [`LeakyBucket`] makes
//! exactly [`Gcra`]'s decisions, and shares its lock-free implementation.
//!
//! # As a queue (shaping)
//!
//! [`LeakyQueue`] smooths instead of rejecting: requests leave the bucket one every `T`, and
//! [`until_ready`](LeakyQueue::until_ready) waits for the caller's turn. A request that would
//! find more than `max_queued` requests ahead of it is rejected at once with the time after
//! which it would fit.
//!
//! ```text
//! depart  = max(next_free, now)
//! queued  = (depart - now) / T          requests ahead
//! admit iff queued <= max_queued         (then next_free = depart + n * T; wait until depart)
//! ```
//!
//! Invariant: departures are at least `T` apart (`n * T` after a request of cost `n`), and
//! no caller waits longer than `max_queued * T`.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::{Clock, SystemClock};

use crate::gcra::Gcra;
use crate::{Decision, InsufficientCapacity, Quota};

/// The leaky bucket as a meter: admits or rejects, with GCRA's exact decisions.
pub struct LeakyBucket<C: Clock = SystemClock> {
    gcra: Gcra<C>,
}

impl<C: Clock> Clone for LeakyBucket<C> {
    fn clone(&self) -> Self {
        LeakyBucket {
            gcra: self.gcra.clone(),
        }
    }
}

impl LeakyBucket<SystemClock> {
    /// A bucket of capacity `quota.burst()` leaking at `quota`'s rate.
    pub fn new(quota: Quota) -> Self {
        LeakyBucket {
            gcra: Gcra::new(quota),
        }
    }
}

impl<C: Clock> LeakyBucket<C> {
    /// The same on `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        LeakyBucket {
            gcra: Gcra::with_clock(quota, clock),
        }
    }

    /// Pours one unit in, if it fits.
    pub fn check(&self) -> Decision {
        self.gcra.check()
    }

    /// Pours `n` units in, all or nothing.
    pub fn check_n(&self, n: NonZeroU32) -> Result<Decision, InsufficientCapacity> {
        self.gcra.check_n(n)
    }

    /// What [`check`](Self::check) would answer, without pouring.
    pub fn peek(&self) -> Decision {
        self.gcra.peek()
    }
}

impl<C: Clock> fmt::Debug for LeakyBucket<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakyBucket")
            .field("quota", &self.gcra.quota())
            .finish()
    }
}

/// The queue was full: the request would have waited longer than the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("leaky-bucket queue full; retry after {retry_after:?}")]
pub struct QueueFull {
    /// When the request would fit in the queue.
    pub retry_after: Duration,
}

/// The leaky bucket as a queue: callers wait their turn, one departure every `T`. Cheap to
/// clone; clones share the queue. Waits use Tokio's timer; pair it with a clock that moves
/// with Tokio's (the system clock, or `floodwall_core::TokioClock` in paused tests).
pub struct LeakyQueue<C: Clock = SystemClock> {
    inner: Arc<QueueInner<C>>,
}

struct QueueInner<C> {
    next_free: AtomicU64,
    t: u64,
    max_wait: u64,
    quota: Quota,
    clock: C,
}

impl<C: Clock> Clone for LeakyQueue<C> {
    fn clone(&self) -> Self {
        LeakyQueue {
            inner: self.inner.clone(),
        }
    }
}

impl LeakyQueue<SystemClock> {
    /// A queue releasing `quota`'s rate, holding at most `max_queued` waiting requests.
    pub fn new(quota: Quota, max_queued: u32) -> Self {
        Self::with_clock(quota, max_queued, SystemClock::new())
    }
}

impl<C: Clock> LeakyQueue<C> {
    /// The same on `clock`.
    pub fn with_clock(quota: Quota, max_queued: u32, clock: C) -> Self {
        let t = quota.emission_interval_nanos();
        LeakyQueue {
            inner: Arc::new(QueueInner {
                next_free: AtomicU64::new(0),
                t,
                max_wait: t.saturating_mul(u64::from(max_queued)),
                quota,
                clock,
            }),
        }
    }

    /// Reserves a departure for a request of cost `n`: the wait until it, or [`QueueFull`].
    /// [`until_ready`](Self::until_ready) reserves and waits.
    pub fn reserve(&self, n: NonZeroU32) -> Result<Duration, QueueFull> {
        let inner = &*self.inner;
        let now = inner.clock.now_nanos();
        let mut next = inner.next_free.load(Ordering::Acquire);
        loop {
            let depart = next.max(now);
            let wait = depart - now;
            if wait > inner.max_wait {
                return Err(QueueFull {
                    retry_after: Duration::from_nanos(wait - inner.max_wait),
                });
            }
            let after = depart.saturating_add(inner.t.saturating_mul(u64::from(n.get())));
            match inner.next_free.compare_exchange_weak(
                next,
                after,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Duration::from_nanos(wait)),
                Err(actual) => next = actual,
            }
        }
    }

    /// Waits for this caller's turn (cost 1), or fails at once when the queue is full.
    pub async fn until_ready(&self) -> Result<(), QueueFull> {
        self.until_n_ready(NonZeroU32::MIN).await
    }

    /// Waits for a turn for a request of cost `n`.
    pub async fn until_n_ready(&self, n: NonZeroU32) -> Result<(), QueueFull> {
        let wait = self.reserve(n)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

impl<C: Clock> fmt::Debug for LeakyQueue<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeakyQueue")
            .field("quota", &self.inner.quota)
            .field("max_wait", &Duration::from_nanos(self.inner.max_wait))
            .finish()
    }
}
