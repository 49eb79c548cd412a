//! GCRA in memory against a reference token bucket, its burst + rate bound, and exactness
//! under threads.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_core::{Clock, ManualClock};
use floodwall_limiter::gcra::Gcra;
use floodwall_limiter::{InsufficientCapacity, Quota};
use proptest::prelude::*;

/// A token bucket kept as a "debt" level in nanoseconds that drains one per nanosecond:
/// a request of cost n fits if `level + n*T <= b*T`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    t: u64,
    cap: u64,
    level: u64,
    last: u64,
}

impl Bucket {
    /// (allowed, remaining, level after, retry after)
    fn take(&mut self, now: u64, n: u32) -> (bool, u32, u64, Option<u64>) {
        self.level = self.level.saturating_sub(now - self.last);
        self.last = now;
        let need = self.level + u64::from(n) * self.t;
        let allowed = need <= self.cap;
        if allowed {
            self.level = need;
        }
        let remaining = ((self.cap - self.level) / self.t) as u32;
        let retry = (!allowed).then(|| need - self.cap);
        (allowed, remaining, self.level, retry)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Check(u32),
    Peek,
    Advance(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            5 => (1u32..4).prop_map(Op::Check),
            1 => Just(Op::Peek),
            3 => prop_oneof![
                0u64..10,
                1u64..400_000_000,
                Just(100_000_000u64),
                Just(250_000_000u64)
            ]
            .prop_map(Op::Advance),
        ],
        1..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn gcra_agrees_with_a_token_bucket_and_never_over_admits(
        limit in 1u32..20,
        burst in 1u32..20,
        period_ms in 1u64..5000,
        ops in ops(),
    ) {
        let quota = Quota::new(NonZeroU32::new(limit).unwrap(), Duration::from_millis(period_ms))
            .allow_burst(NonZeroU32::new(burst).unwrap());
        let clock = ManualClock::new();
        let limiter = Gcra::with_clock(quota, clock.clone());
        let t = quota.emission_interval().as_nanos() as u64;
        let mut model = Bucket { t, cap: t * u64::from(burst), level: 0, last: 0 };
        let mut admitted: Vec<(u64, u32)> = Vec::new();
        for op in ops {
            let now = clock.now_nanos();
            match op {
                Op::Advance(ns) => clock.advance(Duration::from_nanos(ns)),
                Op::Peek => {
                    // A peek answers what a cost-1 check would, without consuming.
                    let d = limiter.peek();
                    let (allowed, _, _, retry) = { let mut probe = model; probe.take(now, 1) };
                    prop_assert_eq!(d.allowed, allowed);
                    prop_assert_eq!(d.retry_after, retry.map(Duration::from_nanos));
                }
                Op::Check(n) => {
                    let got = limiter.check_n(NonZeroU32::new(n).unwrap());
                    if n > burst {
                        prop_assert_eq!(got, Err(InsufficientCapacity { cost: n, capacity: burst }));
                        continue;
                    }
                    let d = got.unwrap();
                    let (allowed, remaining, level, retry) = model.take(now, n);
                    prop_assert_eq!(d.allowed, allowed);
                    prop_assert_eq!(d.remaining, remaining);
                    prop_assert_eq!(d.reset_after, Duration::from_nanos(level));
                    prop_assert_eq!(d.retry_after, retry.map(Duration::from_nanos));
                    prop_assert_eq!(d.limit, burst);
                    if allowed {
                        admitted.push((now, n));
                    }
                }
            }
        }
        // Burst + rate: from any admitted request on, the units admitted up to time x are at
        // most b + floor((x - start) / T).
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let mut units = 0u64;
            for &(at, n) in &admitted[i..] {
                units += u64::from(n);
                prop_assert!(
                    units <= u64::from(burst) + (at - start) / t,
                    "{} units in {} ns", units, at - start
                );
            }
        }
    }
}

#[test]
fn eight_threads_admit_exactly_the_burst() {
    for burst in [1u32, 7, 100] {
        let clock = ManualClock::new();
        let limiter = Gcra::with_clock(Quota::per_hour(NonZeroU32::new(burst).unwrap()), clock);
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, a) = (limiter.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if l.check().allowed {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), burst);
    }
}
