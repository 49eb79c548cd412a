//! Fixed window and sliding window counter against a reference built from the log of
//! admitted requests; their documented bounds; retry-after is exact.

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_core::{Clock, ManualClock};
use floodwall_limiter::Quota;
use floodwall_limiter::window::{WindowKind, WindowLimiter};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Check(u32),
    Advance(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (1u32..4).prop_map(Op::Check),
            3 => prop_oneof![0u64..5, 1u64..3_000, Just(1_000u64), Just(500u64)].prop_map(Op::Advance),
        ],
        1..200,
    )
}

/// Units admitted in aligned window `w` according to the log.
fn in_window(log: &[(u64, u32)], period: u64, w: u64) -> u64 {
    log.iter()
        .filter(|(t, _)| t / period == w)
        .map(|&(_, n)| u64::from(n))
        .sum()
}

/// The reference decision: (allowed, remaining) from the log alone.
fn reference(
    kind: WindowKind,
    log: &[(u64, u32)],
    period: u64,
    limit: u64,
    now: u64,
    n: u32,
) -> (bool, u64) {
    let w = now / period;
    let cur = in_window(log, period, w);
    let n = u64::from(n);
    match kind {
        WindowKind::Fixed => {
            let allowed = cur + n <= limit;
            let used = cur + if allowed { n } else { 0 };
            (allowed, limit.saturating_sub(used))
        }
        WindowKind::SlidingCounter => {
            let prev = if w == 0 {
                0
            } else {
                in_window(log, period, w - 1)
            };
            let to_end = period - (now - w * period);
            let p = u128::from(period);
            let est = u128::from(prev) * u128::from(to_end) + u128::from(cur) * p;
            let allowed = est + u128::from(n) * p <= u128::from(limit) * p;
            let after = est + if allowed { u128::from(n) * p } else { 0 };
            (
                allowed,
                ((u128::from(limit) * p).saturating_sub(after) / p) as u64,
            )
        }
    }
}

fn run(kind: WindowKind, limit: u32, period_ms: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let quota = Quota::new(
        NonZeroU32::new(limit).unwrap(),
        Duration::from_millis(period_ms),
    );
    let limiter = WindowLimiter::with_clock(kind, quota, clock.clone());
    let period = period_ms * 1_000_000;
    let mut log: Vec<(u64, u32)> = Vec::new();
    for op in ops {
        match op {
            Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
            Op::Check(n) => {
                let now = clock.now_nanos();
                let Ok(d) = limiter.check_n(NonZeroU32::new(n).unwrap()) else {
                    prop_assert!(n > limit);
                    continue;
                };
                let (allowed, remaining) = reference(kind, &log, period, u64::from(limit), now, n);
                prop_assert_eq!(d.allowed, allowed, "at {} cost {}", now, n);
                prop_assert_eq!(u64::from(d.remaining), remaining);
                if allowed {
                    log.push((now, n));
                } else {
                    // Waiting exactly retry_after makes the same request fit (with nothing
                    // else admitted meanwhile), and it is the shortest such wait.
                    let wait = d.retry_after.expect("denied decisions say when");
                    let later = now + wait.as_nanos() as u64;
                    prop_assert!(
                        reference(kind, &log, period, u64::from(limit), later, n).0,
                        "not allowed after retry_after {:?}",
                        wait
                    );
                    if !wait.is_zero() {
                        prop_assert!(
                            !reference(kind, &log, period, u64::from(limit), later - 1, n).0,
                            "allowed before retry_after {:?}",
                            wait
                        );
                    }
                }
            }
        }
    }
    // Bounds: at most `limit` in any aligned window; for the sliding counter at most
    // 2 * limit in any span of `period`.
    for &(t, _) in &log {
        prop_assert!(in_window(&log, period, t / period) <= u64::from(limit));
        if kind == WindowKind::SlidingCounter {
            let span: u64 = log
                .iter()
                .filter(|(u, _)| *u >= t && *u < t + period)
                .map(|&(_, n)| u64::from(n))
                .sum();
            prop_assert!(
                span <= 2 * u64::from(limit),
                "{} in a span of one period",
                span
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn fixed_window_agrees_with_its_log(limit in 1u32..12, period_ms in 1u64..2000, ops in ops()) {
        run(WindowKind::Fixed, limit, period_ms, ops)?;
    }

    #[test]
    fn sliding_counter_agrees_with_its_log(limit in 1u32..12, period_ms in 1u64..2000, ops in ops()) {
        run(WindowKind::SlidingCounter, limit, period_ms, ops)?;
    }
}

#[test]
fn sliding_counter_smooths_the_fixed_window_edge() {
    // 10 per second; 10 admitted at the end of one window.
    let clock = ManualClock::starting_at(Duration::from_millis(900));
    let q = Quota::per_second(NonZeroU32::new(10).unwrap());
    let fixed = WindowLimiter::with_clock(WindowKind::Fixed, q, clock.clone());
    let sliding = WindowLimiter::with_clock(WindowKind::SlidingCounter, q, clock.clone());
    for _ in 0..10 {
        assert!(fixed.check().allowed && sliding.check().allowed);
    }
    clock.advance(Duration::from_millis(200)); // 100 ms into the next window
    let fixed_more = (0..10).filter(|_| fixed.check().allowed).count();
    let sliding_more = (0..10).filter(|_| sliding.check().allowed).count();
    assert_eq!(
        fixed_more, 10,
        "fixed windows let a second burst through at the edge"
    );
    assert_eq!(
        sliding_more, 1,
        "the estimate 10 * 0.9 = 9 leaves room for 1"
    );
}
