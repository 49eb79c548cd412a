//! Retry: jitter bounds and reproducibility (property tests), the retry budget against a
//! storm, Retry-After, attempt and time limits, and the tower layer.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_resilience::retry::{
    Backoff, Decision, Jitter, Retry, RetryBudget, RetryEvent, RetryLayer, Schedule,
};
use floodwall_testkit::{Flaky, FlakyErrorKind};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn backoff() -> impl Strategy<Value = Backoff> {
    let ms = || (1u64..2_000).prop_map(Duration::from_millis);
    prop_oneof![
        ms().prop_map(Backoff::Constant),
        (ms(), ms()).prop_map(|(initial, step)| Backoff::Linear { initial, step }),
        (ms(), 1.0f64..4.0).prop_map(|(initial, multiplier)| Backoff::Exponential {
            initial,
            multiplier
        }),
    ]
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop::sample::select(vec![
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
        Jitter::Randomized { factor: 0.5 },
        Jitter::Randomized { factor: 0.25 },
        Jitter::DecorrelatedV2,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn jittered_delays_stay_within_their_formula(
        backoff in backoff(),
        jitter in jitter(),
        cap_ms in 1u64..60_000,
        seed in any::<u64>(),
    ) {
        let cap = Duration::from_millis(cap_ms);
        let s = Schedule { backoff, jitter, cap };
        let delays = s.delays(seed, 24);
        let mut prev: Option<Duration> = None;
        for (n, &d) in delays.iter().enumerate() {
            let b = backoff.base_delay(n as u32, cap);
            prop_assert!(b <= cap);
            prop_assert!(d <= cap, "n={} delay {:?} over cap {:?}", n, d, cap);
            match jitter {
                Jitter::None => prop_assert_eq!(d, b),
                Jitter::Full => prop_assert!(d <= b),
                Jitter::Equal => {
                    let half = Duration::from_nanos(b.as_nanos() as u64 / 2);
                    prop_assert!(half <= d && d <= b, "n={} {:?} not in [{:?}, {:?}]", n, d, half, b);
                }
                Jitter::Randomized { factor } => {
                    let lo = b.mul_f64(1.0 - factor);
                    let hi = b.mul_f64(1.0 + factor).min(cap);
                    let slack = Duration::from_nanos(2);
                    prop_assert!(lo.saturating_sub(slack) <= d && d <= hi, "n={} {:?} not in [{:?}, {:?}]", n, d, lo, hi);
                }
                // Bounded by the cap (checked above); its sum law has its own test.
                Jitter::DecorrelatedV2 => {}
                Jitter::Decorrelated => {
                    let floor = backoff.initial().min(cap);
                    let ceil = (prev.unwrap_or(floor) * 3).min(cap).max(floor);
                    prop_assert!(floor <= d && d <= ceil, "n={} {:?} not in [{:?}, {:?}]", n, d, floor, ceil);
                }
            }
            prev = Some(d);
        }
    }

    #[test]
    fn a_seed_replays_the_same_delays(backoff in backoff(), jitter in jitter(), seed in any::<u64>()) {
        let s = Schedule { backoff, jitter, cap: Duration::from_secs(30) };
        prop_assert_eq!(s.delays(seed, 16), s.delays(seed, 16));
    }
}

#[test]
fn jitter_actually_varies() {
    let s = Schedule {
        backoff: Backoff::Constant(Duration::from_secs(1)),
        jitter: Jitter::Full,
        cap: Duration::from_secs(1),
    };
    let d = s.delays(7, 32);
    assert!(
        d.iter().any(|x| *x != d[0]),
        "full jitter spreads delays: {d:?}"
    );
}

/// 1000 requests against a downstream that always fails, 5 attempts each.
async fn storm(budget: Option<RetryBudget>) -> u64 {
    let downstream = Flaky::always_failing(FlakyErrorKind::Transient);
    let mut b = Retry::builder()
        .max_attempts(nz(5))
        .backoff(Backoff::Constant(Duration::from_millis(10)))
        .jitter(Jitter::Full)
        .rng_seed(1);
    if let Some(budget) = budget {
        b = b.budget(budget);
    }
    let retry = b.build();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (retry, downstream) = (retry.clone(), downstream.clone());
            tokio::spawn(async move { retry.call(|| downstream.call()).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    downstream.calls()
}

#[tokio::test(start_paused = true)]
async fn budget_stops_the_retry_storm() {
    let without = storm(None).await;
    let budget = RetryBudget::builder()
        .min_per_sec(1)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let floor = budget.floor();
    let with = storm(Some(budget)).await;
    println!(
        "1000 requests to a dead downstream: {without} attempts without a budget, {with} with a 20% budget (floor {floor})"
    );
    assert_eq!(
        without, 5000,
        "without a budget every request makes all 5 attempts"
    );
    assert!(
        with as f64 <= 1.2 * 1000.0 + floor as f64,
        "{with} attempts"
    );
    assert!(with >= 1000, "every request made its first attempt");
}

#[tokio::test(start_paused = true)]
async fn max_attempts_counts_the_first_call_and_hook_sees_each_retry() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let retry = Retry::builder()
        .max_attempts(nz(3))
        .backoff(Backoff::Linear {
            initial: Duration::from_millis(100),
            step: Duration::from_millis(100),
        })
        .jitter(Jitter::None)
        .on_retry(move |e: &RetryEvent| log.lock().unwrap().push(*e))
        .build();
    let downstream = Flaky::always_failing(FlakyErrorKind::Transient);
    let start = tokio::time::Instant::now();
    assert!(retry.call(|| downstream.call()).await.is_err());
    assert_eq!(downstream.calls(), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            RetryEvent {
                attempt: 1,
                delay: Duration::from_millis(100)
            },
            RetryEvent {
                attempt: 2,
                delay: Duration::from_millis(200)
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_or_gives_up() {
    let retry = Retry::builder()
        .max_attempts(nz(5))
        .backoff(Backoff::Constant(Duration::from_millis(10)))
        .jitter(Jitter::None)
        .max_delay(Duration::from_secs(5))
        .build();
    // "503, Retry-After: 2" twice, then success.
    let downstream = Flaky::failing(2, FlakyErrorKind::Transient);
    let policy = |r: &Result<u64, floodwall_testkit::FlakyError>| match r {
        Ok(_) => Decision::Done,
        Err(_) => Decision::RetryAfter(Duration::from_secs(2)),
    };
    let start = tokio::time::Instant::now();
    assert_eq!(retry.call_with(&policy, || downstream.call()).await, Ok(3));
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(4),
        "waited the server's 2 s twice"
    );

    // A Retry-After beyond max_delay: give up instead of retrying early.
    let downstream = Flaky::failing(2, FlakyErrorKind::Transient);
    let too_long = |r: &Result<u64, floodwall_testkit::FlakyError>| match r {
        Ok(_) => Decision::Done,
        Err(_) => Decision::RetryAfter(Duration::from_secs(60)),
    };
    assert!(
        retry
            .call_with(&too_long, || downstream.call())
            .await
            .is_err()
    );
    assert_eq!(downstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried_and_max_elapsed_bounds_the_call() {
    let retry = Retry::builder()
        .max_attempts(nz(100))
        .backoff(Backoff::Constant(Duration::from_secs(1)))
        .jitter(Jitter::None)
        .max_elapsed(Some(Duration::from_millis(3500)))
        .build();
    let transient_only = |r: &Result<u64, floodwall_testkit::FlakyError>| match r {
        Err(e) if e.kind == FlakyErrorKind::Transient => Decision::Retry,
        _ => Decision::Done,
    };
    let permanent = Flaky::always_failing(FlakyErrorKind::Permanent);
    assert!(
        retry
            .call_with(&transient_only, || permanent.call())
            .await
            .is_err()
    );
    assert_eq!(permanent.calls(), 1);

    let transient = Flaky::always_failing(FlakyErrorKind::Transient);
    let start = tokio::time::Instant::now();
    assert!(
        retry
            .call_with(&transient_only, || transient.call())
            .await
            .is_err()
    );
    // Retries start at 1 s, 2 s, 3 s; one at 4 s would pass 3.5 s.
    assert_eq!(transient.calls(), 4);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn layer_retries_with_cloned_requests() {
    let retry = Retry::builder()
        .max_attempts(nz(4))
        .backoff(Backoff::Constant(Duration::from_millis(5)))
        .build();
    let downstream = Flaky::failing(2, FlakyErrorKind::Transient);
    let mut svc = RetryLayer::new(retry).layer(downstream.clone());
    let answer = ServiceExt::<String>::ready(&mut svc)
        .await
        .unwrap()
        .call("req".to_string())
        .await;
    assert_eq!(answer, Ok(3));
    assert_eq!(downstream.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn requests_the_cloner_refuses_are_sent_once() {
    let retry = Retry::builder()
        .max_attempts(nz(4))
        .backoff(Backoff::Constant(Duration::from_millis(5)))
        .build();
    // "POST" must not be repeated; "GET" may.
    let only_gets = |req: &&'static str| (*req == "GET").then_some(*req);
    let downstream = Flaky::failing(2, FlakyErrorKind::Transient);
    let mut svc = RetryLayer::new(retry)
        .clone_requests_with(only_gets)
        .layer(downstream.clone());
    let post = ServiceExt::<&'static str>::ready(&mut svc)
        .await
        .unwrap()
        .call("POST")
        .await;
    assert!(post.is_err());
    assert_eq!(downstream.calls(), 1, "POST went once");
    let get = ServiceExt::<&'static str>::ready(&mut svc)
        .await
        .unwrap()
        .call("GET")
        .await;
    assert_eq!(get, Ok(3), "GET was retried past the second failure");
}

/// A `Duration::MAX` delay with `max_elapsed` set: the retry would start past the budget, so
/// the call gives up with the last error — no overflow, no panic.
#[tokio::test(start_paused = true)]
async fn an_unbounded_delay_with_max_elapsed_gives_up_without_panicking() {
    let retry = Retry::builder()
        .max_attempts(nz(3))
        .backoff(Backoff::Constant(Duration::MAX))
        .jitter(Jitter::None)
        .max_elapsed(Some(Duration::from_secs(10)))
        .build();
    let downstream = Flaky::always_failing(FlakyErrorKind::Transient);
    assert!(retry.call(|| downstream.call()).await.is_err());
    assert_eq!(downstream.calls(), 1);
}

/// resilience4j's `IntervalFunction.ofRandomized(1 s, randomizedWaitFactor 0.5)` waits
/// uniformly between 0.5 s and 1.5 s; Polly v8's `UseJitter` on a constant 1 s delay, ±25 %:
/// between 0.75 s and 1.25 s. Both spread over their whole range.
#[test]
fn randomized_jitter_spreads_like_resilience4j_and_polly() {
    let second = Duration::from_secs(1);
    for (factor, lo, hi) in [(0.5, 500, 1500), (0.25, 750, 1250)] {
        let s = Schedule {
            backoff: Backoff::Constant(second),
            jitter: Jitter::Randomized { factor },
            cap: Duration::from_secs(10),
        };
        let d = s.delays(42, 2000);
        let (min, max) = (d.iter().min().unwrap(), d.iter().max().unwrap());
        println!("randomized ±{factor}: delays from {min:?} to {max:?}");
        assert!(*min >= Duration::from_millis(lo) && *max <= Duration::from_millis(hi));
        let span = (hi - lo) as f64;
        // Over 2000 draws both ends are approached within 2 % of the range.
        assert!(min.as_millis() as f64 <= lo as f64 + 0.02 * span, "{min:?}");
        assert!(max.as_millis() as f64 >= hi as f64 - 0.02 * span, "{max:?}");
        let mean = d.iter().map(|x| x.as_secs_f64()).sum::<f64>() / d.len() as f64;
        assert!(
            (mean - 1.0).abs() < 0.03,
            "centred on the base delay: {mean}"
        );
    }
}
