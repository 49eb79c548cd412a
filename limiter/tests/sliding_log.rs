//! Sliding log against a reference over the admitted log: exact decisions, exact
//! retry-after, and never more than the limit in any interval of one period.

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_core::{Clock, ManualClock};
use floodwall_limiter::Quota;
use floodwall_limiter::sliding_log::SlidingLog;
use proptest::prelude::*;

fn used(log: &[(u64, u32)], period: u64, now: u64) -> u64 {
    log.iter()
        .filter(|(t, _)| t + period > now)
        .map(|&(_, n)| u64::from(n))
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn sliding_log_is_exact(
        limit in 1u32..12,
        period_ms in 1u64..2000,
        // Some(cost): a check; None: advance the clock by the matching entry of `advances`.
        ops in prop::collection::vec(prop::option::weighted(0.6, 1u32..4), 1..200),
        advances in prop::collection::vec(prop_oneof![0u64..5, 1u64..3000, Just(1000u64)], 200),
    ) {
        let clock = ManualClock::new();
        let limiter = SlidingLog::with_clock(
            Quota::new(NonZeroU32::new(limit).unwrap(), Duration::from_millis(period_ms)),
            clock.clone(),
        );
        let period = period_ms * 1_000_000;
        let limit64 = u64::from(limit);
        let mut log: Vec<(u64, u32)> = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let Some(n) = op else {
                clock.advance(Duration::from_millis(advances[i]));
                continue;
            };
            let now = clock.now_nanos();
            let Ok(d) = limiter.check_n(NonZeroU32::new(n).unwrap()) else {
                prop_assert!(n > limit);
                continue;
            };
            let u = used(&log, period, now);
            let allowed = u + u64::from(n) <= limit64;
            prop_assert_eq!(d.allowed, allowed);
            prop_assert_eq!(u64::from(d.remaining), limit64 - u - if allowed { u64::from(n) } else { 0 });
            if allowed {
                log.push((now, n));
            } else {
                let wait = d.retry_after.unwrap().as_nanos() as u64;
                prop_assert!(used(&log, period, now + wait) + u64::from(n) <= limit64, "still full after {}", wait);
                if wait > 0 {
                    prop_assert!(used(&log, period, now + wait - 1) + u64::from(n) > limit64, "room before {}", wait);
                }
            }
        }
        for &(start, _) in &log {
            let span: u64 = log.iter().filter(|(t, _)| *t >= start && *t < start + period).map(|&(_, n)| u64::from(n)).sum();
            prop_assert!(span <= limit64);
        }
    }
}
