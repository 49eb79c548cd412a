//! Huge and zero durations never panic any primitive: `Duration::MAX` means unbounded
//! everywhere, and a zero that makes no sense is a build error, never a panic later.
//! Random durations from zero to `Duration::MAX` drive every primitive that takes one, on
//! Tokio's paused clock (a wait of centuries passes at once).

mod common;

use common::paused_runtime;

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_core::TokioClock;
use floodwall_resilience::bulkhead::Bulkhead;
use floodwall_resilience::chaos::Chaos;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, OpenWait};
use floodwall_resilience::hedge::{Hedge, HedgeDelay};
use floodwall_resilience::retry::{Backoff, Jitter, Retry, RetryBudget};
use floodwall_resilience::timeout::Timeout;
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX)),
        (0u64..5_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_secs),
        any::<u64>().prop_map(Duration::from_nanos),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_duration_panics_any_primitive(
        a in duration(),
        b in duration(),
        c in duration(),
        fail_first in any::<bool>(),
    ) {
        paused_runtime().block_on(async move {
            // Timeout: any bound, a call that answers at once.
            let r = Timeout::new(a).call(|| async { Ok::<_, ()>(1) }).await;
            assert!(r.is_ok() || a.is_zero());

            // Retry: any delays, any elapsed budget; the call fails once, then answers.
            for backoff in [
                Backoff::Constant(a),
                Backoff::Linear { initial: a, step: b },
                Backoff::Exponential { initial: a, multiplier: 1e300 },
            ] {
                for jitter in [Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Decorrelated, Jitter::Randomized { factor: 0.5 }, Jitter::DecorrelatedV2] {
                    let retry = Retry::builder()
                        .max_attempts(NonZeroU32::new(3).unwrap())
                        .backoff(backoff)
                        .jitter(jitter)
                        .max_elapsed(Some(c))
                        .build();
                    let mut n = 0;
                    let _ = retry
                        .call(|| {
                            n += 1;
                            let fail = fail_first && n == 1;
                            async move { if fail { Err(()) } else { Ok(()) } }
                        })
                        .await;
                }
            }
            let budget = RetryBudget::builder().ttl(a).build();
            prop_assert!(budget.is_ok() || a < Duration::from_nanos(10));

            // Bulkhead: any wait for a slot that frees itself later.
            let bulkhead = Bulkhead::builder()
                .max_concurrent(std::num::NonZeroUsize::new(1).unwrap())
                .max_wait(a)
                .build();
            let held = bulkhead.try_acquire().unwrap();
            let bh = bulkhead.clone();
            let waiter = tokio::spawn(async move { bh.call(|| async { Ok::<_, ()>(()) }).await });
            tokio::time::sleep(b.min(Duration::from_secs(86_400))).await;
            drop(held);
            let _ = waiter.await.unwrap();

            // Hedge: any fixed delay.
            let hedge = Hedge::builder().delay(HedgeDelay::Fixed(a)).build();
            prop_assert_eq!(hedge.call(|| async { Ok::<_, ()>(5) }).await, Ok(5));

            // Breaker: any open wait and slow-call threshold; zeros are build errors.
            for open_wait in [OpenWait::Fixed(a), OpenWait::Backoff { initial: a, multiplier: 2.0, max: b.max(a) }] {
                let built = CircuitBreaker::builder()
                    .open_wait(open_wait)
                    .slow_call_duration(Some(c))
                    .max_wait_in_half_open(Some(b))
                    .clock(TokioClock::new())
                    .build();
                match built {
                    Ok(breaker) => {
                        breaker.open();
                        let _ = breaker.try_acquire();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = breaker.try_acquire().map(|p| p.failure());
                        let _ = breaker.snapshot();
                    }
                    Err(e) => prop_assert!(
                        a.is_zero() || b.is_zero() || c.is_zero(),
                        "rejected {:?} {:?} {:?}: {}", a, b, c, e
                    ),
                }
            }

            // Run-time changes and manual waits: any duration.
            bulkhead.set_max_wait(c);
            let _ = bulkhead.acquire().await;
            let breaker = CircuitBreaker::builder()
                .break_duration_generator(move |_: &floodwall_resilience::circuit_breaker::BreakInfo| a)
                .clock(TokioClock::new())
                .build()
                .unwrap();
            breaker.open();
            let _ = breaker.try_acquire();
            breaker.open_for(b);
            let _ = breaker.try_acquire();
            breaker.open_until(std::time::Instant::now() + c.min(Duration::from_secs(1 << 40)));
            let _ = breaker.try_acquire();

            // Pipeline: any overall and per-attempt deadline.
            let pipeline = floodwall_resilience::Pipeline::builder()
                .timeout(a)
                .attempt_timeout(b)
                .retry(Retry::builder().backoff(Backoff::Constant(c)).build())
                .build();
            let _ = pipeline.call(|| async { Ok::<_, ()>(()) }).await;

            // Chaos: any injected latency.
            let chaos = Chaos::builder().latency(a.min(Duration::from_secs(1 << 40)), 1.0).seed(7).build().unwrap();
            let _ = chaos.call(|| async { Ok::<_, ()>(()) }).await;
            Ok(())
        })?;
    }
}
