//! The plain-API pipeline: stages in the recommended order, one error type.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use floodwall_resilience::bulkhead::{Bulkhead, RejectReason};
use floodwall_resilience::circuit_breaker::{CircuitBreaker, Outcome, SlidingWindow, State};
use floodwall_resilience::retry::{Backoff, Jitter, Retry};
use floodwall_resilience::{Error, Pipeline};
use floodwall_testkit::{Flaky, FlakyErrorKind, Step};
use tokio::time::Instant;

fn retry(attempts: u32) -> Retry {
    Retry::builder()
        .max_attempts(NonZeroU32::new(attempts).unwrap())
        .backoff(Backoff::Constant(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .build()
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(NonZeroU32::new(4).unwrap()))
        .minimum_calls(4)
        .slow_call_duration(None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn stalls_are_cut_per_attempt_and_retried() {
    let p = Pipeline::builder()
        .timeout(Duration::from_secs(5))
        .retry(retry(3))
        .circuit_breaker(breaker())
        .attempt_timeout(Duration::from_millis(200))
        .build();
    let downstream = Flaky::scripted(
        [
            Step::ok().after(Duration::from_secs(60)),
            Step::fail(FlakyErrorKind::Transient),
        ],
        Step::ok(),
    );
    let start = Instant::now();
    assert_eq!(p.call(|| downstream.call()).await, Ok(3));
    assert_eq!(start.elapsed(), Duration::from_millis(200 + 100 + 100));
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_not_retried_and_the_deadline_holds() {
    let b = breaker();
    let p = Pipeline::builder()
        .retry(retry(10))
        .circuit_breaker(b.clone())
        .build();
    let dead = Flaky::always_failing(FlakyErrorKind::Transient);
    let r = p.call(|| dead.call()).await;
    assert!(matches!(r, Err(Error::CircuitOpen(_))), "{r:?}");
    assert_eq!(
        dead.calls(),
        4,
        "4 failures opened the circuit; the 5th attempt was shed"
    );
    assert_eq!(b.state(), State::Open);

    let p = Pipeline::builder()
        .timeout(Duration::from_millis(250))
        .retry(retry(10))
        .build();
    let slow = Flaky::slow(Duration::from_secs(1));
    let start = Instant::now();
    let r = p.call(|| slow.call()).await;
    assert!(matches!(r, Err(Error::Timeout(e)) if e.after == Duration::from_millis(250)));
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_rejects_through_the_pipeline() {
    let bh = Bulkhead::builder()
        .max_concurrent(NonZeroUsize::new(1).unwrap())
        .build();
    let p = Pipeline::builder()
        .retry(retry(3))
        .bulkhead(bh.clone())
        .build();
    let _held = bh.try_acquire().unwrap();
    let downstream = Flaky::healthy();
    let r = p.call(|| downstream.call()).await;
    assert!(matches!(r, Err(Error::BulkheadFull(b)) if b.reason == RejectReason::Full));
    assert_eq!(downstream.calls(), 0);
}

/// resilience4j's `CircuitBreakerConfig.recordResult(Predicate)` ("evaluates if a result
/// should be recorded as a failure"), Polly's `ShouldHandle` on results: a classifier makes
/// an `Ok(503)` count as a failure, so the breaker opens on answers that are failures in
/// disguise; without it the same answers leave it closed.
#[tokio::test(start_paused = true)]
async fn a_classifier_counts_an_ok_503_as_a_failure() {
    let classified = breaker();
    let p = Pipeline::builder()
        .circuit_breaker(classified.clone())
        .build();
    let is_failure = |r: &Result<u16, &str>| match r {
        Ok(status) if *status >= 500 => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    for _ in 0..4 {
        let r = p
            .call_classified(is_failure, || async { Ok::<u16, &str>(503) })
            .await;
        assert_eq!(r, Ok(503), "the answer itself is passed on");
    }
    assert_eq!(classified.state(), State::Open);
    let refused = p
        .call_classified(is_failure, || async { Ok::<u16, &str>(200) })
        .await;
    assert!(matches!(refused, Err(Error::CircuitOpen(_))), "{refused:?}");

    let unclassified = breaker();
    let p = Pipeline::builder()
        .circuit_breaker(unclassified.clone())
        .build();
    for _ in 0..4 {
        let _ = p.call(|| async { Ok::<u16, &str>(503) }).await;
    }
    assert_eq!(
        unclassified.state(),
        State::Closed,
        "by default an Ok is a success"
    );
}

/// resilience4j's `ignoreExceptions` ("neither count as a failure nor success"): errors the
/// classifier marks `Ignored` (a 404 that says nothing of the downstream's health) leave the
/// breaker closed, where the same errors unclassified open it.
#[tokio::test(start_paused = true)]
async fn ignored_errors_do_not_count() {
    let b = breaker();
    let p = Pipeline::builder().circuit_breaker(b.clone()).build();
    let ignore_not_found = |r: &Result<u16, &str>| match r {
        Err("not found") => Outcome::Ignored,
        Err(_) => Outcome::Failure,
        Ok(_) => Outcome::Success,
    };
    for _ in 0..10 {
        let r = p
            .call_classified(ignore_not_found, || async { Err::<u16, &str>("not found") })
            .await;
        assert_eq!(r, Err(Error::Inner("not found")));
    }
    assert_eq!(b.state(), State::Closed);
    let b = breaker();
    let p = Pipeline::builder().circuit_breaker(b.clone()).build();
    for _ in 0..4 {
        let _ = p.call(|| async { Err::<u16, &str>("not found") }).await;
    }
    assert_eq!(
        b.state(),
        State::Open,
        "unclassified, every Err is a failure"
    );
}

#[test]
fn map_inner_maps_the_calls_own_error_and_keeps_rejections() {
    let e: Error<u32> = Error::Inner(21);
    assert_eq!(e.inner(), Some(&21));
    assert_eq!(e.map_inner(|v| v * 2), Error::Inner(42));
    let t: Error<u32> = Error::Timeout(floodwall_resilience::timeout::Elapsed {
        after: Duration::from_millis(5),
    });
    let mapped: Error<String> = t.clone().map_inner(|v| v.to_string());
    assert!(matches!(mapped, Error::Timeout(e) if e.after == Duration::from_millis(5)));
    assert_eq!(t.inner(), None);
}

/// The same script through `call` and through a loop driven with `start`/`admit`/`run`/
/// `next_delay` inside `bounded`: same results, same attempts, same time taken — a stall cut
/// by the attempt timeout, a transient error retried, an open breaker refused — and the
/// overall bound cuts the driven loop as it cuts `call`.
#[tokio::test(start_paused = true)]
async fn a_call_driven_step_by_step_behaves_as_call() {
    use floodwall_resilience::pipeline::RetryFailures;
    let script = || {
        Flaky::scripted(
            [
                Step::ok().after(Duration::from_secs(60)),
                Step::fail(FlakyErrorKind::Transient),
            ],
            Step::ok(),
        )
    };
    let pipeline = |overall: u64| {
        Pipeline::builder()
            .timeout(Duration::from_millis(overall))
            .retry(retry(3))
            .circuit_breaker(breaker())
            .bulkhead(
                Bulkhead::builder()
                    .max_concurrent(NonZeroUsize::new(1).unwrap())
                    .build(),
            )
            .attempt_timeout(Duration::from_millis(200))
            .build()
    };
    fn classify(r: &Result<u64, floodwall_testkit::FlakyError>) -> Outcome {
        if r.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
    async fn driven(
        p: &Pipeline,
        downstream: &Flaky,
    ) -> Result<u64, Error<floodwall_testkit::FlakyError>> {
        p.bounded(async {
            let mut call = p.start();
            loop {
                let result = match call.admit().await {
                    Ok(admitted) => admitted.run(downstream.call(), classify).await,
                    Err(rejected) => Err(rejected),
                };
                match call.next_delay(&RetryFailures, &result) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => break result,
                }
            }
        })
        .await
    }
    for overall in [5_000, 300] {
        let (p, downstream) = (pipeline(overall), script());
        let start = Instant::now();
        let by_call = p.call(|| downstream.call()).await;
        let (call_time, call_calls) = (start.elapsed(), downstream.calls());
        let (p, downstream) = (pipeline(overall), script());
        let start = Instant::now();
        let by_steps = driven(&p, &downstream).await;
        println!(
            "overall {overall} ms: call {by_call:?} in {call_time:?} after {call_calls} calls; \
             driven {by_steps:?} in {:?} after {} calls",
            start.elapsed(),
            downstream.calls()
        );
        assert_eq!(format!("{by_call:?}"), format!("{by_steps:?}"));
        assert_eq!(
            (start.elapsed(), downstream.calls()),
            (call_time, call_calls)
        );
        if overall == 300 {
            assert!(
                matches!(by_steps, Err(Error::Timeout(e)) if e.after == Duration::from_millis(300))
            );
        } else {
            assert_eq!(by_steps.unwrap(), 3);
        }
    }
    // An open breaker refuses at `admit`, before the attempt is made.
    let b = breaker();
    b.force_open();
    let p = Pipeline::builder().circuit_breaker(b).build();
    let admitted = p.start().admit::<()>().await;
    assert!(matches!(admitted, Err(Error::CircuitOpen(_))));
}
