//! Injectable monotonic time.
//!
//! Everything in floodwall that reads time takes a [`Clock`]. Production code uses
//! [`SystemClock`]; tests (floodwall's and yours) use [`ManualClock`] and move time by hand, so
//! a test of "the breaker half-opens after 30 s" runs in microseconds and never flakes.
//!
//! A clock returns **monotonic nanoseconds** since an arbitrary origin. Only differences between
//! two readings of the same clock mean anything; the value never goes backwards.
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new();
//! let seen_by_component = clock.clone(); // clones share one time
//! let start = seen_by_component.now_nanos();
//! clock.advance(Duration::from_millis(1500));
//! assert_eq!(seen_by_component.now_nanos() - start, 1_500_000_000);
//! assert_eq!(seen_by_component.elapsed_since(start), Duration::from_millis(1500));
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A source of monotonic time, in nanoseconds since an arbitrary, fixed origin.
///
/// Implementations must be cheap (they sit on hot paths), thread-safe and must never return a
/// value smaller than one they returned before.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since this clock's origin. Never decreases.
    fn now_nanos(&self) -> u64;

    /// Time elapsed since an earlier reading `earlier` of this clock; zero if `earlier` lies in
    /// the future.
    fn elapsed_since(&self, earlier: u64) -> Duration {
        Duration::from_nanos(self.now_nanos().saturating_sub(earlier))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    #[inline]
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
}

impl<C: Clock + ?Sized> Clock for Box<C> {
    #[inline]
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
}

/// Converts a [`Duration`] to whole nanoseconds, saturating at `u64::MAX` (about 584 years).
#[inline]
pub const fn duration_to_nanos(d: Duration) -> u64 {
    let n = d.as_nanos();
    if n > u64::MAX as u128 {
        u64::MAX
    } else {
        n as u64
    }
}

/// `d` scaled by `factor` (a negative or NaN factor counts as zero), saturating at
/// [`Duration::MAX`] where [`Duration::mul_f64`] would panic.
///
/// ```
/// use std::time::Duration;
/// use floodwall_core::clock::mul_f64_saturating;
///
/// assert_eq!(mul_f64_saturating(Duration::from_secs(2), 1.5), Duration::from_secs(3));
/// assert_eq!(mul_f64_saturating(Duration::MAX, 1.5), Duration::MAX);
/// ```
pub fn mul_f64_saturating(d: Duration, factor: f64) -> Duration {
    let factor = if factor.is_nan() {
        0.0
    } else {
        factor.max(0.0)
    };
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// The real monotonic clock.
///
/// Backed by quanta's clock: the CPU's invariant time-stamp counter calibrated against the
/// OS monotonic clock (a few nanoseconds a read), falling back to the OS monotonic clock where
/// the counter is not reliable. A limiter or breaker reads it on every decision, so its cost
/// is part of theirs.
///
/// All `SystemClock`s in a process share one calibration and one origin (the first
/// `SystemClock::new`), so readings from different instances can be compared.
#[derive(Debug, Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    origin: u64,
}

impl SystemClock {
    /// The system clock (cheap after the first call, which calibrates).
    pub fn new() -> Self {
        static SHARED: OnceLock<(quanta::Clock, u64)> = OnceLock::new();
        let (clock, origin) = SHARED.get_or_init(|| {
            let clock = quanta::Clock::new();
            let origin = clock.raw();
            (clock, origin)
        });
        SystemClock {
            clock: clock.clone(),
            origin: *origin,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// A clock that only moves when told to. Clones share one time.
///
/// Starts at zero (or at [`ManualClock::starting_at`]). Reads are a single atomic load, so a
/// `ManualClock` can be shared across threads in a concurrency test.
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock reading zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// A manual clock reading `start`.
    pub fn starting_at(start: Duration) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(duration_to_nanos(start))),
        }
    }

    /// Moves time forward by `by` for this clock and all its clones. Saturates at `u64::MAX`.
    pub fn advance(&self, by: Duration) {
        let by = duration_to_nanos(by);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the time to `to` if that is not earlier than now; a clock never goes backwards.
    /// Returns the time after the call.
    pub fn advance_to(&self, to: Duration) -> Duration {
        let to = duration_to_nanos(to);
        let prev = self.nanos.fetch_max(to, Ordering::AcqRel);
        Duration::from_nanos(prev.max(to))
    }

    /// The current reading as a [`Duration`] since the origin.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Acquire)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic_and_shared() {
        let a = SystemClock::new();
        let b = SystemClock::default();
        let t0 = a.now_nanos();
        let t1 = b.now_nanos();
        let t2 = a.now_nanos();
        assert!(t0 <= t1 && t1 <= t2);
    }

    #[test]
    fn manual_clock_never_goes_back() {
        let c = ManualClock::starting_at(Duration::from_secs(10));
        assert_eq!(
            c.advance_to(Duration::from_secs(5)),
            Duration::from_secs(10)
        );
        assert_eq!(c.now(), Duration::from_secs(10));
        assert_eq!(
            c.advance_to(Duration::from_secs(12)),
            Duration::from_secs(12)
        );
        c.advance(Duration::MAX);
        assert_eq!(c.now_nanos(), u64::MAX);
        assert_eq!(c.elapsed_since(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn clock_trait_objects_work() {
        let c = ManualClock::new();
        let boxed: Box<dyn Clock> = Box::new(c.clone());
        let arced: Arc<dyn Clock> = Arc::new(c.clone());
        c.advance(Duration::from_nanos(7));
        assert_eq!(boxed.now_nanos(), 7);
        assert_eq!(arced.now_nanos(), 7);
    }
}

/// A [`Clock`] reading Tokio's time (feature `tokio`), so primitives that take a clock follow
/// `#[tokio::test(start_paused = true)]` and `tokio::time::advance` together with the timers
/// floodwall sleeps on.
///
/// Its origin is its creation; clones share it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// use std::time::Duration;
/// use floodwall_core::{Clock, TokioClock};
///
/// let clock = TokioClock::new();
/// tokio::time::sleep(Duration::from_secs(3)).await; // instant: time is paused
/// assert_eq!(clock.now_nanos(), 3_000_000_000);
/// # }
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

#[cfg(feature = "tokio")]
impl TokioClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

#[cfg(feature = "tokio")]
impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "tokio")]
impl Clock for TokioClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        duration_to_nanos(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }
}

/// The Tokio instant `d` from now, or a point decades away when `d` is too large to add
/// (`Duration::MAX` means "unbounded" everywhere in floodwall and never overflows).
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub fn deadline_after(d: Duration) -> tokio::time::Instant {
    deadline_after_from(tokio::time::Instant::now(), d)
}

/// The Tokio instant `d` after `start`, or a point decades after it when `d` is too large to
/// add (see [`deadline_after`]).
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub fn deadline_after_from(start: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    start
        .checked_add(d)
        .unwrap_or_else(|| start + Duration::from_secs(30 * 365 * 86_400))
}
