//! Hedging: slow first attempts are hedged, the first success wins, losers are cancelled,
//! failures hedge at once, and the delay follows the observed latency percentile.

use std::time::Duration;

use floodwall_resilience::hedge::{Hedge, HedgeDelay, HedgeLayer};
use floodwall_testkit::{Flaky, FlakyErrorKind, Step};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test(start_paused = true)]
async fn a_stalled_first_attempt_is_hedged_and_cancelled() {
    let hedge = Hedge::builder().delay(HedgeDelay::Fixed(MS(50))).build();
    let downstream = Flaky::scripted(
        [Step::ok().after(Duration::from_secs(10))],
        Step::ok().after(MS(20)),
    );
    let start = Instant::now();
    let r = hedge.call(|| downstream.call()).await;
    assert_eq!(r, Ok(2), "the hedge answered");
    assert_eq!(start.elapsed(), MS(70));
    assert_eq!(downstream.calls(), 2);
    assert_eq!(
        downstream.in_flight(),
        0,
        "the stalled attempt was cancelled"
    );
    assert_eq!(hedge.hedges_started(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_more_than_max_hedged_attempts() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(MS(10)))
        .max_hedged_attempts(3)
        .build();
    let downstream = Flaky::slow(MS(100));
    let start = Instant::now();
    assert_eq!(
        hedge.call(|| downstream.call()).await,
        Ok(1),
        "the first attempt still wins"
    );
    assert_eq!(start.elapsed(), MS(100));
    assert_eq!(downstream.calls(), 4, "1 + 3 hedges");
    assert_eq!(downstream.max_in_flight(), 4);
    assert_eq!(downstream.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failure_hedges_at_once_and_all_failing_returns_the_last_error() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(Duration::from_secs(60)))
        .max_hedged_attempts(2)
        .build();
    let downstream = Flaky::failing(1, FlakyErrorKind::Transient);
    let start = Instant::now();
    assert_eq!(hedge.call(|| downstream.call()).await, Ok(2));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no waiting for the delay after a failure"
    );

    let dead = Flaky::always_failing(FlakyErrorKind::Permanent);
    let err = hedge.call(|| dead.call()).await.unwrap_err();
    assert_eq!(err.call, 3, "the third attempt's error is the last one");
    assert_eq!(dead.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_delay_tracks_the_latency_percentile() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Percentile {
            percentile: 95.0,
            min_samples: 100,
            fallback: MS(500),
        })
        .build();
    assert_eq!(hedge.current_delay(), MS(500));
    for ms in 1..=100 {
        hedge.observe(MS(ms));
    }
    assert_eq!(
        hedge.current_delay(),
        MS(95),
        "nearest-rank p95 of 1..=100 ms"
    );
    // Calls feed the samples too: a slower regime moves the delay up.
    let downstream = Flaky::slow(MS(300));
    for _ in 0..256 {
        hedge.call(|| downstream.call()).await.unwrap();
    }
    assert_eq!(hedge.current_delay(), MS(300));
}

#[tokio::test(start_paused = true)]
async fn the_layer_hedges_with_cloned_requests() {
    let hedge = Hedge::builder().delay(HedgeDelay::Fixed(MS(50))).build();
    let downstream = Flaky::scripted([Step::ok().after(Duration::from_secs(10))], Step::ok());
    let mut svc = HedgeLayer::new(hedge).layer(downstream.clone());
    let start = Instant::now();
    let r = ServiceExt::<String>::ready(&mut svc)
        .await
        .unwrap()
        .call("GET /".to_string())
        .await;
    assert_eq!(r, Ok(2));
    assert_eq!(start.elapsed(), MS(50));
}

mod percentile_model {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// After every 32nd sample the delay is the nearest-rank percentile of the last 256.
        #[test]
        fn delay_is_the_nearest_rank_percentile(
            p in 1.0f64..=100.0,
            blocks in 1usize..=12,
            seed_ms in prop::collection::vec(1u64..10_000, 32 * 12),
        ) {
            let hedge = Hedge::builder()
                .delay(HedgeDelay::Percentile { percentile: p, min_samples: 1, fallback: MS(1) })
                .build();
            let samples = &seed_ms[..32 * blocks];
            for &ms in samples {
                hedge.observe(MS(ms));
            }
            let mut recent: Vec<u64> = samples[samples.len().saturating_sub(256)..].to_vec();
            recent.sort_unstable();
            let rank = ((p / 100.0) * recent.len() as f64).ceil() as usize;
            let want = recent[rank.clamp(1, recent.len()) - 1];
            prop_assert_eq!(hedge.current_delay(), MS(want));
        }
    }
}

/// `Duration::MAX` means "never hedge": no overflow, the first attempt answers.
#[tokio::test(start_paused = true)]
async fn an_unbounded_hedge_delay_never_hedges_and_never_panics() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(Duration::MAX))
        .build();
    let downstream = Flaky::scripted([Step::ok().after(Duration::from_secs(3600))], Step::ok());
    assert_eq!(hedge.call(|| downstream.call()).await, Ok(1));
    assert_eq!(downstream.calls(), 1);
    assert_eq!(hedge.hedges_started(), 0);
}

/// The hedge delay follows the dependency's p95 as it moves from about 20 ms to about 200 ms
/// (within one recompute window), and under a 10 % budget the extra attempts stay near 10 %
/// of calls although 30 % of the calls stall. Paused clock; the budget on Tokio's time.
#[tokio::test(start_paused = true)]
async fn the_delay_follows_the_p95_and_a_budget_caps_the_extra_attempts() {
    use floodwall_resilience::TokioClock;
    use floodwall_resilience::retry::RetryBudget;
    let budget = RetryBudget::builder()
        .ratio(0.1)
        .min_per_sec(0)
        .ttl(std::time::Duration::from_secs(3600))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Percentile {
            percentile: 95.0,
            min_samples: 20,
            fallback: std::time::Duration::from_millis(100),
        })
        .budget(budget)
        .build();
    let ms = std::time::Duration::from_millis;
    // Latencies spread over [lo, hi] ms.
    let call = |i: u64, lo: u64, hi: u64, stall: bool| {
        let h = hedge.clone();
        async move {
            let mut attempt = 0u64;
            h.call(|| {
                attempt += 1;
                let first = attempt == 1;
                async move {
                    let d = if stall && first {
                        ms(5_000)
                    } else {
                        ms(lo + (i * 37) % (hi - lo + 1))
                    };
                    tokio::time::sleep(d).await;
                    Ok::<_, ()>(())
                }
            })
            .await
        }
    };
    for i in 0..100 {
        call(i, 10, 20, false).await.unwrap();
    }
    let fast = hedge.current_delay();
    for i in 0..64 {
        call(i, 100, 200, false).await.unwrap();
    }
    let slow = hedge.current_delay();
    println!("hedge delay: {fast:?} while p95 ~ 20 ms, {slow:?} 64 calls after p95 ~ 200 ms");
    assert!((ms(18)..=ms(20)).contains(&fast), "{fast:?}");
    assert!((ms(180)..=ms(200)).contains(&slow), "{slow:?}");

    // 30 % of calls stall on their first attempt: hedging would add 30 %, the budget 10 %.
    let before = hedge.hedges_started();
    let calls = 1_000u64;
    for i in 0..calls {
        call(i, 100, 200, i % 10 < 3).await.unwrap_or(());
    }
    let extra = hedge.hedges_started() - before;
    let share = extra as f64 / calls as f64;
    println!(
        "{calls} calls, 30 % stalling: {extra} extra attempts ({:.1} % of calls; budget 10 %)",
        share * 100.0
    );
    assert!(share <= 0.10 + 0.02, "{share}");
    assert!(share >= 0.05, "the budget is used, not idle: {share}");
}

/// A percentile delay stays within its bounds: a p95 of 10 ms reads as the 50 ms floor, one of
/// 500 ms as the 80 ms cap.
#[test]
fn a_percentile_delay_is_kept_within_its_bounds() {
    let ms = Duration::from_millis;
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Percentile {
            percentile: 95.0,
            min_samples: 20,
            fallback: ms(60),
        })
        .delay_bounds(ms(50), ms(80))
        .build();
    for _ in 0..32 {
        hedge.observe(ms(10));
    }
    assert_eq!(hedge.current_delay(), ms(50));
    for _ in 0..256 {
        hedge.observe(ms(500));
    }
    assert_eq!(hedge.current_delay(), ms(80));
}
