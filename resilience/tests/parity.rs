//! Retry, hedging, bulkhead and error features that resilience4j and Polly users expect:
//! Polly's jitter formulas with an injected random source, failing after the last retryable
//! result, a hedging predicate, bulkhead events and run-time reconfiguration, and the inner
//! error as `source()`. Each test names the anchor and the option it reproduces.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_resilience::Error;
use floodwall_resilience::bulkhead::{Bulkhead, BulkheadEvent, RejectReason};
use floodwall_resilience::hedge::{Hedge, HedgeDelay};
use floodwall_resilience::retry::{Backoff, Decision, Jitter, Retry, RetryError, Schedule};

const MS: fn(u64) -> Duration = Duration::from_millis;

/// Polly v8 `DecorrelatedJitterBackoffV2` (`RetryHelper`), written out independently.
fn polly_v2(initial: Duration, draws: &[f64]) -> Vec<Duration> {
    let mut prev = 0.0f64;
    draws
        .iter()
        .enumerate()
        .map(|(attempt, r)| {
            let t = attempt as f64 + r;
            let next = 2f64.powf(t) * (4.0 * t).sqrt().tanh();
            let d = (next - prev) * (1.0 / 1.4) * initial.as_nanos() as f64;
            prev = next;
            Duration::from_nanos(d as u64)
        })
        .collect()
}

/// Polly `RetryStrategyOptions { BackoffType = Exponential, UseJitter = true }`: the
/// decorrelated jitter V2 formula, driven by an injected `Randomizer`.
#[test]
fn decorrelated_jitter_v2_is_pollys_formula() {
    let initial = MS(200);
    let s = Schedule {
        backoff: Backoff::Exponential {
            initial,
            multiplier: 2.0,
        },
        jitter: Jitter::DecorrelatedV2,
        cap: Duration::from_secs(3600),
    };
    let draws = [0.5, 0.1, 0.9, 0.0, 0.99, 0.3];
    let mut i = 0;
    let ours = s.delays_with(
        || {
            i += 1;
            draws[i - 1]
        },
        draws.len() as u32,
    );
    let theirs = polly_v2(initial, &draws);
    for (a, b) in ours.iter().zip(&theirs) {
        let diff = a.as_nanos().abs_diff(b.as_nanos());
        assert!(diff <= 1, "ours {ours:?}\ntheirs {theirs:?}");
    }
    // The sum law: delays up to n add up to f(t_n) / 1.4 * initial, so the schedule grows
    // like 2^n whatever the draws (no clustering, no run-away).
    let seeded = s.delays(9, 12);
    let total: f64 = seeded.iter().map(|d| d.as_secs_f64()).sum();
    let lo = 2f64.powi(11) * (44f64).sqrt().tanh() / 1.4 * initial.as_secs_f64();
    let hi = 2f64.powi(12) / 1.4 * initial.as_secs_f64();
    assert!(lo <= total && total <= hi, "{total} not in [{lo}, {hi}]");
    println!("V2 delays (r = {draws:?}): {ours:?}");
}

/// resilience4j `IntervalFunction.ofRandomized(interval, randomizationFactor)` and Polly's
/// constant backoff with `UseJitter` (±25 %): `b · (1 − f + 2f·r)` for a draw `r`; the
/// retry's random source is injectable, so the delays are exact.
#[tokio::test(start_paused = true)]
async fn an_injected_random_source_drives_every_jitter() {
    let draws = Arc::new(Mutex::new(vec![0.0, 0.5, 0.999_999_999_999]));
    let source = draws.clone();
    let delays: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let log = delays.clone();
    let retry = Retry::builder()
        .max_attempts(NonZeroU32::new(4).unwrap())
        .backoff(Backoff::Constant(Duration::from_secs(1)))
        .jitter(Jitter::Randomized { factor: 0.25 })
        .random_source(move || source.lock().unwrap().remove(0))
        .on_retry(move |e| log.lock().unwrap().push(e.delay))
        .build();
    let r: Result<(), &str> = retry.call(|| async { Err("503") }).await;
    assert_eq!(r, Err("503"));
    let delays = delays.lock().unwrap().clone();
    assert_eq!(delays[0], MS(750));
    assert_eq!(delays[1], MS(1000));
    assert!(delays[2].abs_diff(MS(1250)) < Duration::from_micros(1));
    assert!(draws.lock().unwrap().is_empty(), "one draw per retry");
}

/// resilience4j `RetryConfig.retryOnResult(..)` with `failAfterMaxAttempts(true)`: when the
/// last attempt's result is still retryable, the call fails (`MaxRetriesExceeded`) and the
/// last result comes with the error.
#[tokio::test(start_paused = true)]
async fn a_result_still_retryable_after_the_last_attempt_fails_the_call() {
    let retry = Retry::builder()
        .max_attempts(NonZeroU32::new(3).unwrap())
        .backoff(Backoff::Constant(MS(10)))
        .build();
    let pending = |r: &Result<&str, ()>| match r {
        Ok("pending") => Decision::Retry,
        _ => Decision::Done,
    };
    let calls = AtomicU32::new(0);
    let out = retry
        .try_call_with(&pending, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok("pending") }
        })
        .await;
    assert_eq!(
        out,
        Err(RetryError::Exhausted {
            attempts: 3,
            last: "pending"
        })
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(out.unwrap_err().into_last_result(), Some("pending"));

    // A result that turns good in time succeeds; an error is the error.
    let n = AtomicU32::new(0);
    let out = retry
        .try_call_with(&pending, || {
            let i = n.fetch_add(1, Ordering::SeqCst);
            async move { Ok(if i < 1 { "pending" } else { "done" }) }
        })
        .await;
    assert_eq!(out, Ok("done"));
    let out = retry.try_call_with(&pending, || async { Err(()) }).await;
    assert_eq!(out, Err(RetryError::Failed(())));
    // call_with keeps returning the last result as it is.
    let out = retry.call_with(&pending, || async { Ok("pending") }).await;
    assert_eq!(out, Ok("pending"));
}

/// Polly `HedgingStrategyOptions.ShouldHandle`: only handled outcomes (here a transient
/// error or a 503) start a hedge; an unhandled error is the answer at once.
#[tokio::test(start_paused = true)]
async fn only_handled_outcomes_start_a_hedge() {
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(Duration::from_secs(60)))
        .max_hedged_attempts(2)
        .build();
    let transient = |r: &Result<u16, &str>| matches!(r, Err("transient") | Ok(503));

    let calls = AtomicU32::new(0);
    let out = hedge
        .call_with(&transient, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<u16, _>("bad request") }
        })
        .await;
    assert_eq!(out, Err("bad request"));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not handled: no hedge");
    assert_eq!(hedge.hedges_started(), 0);

    let calls = AtomicU32::new(0);
    let out = hedge
        .call_with(&transient, || {
            let i = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match i {
                    0 => Err("transient"),
                    1 => Ok(503),
                    _ => Ok(200),
                }
            }
        })
        .await;
    assert_eq!(out, Ok(200));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two handled outcomes, two hedges"
    );
    assert_eq!(hedge.hedges_started(), 2);

    // Every attempt handled: the last outcome is returned.
    let out = hedge.call_with(&transient, || async { Ok(503) }).await;
    assert_eq!(out, Ok(503));
}

/// resilience4j `Bulkhead.getEventPublisher()`: `onCallPermitted`, `onCallRejected`,
/// `onCallFinished`, in order.
#[tokio::test]
async fn bulkhead_events_follow_resilience4j() {
    let b = Bulkhead::builder()
        .max_concurrent(NonZeroUsize::new(1).unwrap())
        .build();
    let seen: Arc<Mutex<Vec<BulkheadEvent>>> = Arc::default();
    let log = seen.clone();
    b.events()
        .on_event(move |e: &BulkheadEvent| log.lock().unwrap().push(*e));
    let held = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(held);
    assert_eq!(b.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            BulkheadEvent::Permitted,
            BulkheadEvent::Rejected(RejectReason::Full),
            BulkheadEvent::Finished,
            BulkheadEvent::Permitted,
            BulkheadEvent::Finished,
        ]
    );
}

/// resilience4j `Bulkhead.changeConfig(..)`: raising `maxConcurrentCalls` admits a waiter
/// at once; lowering it admits no one until the calls in flight fall below the new limit;
/// `maxWaitDuration` changes for later callers.
#[tokio::test(start_paused = true)]
async fn bulkhead_limits_change_at_run_time() {
    let b = Bulkhead::builder()
        .max_concurrent(NonZeroUsize::new(1).unwrap())
        .max_wait(Duration::from_secs(10))
        .build();
    let first = b.acquire_owned().await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire_owned().await })
    };
    tokio::time::sleep(MS(100)).await;
    assert_eq!(b.waiting(), 1);
    b.set_max_concurrent(NonZeroUsize::new(2).unwrap());
    let second = tokio::time::timeout(MS(1), waiter)
        .await
        .expect("raising the limit wakes the waiter")
        .unwrap()
        .unwrap();
    assert_eq!((b.in_flight(), b.max_concurrent()), (2, 2));

    b.set_max_concurrent(NonZeroUsize::new(1).unwrap());
    b.set_max_wait(Duration::ZERO);
    assert_eq!(b.try_acquire().unwrap_err().max_concurrent, 1);
    drop(first);
    let r = b.acquire().await.unwrap_err();
    assert_eq!(r.reason, RejectReason::Full, "1 in flight = the new limit");
    drop(second);
    assert!(b.try_acquire().is_ok());
}

/// `Error<E>` exposes the call's own error through `source()`, so error reporters walking
/// the chain (anyhow, eyre, tracing) reach it.
#[test]
fn the_inner_error_is_the_source() {
    let e: Error<std::io::Error> = Error::Inner(std::io::Error::other("disk full"));
    let source = std::error::Error::source(&e).unwrap();
    assert_eq!(source.to_string(), "disk full");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
    let t: Error<std::io::Error> =
        Error::Timeout(floodwall_resilience::timeout::Elapsed { after: MS(5) });
    assert!(std::error::Error::source(&t).is_none());
}
