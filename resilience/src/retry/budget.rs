//! A retry budget shared across calls (Finagle's `RetryBudget`).

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;
use floodwall_core::{Clock, SystemClock};

const SLOTS: u64 = 10;
/// Fixed-point scale: one retry costs `UNIT` tokens.
const UNIT: i64 = 1000;

/// Limits retries to a share of recent requests, plus a floor, so a dead downstream gets a
/// trickle of retries instead of a storm.
///
/// Every request [`deposit`](Self::deposit)s `ratio` of a token; every retry must
/// [`try_withdraw`](Self::try_withdraw) one whole token. Deposits and withdrawals expire after
/// `ttl` (tracked in 10 slots of `ttl / 10`). A reserve of `min_per_sec * ttl` tokens never
/// expires. So over any `ttl`:
///
/// ```text
/// retries <= ratio * requests + min_per_sec * ttl_secs
/// ```
///
/// Withdrawals are serialised by a small lock, so two retries never spend the same token;
/// deposits (one per request) are lock-free. A token deposited or withdrawn at the instant its
/// slot is recycled may be lost to that slot (at most one per slot change). Clones share the
/// budget.
///
/// ```
/// use std::time::Duration;
/// use floodwall_core::ManualClock;
/// use floodwall_resilience::retry::RetryBudget;
///
/// // 20% of requests may be retried, plus 1 retry per second of the 10 s window.
/// let budget = RetryBudget::builder()
///     .ttl(Duration::from_secs(10))
///     .min_per_sec(1)
///     .ratio(0.2)
///     .clock(ManualClock::new())
///     .build()
///     .unwrap();
/// for _ in 0..100 {
///     budget.deposit();
/// }
/// let granted = (0..1000).filter(|_| budget.try_withdraw()).count();
/// assert_eq!(granted, 20 + 10);
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    slot_nanos: u64,
    slots: Box<[Slot]>,
    deposit: i64,
    reserve: i64,
    withdraw: Mutex<()>,
    ttl: Duration,
    min_per_sec: u32,
    ratio: f32,
}

#[derive(Default)]
struct Slot {
    /// Slot number + 1; 0 = unused.
    tag: AtomicU64,
    tokens: AtomicI64,
}

/// Builds a [`RetryBudget`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryBudgetBuilder {
    ttl: Duration,
    min_per_sec: u32,
    ratio: f32,
    clock: Arc<dyn Clock>,
}

/// A [`RetryBudgetBuilder`] setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid RetryBudget `{field}`: {reason}")]
pub struct BudgetConfigError {
    /// The setter whose value was rejected.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl RetryBudgetBuilder {
    /// How long a deposit (a call) or a withdrawal (a retry) counts. Default 10 s (Finagle's
    /// and tower's); under 10 ns is rejected by `build`.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Retries per second of `ttl` allowed whatever the traffic (the floor). Default 10.
    pub fn min_per_sec(mut self, n: u32) -> Self {
        self.min_per_sec = n;
        self
    }

    /// Share of calls that may be retried (0.2 = 20 %). Default 0.2; outside `0.0..=1000.0`
    /// or NaN is rejected by `build`.
    pub fn ratio(mut self, ratio: f32) -> Self {
        self.ratio = ratio;
        self
    }

    /// The time source. Default: [`SystemClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the budget, or names the setting that cannot work.
    pub fn build(self) -> Result<RetryBudget, BudgetConfigError> {
        if self.ttl < Duration::from_nanos(SLOTS) {
            return Err(BudgetConfigError {
                field: "ttl",
                reason: "must be at least 10 ns",
            });
        }
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(BudgetConfigError {
                field: "ratio",
                reason: "must be between 0.0 and 1000.0",
            });
        }
        let ttl = self.ttl;
        let ratio = self.ratio;
        let reserve = (f64::from(self.min_per_sec) * ttl.as_secs_f64() * UNIT as f64) as i64;
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                clock: self.clock,
                slot_nanos: duration_to_nanos(ttl) / SLOTS,
                slots: (0..SLOTS).map(|_| Slot::default()).collect(),
                deposit: (f64::from(ratio) * UNIT as f64).round() as i64,
                reserve,
                withdraw: Mutex::new(()),
                ttl,
                min_per_sec: self.min_per_sec,
                ratio,
            }),
        })
    }
}

impl RetryBudget {
    /// A builder with Finagle's and tower's defaults: `ttl` 10 s, 10 retries per second,
    /// ratio 0.2 — `ratio` of the calls of the last `ttl` may be retried, plus `min_per_sec`
    /// retries per second of `ttl` whatever the traffic.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.2,
            clock: Arc::new(SystemClock::new()),
        }
    }

    /// The floor: retries allowed per `ttl` with no traffic at all (`min_per_sec * ttl`).
    pub fn floor(&self) -> u64 {
        (self.inner.reserve / UNIT) as u64
    }

    /// Records one request (not a retry).
    #[inline]
    pub fn deposit(&self) {
        if self.inner.deposit != 0 {
            let now = self.inner.clock.now_nanos();
            self.inner
                .current(now)
                .tokens
                .fetch_add(self.inner.deposit, Ordering::AcqRel);
        }
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let inner = &*self.inner;
        let _serial = inner.withdraw.lock().unwrap_or_else(|e| e.into_inner());
        let now = inner.clock.now_nanos();
        if inner.balance(now) < UNIT {
            return false;
        }
        inner.current(now).tokens.fetch_sub(UNIT, Ordering::AcqRel);
        true
    }

    /// Whole retries available now.
    pub fn available(&self) -> u64 {
        let b = self.inner.balance(self.inner.clock.now_nanos());
        (b.max(0) / UNIT) as u64
    }
}

impl Inner {
    fn current(&self, now: u64) -> &Slot {
        let n = now / self.slot_nanos;
        let slot = &self.slots[(n % SLOTS) as usize];
        let tag = slot.tag.load(Ordering::Acquire);
        if tag < n + 1
            && slot
                .tag
                .compare_exchange(tag, n + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.tokens.store(0, Ordering::Release);
        }
        slot
    }

    fn balance(&self, now: u64) -> i64 {
        let n = now / self.slot_nanos;
        let oldest = (n + 1).saturating_sub(SLOTS - 1).max(1);
        let live: i64 = self
            .slots
            .iter()
            .filter(|s| {
                let t = s.tag.load(Ordering::Acquire);
                t >= oldest && t <= n + 1
            })
            .map(|s| s.tokens.load(Ordering::Acquire))
            .sum();
        self.reserve + live
    }
}

impl fmt::Debug for RetryBudgetBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudgetBuilder")
            .field("ttl", &self.ttl)
            .field("min_per_sec", &self.min_per_sec)
            .field("ratio", &self.ratio)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.inner.ttl)
            .field("min_per_sec", &self.inner.min_per_sec)
            .field("ratio", &self.inner.ratio)
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodwall_core::ManualClock;

    #[test]
    fn deposits_and_withdrawals_expire_after_ttl() {
        let clock = ManualClock::new();
        let b = RetryBudget::builder()
            .min_per_sec(0)
            .ratio(0.5)
            .clock(clock.clone())
            .build()
            .unwrap();
        assert_eq!(b.floor(), 0);
        assert!(!b.try_withdraw(), "no traffic, no floor: nothing to retry");
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.available(), 5);
        assert!((0..5).all(|_| b.try_withdraw()));
        assert!(!b.try_withdraw());
        clock.advance(Duration::from_secs(11));
        assert_eq!(
            b.available(),
            0,
            "old deposits expired with their withdrawals"
        );
        for _ in 0..4 {
            b.deposit();
        }
        assert_eq!(b.available(), 2);
    }

    #[test]
    fn floor_refills_once_withdrawals_expire() {
        let clock = ManualClock::new();
        let b = RetryBudget::builder()
            .ttl(Duration::from_secs(2))
            .min_per_sec(3)
            .ratio(0.0)
            .clock(clock.clone())
            .build()
            .unwrap();
        assert_eq!(b.floor(), 6);
        assert_eq!((0..100).filter(|_| b.try_withdraw()).count(), 6);
        clock.advance(Duration::from_secs(3));
        assert_eq!(b.available(), 6);
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let err = |b: RetryBudgetBuilder| b.build().err().map(|e| e.field);
        assert_eq!(err(RetryBudget::builder().ttl(Duration::ZERO)), Some("ttl"));
        assert_eq!(err(RetryBudget::builder().ratio(f32::NAN)), Some("ratio"));
        assert_eq!(err(RetryBudget::builder().ratio(-0.1)), Some("ratio"));
        assert_eq!(err(RetryBudget::builder()), None);
    }
}
