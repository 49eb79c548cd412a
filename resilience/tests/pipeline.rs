//! The plain-API pipeline: stages in the recommended order, one error type.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use floodwall_resilience::bulkhead::{Bulkhead, RejectReason};
use floodwall_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, State};
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
