//! Bulkhead: at most `max_concurrent` calls at once, a bounded queue of waiters, a bounded
//! wait.
//!
//! # Semantics
//!
//! - A call is admitted while fewer than `max_concurrent` are in flight; its permit is held
//!   until the call (or, with the layer, the response future) ends — also when it is dropped.
//! - Otherwise it waits, if `max_wait` is non-zero and fewer than `max_waiting` callers are
//!   already waiting; a caller beyond the queue is rejected at once
//!   ([`RejectReason::QueueFull`]), and a waiter still without a permit after `max_wait` is
//!   rejected then ([`RejectReason::WaitTimedOut`]).
//! - Waiters are woken in the order they queued on tokio's `Notify`; a caller arriving just
//!   as a permit frees may take it first (no hand-off), which keeps the admit path lock-free.
//!   Every waiter is still bounded by `max_wait`.
//! - With [`codel`](BulkheadBuilder::codel) (Facebook's controlled delay, "Fail at Scale"): a
//!   queue that has not been empty for `interval` is standing, not absorbing a burst, so a
//!   caller that joins it then waits at most `target` instead of `max_wait` — the queue drains
//!   instead of making every caller late. Once it empties, waits are `max_wait` again.
//!
//! # Invariant
//!
//! `in_flight <= max_concurrent` at every instant: a permit is taken by a compare-and-swap
//! that never moves the count past the limit. The admit and release paths take no lock and
//! allocate nothing; a release touches the waiters' queue only when someone waits.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use floodwall_resilience::bulkhead::{Bulkhead, RejectReason};
//!
//! let bulkhead = Bulkhead::builder()
//!     .max_concurrent(NonZeroUsize::new(1).unwrap())
//!     .max_wait(Duration::ZERO)
//!     .build();
//! let held = bulkhead.try_acquire().unwrap();
//! assert_eq!(bulkhead.try_acquire().unwrap_err().reason, RejectReason::Full);
//! drop(held);
//! assert_eq!(bulkhead.call(|| async { Ok::<_, ()>(7) }).await, Ok(7));
//! # }
//! ```

#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
mod metrics;

use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use floodwall_core::clock::duration_to_nanos;

use crate::Error;
use crate::events::Events;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{BulkheadLayer, BulkheadService};

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// All permits are taken and waiting is off (`max_wait` zero).
    Full,
    /// All permits are taken and the wait queue is full.
    QueueFull,
    /// The caller waited `max_wait` without getting a permit.
    WaitTimedOut,
}

impl RejectReason {
    fn describe(self) -> &'static str {
        match self {
            RejectReason::Full => "every slot is taken and calls do not wait",
            RejectReason::QueueFull => "every slot is taken and the wait queue is full",
            RejectReason::WaitTimedOut => "no slot freed within the longest wait",
        }
    }
}

/// A call was not admitted by the bulkhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead full: {} (limit {max_concurrent} at once)", reason.describe())]
pub struct Rejected {
    /// Why.
    pub reason: RejectReason,
    /// The bulkhead's limit.
    pub max_concurrent: usize,
}

/// What a bulkhead did, published to its [`events`](Bulkhead::events) listeners
/// (resilience4j's `BulkheadEvent`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BulkheadEvent {
    /// A call was given a slot.
    Permitted,
    /// A call was refused.
    Rejected(RejectReason),
    /// A call gave its slot back.
    Finished,
}

struct Inner {
    name: Arc<str>,
    max_concurrent: AtomicUsize,
    max_waiting: AtomicUsize,
    /// In nanoseconds, saturated (`u64::MAX` is about 584 years: unbounded).
    max_wait: AtomicU64,
    in_flight: AtomicUsize,
    waiting: AtomicUsize,
    /// `(target, interval)` of controlled delay, if on.
    codel: Option<(Duration, Duration)>,
    /// When the queue was last seen empty, in nanoseconds after `anchor`.
    empty_at: AtomicU64,
    anchor: tokio::time::Instant,
    freed: Notify,
    events: Events<BulkheadEvent>,
    metrics: self::metrics::BulkheadMetrics,
}

/// A cheap-to-clone bulkhead handle. See the [module docs](self).
#[derive(Clone)]
pub struct Bulkhead {
    inner: Arc<Inner>,
}

/// Builds a [`Bulkhead`]. Defaults follow resilience4j's semaphore bulkhead.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BulkheadBuilder {
    name: Arc<str>,
    max_concurrent: usize,
    max_waiting: usize,
    max_wait: Duration,
    codel: Option<(Duration, Duration)>,
}

impl Default for BulkheadBuilder {
    fn default() -> Self {
        BulkheadBuilder {
            name: Arc::from("default"),
            max_concurrent: 25,
            max_waiting: usize::MAX,
            max_wait: Duration::ZERO,
            codel: None,
        }
    }
}

impl BulkheadBuilder {
    /// A name for traces. Default: `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls in flight at most. Default: 25 (resilience4j's `maxConcurrentCalls`).
    pub fn max_concurrent(mut self, n: NonZeroUsize) -> Self {
        self.max_concurrent = n.get();
        self
    }

    /// Callers that may wait at once; more are rejected immediately. Default: unbounded.
    pub fn max_waiting(mut self, n: usize) -> Self {
        self.max_waiting = n;
        self
    }

    /// How long a caller may wait for a permit; zero rejects at once when full. Default: zero
    /// (resilience4j's `maxWaitDuration`).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Controlled delay for the wait queue: once the queue has not been empty for
    /// `interval`, a caller joining it waits at most `target` (Facebook's values: 5 ms and
    /// 100 ms). Default: off (every waiter may wait `max_wait`).
    pub fn codel(mut self, target: Duration, interval: Duration) -> Self {
        self.codel = Some((target, interval));
        self
    }

    /// Builds the bulkhead.
    pub fn build(self) -> Bulkhead {
        Bulkhead {
            inner: Arc::new(Inner {
                metrics: self::metrics::BulkheadMetrics::new(&self.name),
                name: self.name,
                max_concurrent: AtomicUsize::new(self.max_concurrent),
                max_waiting: AtomicUsize::new(self.max_waiting),
                max_wait: AtomicU64::new(duration_to_nanos(self.max_wait)),
                in_flight: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                codel: self.codel,
                empty_at: AtomicU64::new(0),
                anchor: tokio::time::Instant::now(),
                freed: Notify::new(),
                events: Events::default(),
            }),
        }
    }
}

/// A held slot; released on drop.
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct Permit<'a> {
    inner: &'a Inner,
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("bulkhead", &self.inner.name)
            .finish()
    }
}

/// A held slot that owns a handle to its bulkhead (for futures that outlive a borrow).
pub struct OwnedPermit {
    bulkhead: Bulkhead,
}

impl Drop for OwnedPermit {
    #[inline]
    fn drop(&mut self) {
        self.bulkhead.inner.release();
    }
}

impl fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("bulkhead", &self.bulkhead.inner.name)
            .finish()
    }
}

impl Inner {
    #[inline]
    fn try_take(&self) -> bool {
        let mut cur = self.in_flight.load(Ordering::SeqCst);
        let max = self.max_concurrent.load(Ordering::Relaxed);
        while cur < max {
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.metrics.admitted();
                    self.events.emit(|| BulkheadEvent::Permitted);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
        false
    }

    #[inline]
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.metrics.released();
        self.events.emit(|| BulkheadEvent::Finished);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    fn reject(&self, reason: RejectReason) -> Rejected {
        tracing::debug!(bulkhead = &*self.name, ?reason, "bulkhead rejected a call");
        self.metrics.rejected(reason);
        self.events.emit(|| BulkheadEvent::Rejected(reason));
        Rejected {
            reason,
            max_concurrent: self.max_concurrent.load(Ordering::Relaxed),
        }
    }

    /// Waits for a slot; on `Ok` the caller holds one.
    async fn wait(&self) -> Result<(), Rejected> {
        let max_wait = self.max_wait.load(Ordering::Relaxed);
        if max_wait == 0 {
            return Err(self.reject(RejectReason::Full));
        }
        // Join the queue if there is room.
        let mut cur = self.waiting.load(Ordering::SeqCst);
        loop {
            if cur >= self.max_waiting.load(Ordering::Relaxed) {
                return Err(self.reject(RejectReason::QueueFull));
            }
            match self.waiting.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        self.metrics.queued(1.0);
        let _leave = LeaveQueue(self);
        let wait = self.wait_bound(Duration::from_nanos(max_wait), cur == 0);
        let deadline = floodwall_core::clock::deadline_after(wait);
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            // Register before re-checking, so a release in between is not missed.
            notified.as_mut().enable();
            if self.try_take() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // A last look: a slot freed at the deadline still counts.
                return if self.try_take() {
                    Ok(())
                } else {
                    Err(self.reject(RejectReason::WaitTimedOut))
                };
            }
        }
    }
}

impl Inner {
    /// How long a caller that just joined the queue may wait: `max_wait`, or with controlled
    /// delay the short `target` once the queue has stood non-empty for `interval`.
    /// `was_empty`: the queue was empty when the caller joined.
    fn wait_bound(&self, max_wait: Duration, was_empty: bool) -> Duration {
        let Some((target, interval)) = self.codel else {
            return max_wait;
        };
        let now = duration_to_nanos(self.anchor.elapsed());
        if was_empty {
            self.empty_at.store(now, Ordering::Relaxed);
            return max_wait;
        }
        let standing = now.saturating_sub(self.empty_at.load(Ordering::Relaxed));
        if standing > duration_to_nanos(interval) {
            target.min(max_wait)
        } else {
            max_wait
        }
    }
}

struct LeaveQueue<'a>(&'a Inner);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        let before = self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.queued(-1.0);
        if before == 1 && self.0.codel.is_some() {
            let now = duration_to_nanos(self.0.anchor.elapsed());
            self.0.empty_at.store(now, Ordering::Relaxed);
        }
    }
}

impl Bulkhead {
    /// A builder; defaults are listed on each method.
    pub fn builder() -> BulkheadBuilder {
        BulkheadBuilder::default()
    }

    /// The bulkhead's name (its metrics' `bulkhead` label; `"default"` unless named).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Takes a slot if one is free now, without waiting.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        if self.inner.try_take() {
            Ok(Permit { inner: &self.inner })
        } else {
            Err(self.inner.reject(RejectReason::Full))
        }
    }

    /// Takes a slot if one is free now; `None` (nothing recorded) when the caller should
    /// wait with [`acquire`](Self::acquire).
    #[inline]
    pub(crate) fn take_now(&self) -> Option<Permit<'_>> {
        // `then`, not `then_some`: a permit made and dropped would give back a slot never taken.
        self.inner.try_take().then(|| Permit { inner: &self.inner })
    }

    /// Takes a slot, waiting as configured.
    pub async fn acquire(&self) -> Result<Permit<'_>, Rejected> {
        if !self.inner.try_take() {
            self.inner.wait().await?;
        }
        Ok(Permit { inner: &self.inner })
    }

    /// Takes a slot, waiting as configured; the permit owns a handle to the bulkhead.
    pub async fn acquire_owned(&self) -> Result<OwnedPermit, Rejected> {
        if !self.inner.try_take() {
            self.inner.wait().await?;
        }
        Ok(OwnedPermit {
            bulkhead: self.clone(),
        })
    }

    #[cfg(feature = "tower")]
    #[inline]
    pub(crate) fn try_acquire_owned(&self) -> Option<OwnedPermit> {
        self.inner.try_take().then(|| OwnedPermit {
            bulkhead: self.clone(),
        })
    }

    /// Runs `f` inside a slot.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _permit = self.acquire().await.map_err(Error::BulkheadFull)?;
        f().await.map_err(Error::Inner)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// The limit.
    pub fn max_concurrent(&self) -> usize {
        self.inner.max_concurrent.load(Ordering::Relaxed)
    }

    /// The listeners of this bulkhead's [`BulkheadEvent`]s.
    pub fn events(&self) -> &Events<BulkheadEvent> {
        &self.inner.events
    }

    /// Changes the limit at run time (resilience4j's `changeConfig`). Raising it wakes the
    /// waiters, who take the new slots; lowering it admits no one until the calls in flight
    /// have fallen below the new limit (none is cut short).
    pub fn set_max_concurrent(&self, n: NonZeroUsize) {
        let old = self.inner.max_concurrent.swap(n.get(), Ordering::SeqCst);
        if n.get() > old {
            self.inner.freed.notify_waiters();
        }
    }

    /// Changes how long later callers may wait for a slot (zero: reject at once when full).
    /// A caller already waiting keeps the deadline it started with.
    pub fn set_max_wait(&self, d: Duration) {
        self.inner
            .max_wait
            .store(duration_to_nanos(d), Ordering::Relaxed);
    }

    /// Changes how many callers may wait at once; callers already waiting stay.
    pub fn set_max_waiting(&self, n: usize) {
        self.inner.max_waiting.store(n, Ordering::Relaxed);
    }
}

impl fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.inner.name)
            .field("max_concurrent", &self.max_concurrent())
            .field("in_flight", &self.in_flight())
            .field("waiting", &self.waiting())
            .finish()
    }
}
