//! Quotas: how much may be sent, over what period, with what burst.

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;

/// `limit` requests per `period`, with bursts of up to `burst` (default: `limit`).
///
/// A quota cannot be invalid: counts are [`NonZeroU32`], and a period of zero is raised to one
/// nanosecond. The *emission interval* `T = period / limit` is the steady spacing between
/// requests; `burst` requests may arrive at once after an idle time of `burst * T`.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use floodwall_limiter::Quota;
///
/// let q = Quota::per_second(NonZeroU32::new(10).unwrap()).allow_burst(NonZeroU32::new(20).unwrap());
/// assert_eq!(q.emission_interval(), Duration::from_millis(100));
/// assert_eq!(q.burst().get(), 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
}

impl Quota {
    /// `limit` per `period`, burst `limit`.
    pub const fn new(limit: NonZeroU32, period: Duration) -> Quota {
        let period = if period.is_zero() {
            Duration::from_nanos(1)
        } else {
            period
        };
        Quota {
            limit,
            period,
            burst: limit,
        }
    }

    /// `limit` per second.
    pub const fn per_second(limit: NonZeroU32) -> Quota {
        Quota::new(limit, Duration::from_secs(1))
    }

    /// `limit` per minute.
    pub const fn per_minute(limit: NonZeroU32) -> Quota {
        Quota::new(limit, Duration::from_secs(60))
    }

    /// `limit` per hour.
    pub const fn per_hour(limit: NonZeroU32) -> Quota {
        Quota::new(limit, Duration::from_secs(3600))
    }

    /// `limit` per day.
    pub const fn per_day(limit: NonZeroU32) -> Quota {
        Quota::new(limit, Duration::from_secs(86_400))
    }

    /// The same rate with bursts of up to `burst`.
    pub const fn allow_burst(self, burst: NonZeroU32) -> Quota {
        Quota { burst, ..self }
    }

    /// Requests per period.
    pub const fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The burst size.
    pub const fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// `T = period / limit`, at least 1 ns.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.emission_interval_nanos())
    }

    pub(crate) fn emission_interval_nanos(&self) -> u64 {
        (duration_to_nanos(self.period) / u64::from(self.limit.get())).max(1)
    }
}
