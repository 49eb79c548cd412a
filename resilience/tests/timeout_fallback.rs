//! Timeout (plain and layer, per attempt inside a retry) and fallback (plain and layer).

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use floodwall_resilience::fallback::{self, Fallback, FallbackLayer};
use floodwall_resilience::retry::{Backoff, Jitter, Retry, RetryLayer};
use floodwall_resilience::timeout::{Timeout, TimeoutLayer};
use floodwall_resilience::{Error, ErrorLayer};
use floodwall_testkit::{Flaky, FlakyErrorKind, Step};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn timeout_cancels_slow_calls_on_time() {
    let t = Timeout::new(Duration::from_millis(300));
    let slow = Flaky::slow(Duration::from_secs(10));
    let start = Instant::now();
    let r = t.call(|| slow.call()).await;
    assert!(matches!(r, Err(Error::Timeout(e)) if e.after == Duration::from_millis(300)));
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(slow.in_flight(), 0, "the slow call was cancelled");

    let mut svc =
        TimeoutLayer::new(t).layer(ErrorLayer.layer(Flaky::slow(Duration::from_millis(299))));
    assert_eq!(
        ServiceExt::<()>::ready(&mut svc)
            .await
            .unwrap()
            .call(())
            .await,
        Ok(1)
    );
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_inside_retry_and_overall_deadline_outside() {
    // First attempt stalls, second answers at once.
    let downstream = Flaky::scripted([Step::ok().after(Duration::from_secs(60))], Step::ok());
    let retry = Retry::builder()
        .max_attempts(NonZeroU32::new(3).unwrap())
        .backoff(Backoff::Constant(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .build();
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Timeout::new(Duration::from_secs(2))))
        .layer(RetryLayer::new(retry.clone()))
        .layer(TimeoutLayer::new(Timeout::new(Duration::from_millis(500))))
        .layer(ErrorLayer)
        .service(downstream.clone());
    let start = Instant::now();
    let r = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert_eq!(r, Ok(2));
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(600),
        "500 ms attempt + 100 ms backoff"
    );

    // Everything stalls: the overall deadline ends the call.
    let stalled = Flaky::slow(Duration::from_secs(60));
    let mut svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Timeout::new(Duration::from_millis(1200))))
        .layer(RetryLayer::new(retry))
        .layer(TimeoutLayer::new(Timeout::new(Duration::from_millis(500))))
        .layer(ErrorLayer)
        .service(stalled.clone());
    let start = Instant::now();
    let r = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert!(matches!(r, Err(Error::Timeout(e)) if e.after == Duration::from_millis(1200)));
    assert_eq!(start.elapsed(), Duration::from_millis(1200));
    assert_eq!(stalled.calls(), 3);
}

#[tokio::test]
async fn fallback_value_and_handler() {
    let f = fallback::value::<_, &str>(0u64);
    assert_eq!(f.call(|| async { Err("down") }).await, Ok::<_, &str>(0));
    assert_eq!(f.call(|| async { Ok(5) }).await, Ok::<_, &str>(5));

    let only_transient = Fallback::new(|e: floodwall_testkit::FlakyError| async move {
        if e.kind == FlakyErrorKind::Transient {
            Ok(0)
        } else {
            Err(e)
        }
    });
    let down = Flaky::always_failing(FlakyErrorKind::Transient);
    assert_eq!(only_transient.call(|| down.call()).await, Ok(0));
    let bad = Flaky::always_failing(FlakyErrorKind::Permanent);
    assert!(only_transient.call(|| bad.call()).await.is_err());
}

#[tokio::test]
async fn fallback_layer_answers_for_an_open_circuit() {
    let breaker = CircuitBreaker::builder().build().unwrap();
    breaker.force_open();
    let downstream = Flaky::healthy();
    let mut svc = ServiceBuilder::new()
        .layer(FallbackLayer::new(
            |e: Error<floodwall_testkit::FlakyError>| async move {
                match e {
                    Error::CircuitOpen(_) => Ok(u64::MAX),
                    other => Err(other),
                }
            },
        ))
        .layer(CircuitBreakerLayer::new(breaker))
        .layer(ErrorLayer)
        .service(downstream.clone());
    let r = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert_eq!(r.unwrap(), u64::MAX);
    assert_eq!(downstream.calls(), 0);
}
