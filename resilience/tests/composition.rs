//! Five floodwall layers in one `tower::ServiceBuilder` around an HTTP-like service, with one
//! error type to match on: `floodwall_resilience::Error<E>`.
//!
//! Recommended order, outermost first (also in the crate docs):
//! fallback → overall timeout → retry → circuit breaker → bulkhead → per-attempt timeout →
//! `ErrorLayer` → service.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use floodwall_resilience::bulkhead::{Bulkhead, BulkheadLayer};
use floodwall_resilience::circuit_breaker::{
    CircuitBreaker, CircuitBreakerLayer, OpenWait, SlidingWindow, State,
};
use floodwall_resilience::retry::{Backoff, Decision, Jitter, Retry, RetryLayer};
use floodwall_resilience::timeout::{Timeout, TimeoutLayer};
use floodwall_resilience::{Error, ErrorLayer};
use floodwall_testkit::{Flaky, FlakyError, FlakyErrorKind, Step};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// An HTTP-ish request and response, as a client middleware stack sees them.
#[derive(Debug, Clone, PartialEq)]
struct Request {
    method: &'static str,
    path: &'static str,
}

#[derive(Debug, Clone, PartialEq)]
struct Response {
    status: u16,
}

/// The downstream: a scripted flaky service answering `Response { status: 200 }`.
fn http_service(
    flaky: Flaky,
) -> impl Service<Request, Response = Response, Error = FlakyError, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(move |_req: Request| {
        let call = flaky.call();
        async move { call.await.map(|_| Response { status: 200 }) }
    })
}

/// Retry transient downstream failures and per-attempt timeouts; never a rejection.
fn retry_policy(r: &Result<Response, Error<FlakyError>>) -> Decision {
    match r {
        Err(Error::Inner(e)) if e.kind == FlakyErrorKind::Transient => Decision::Retry,
        Err(Error::Timeout(_)) => Decision::Retry,
        _ => Decision::Done,
    }
}

struct Stack {
    breaker: CircuitBreaker,
    bulkhead: Bulkhead,
    retry: Retry,
}

impl Stack {
    fn new() -> Self {
        Stack {
            breaker: CircuitBreaker::builder()
                .sliding_window(SlidingWindow::Count(NonZeroU32::new(4).unwrap()))
                .minimum_calls(4)
                .open_wait(OpenWait::Fixed(Duration::from_secs(30)))
                .slow_call_duration(None)
                .build()
                .unwrap(),
            bulkhead: Bulkhead::builder()
                .max_concurrent(NonZeroUsize::new(2).unwrap())
                .build(),
            retry: Retry::builder()
                .max_attempts(NonZeroU32::new(3).unwrap())
                .backoff(Backoff::Constant(Duration::from_millis(50)))
                .jitter(Jitter::None)
                .build(),
        }
    }

    fn around<S>(
        &self,
        svc: S,
    ) -> impl Service<Request, Response = Response, Error = Error<FlakyError>, Future: Send>
    + Clone
    + Send
    + 'static
    where
        S: Service<Request, Response = Response, Error = FlakyError> + Clone + Send + 'static,
        S::Future: Send,
    {
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(Timeout::new(Duration::from_secs(5))))
            .layer(RetryLayer::with_policy(self.retry.clone(), retry_policy))
            .layer(CircuitBreakerLayer::new(self.breaker.clone()))
            .layer(BulkheadLayer::new(self.bulkhead.clone()))
            .layer(TimeoutLayer::new(Timeout::new(Duration::from_millis(200))))
            .layer(ErrorLayer)
            .service(svc)
    }
}

/// What a user writes: one `match` over one error type.
fn describe(r: &Result<Response, Error<FlakyError>>) -> String {
    match r {
        Ok(resp) => format!("HTTP {}", resp.status),
        Err(Error::Inner(e)) => format!("downstream failed: {:?}", e.kind),
        Err(Error::Timeout(e)) => format!("timed out after {:?}", e.after),
        Err(Error::CircuitOpen(r)) => format!("circuit open, retry after {:?}", r.retry_after),
        Err(Error::BulkheadFull(r)) => format!("bulkhead full: {:?}", r.reason),
        Err(other) => format!("other: {other}"),
    }
}

const GET: Request = Request {
    method: "GET",
    path: "/accounts/42",
};

#[tokio::test(start_paused = true)]
async fn a_transient_failure_and_a_stall_are_retried_through_the_stack() {
    let stack = Stack::new();
    let downstream = Flaky::scripted(
        [
            Step::fail(FlakyErrorKind::Transient),
            Step::ok().after(Duration::from_secs(10)), // stalls: cut at 200 ms
        ],
        Step::ok(),
    );
    let mut svc = stack.around(http_service(downstream.clone()));
    let start = Instant::now();
    let r = svc.ready().await.unwrap().call(GET).await;
    assert_eq!(describe(&r), "HTTP 200");
    assert_eq!(downstream.calls(), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(50 + 200 + 50));
    assert_eq!(GET.method, "GET");
    assert_eq!(GET.path, "/accounts/42");
}

#[tokio::test(start_paused = true)]
async fn a_dead_downstream_opens_the_circuit_and_later_calls_are_shed() {
    let stack = Stack::new();
    let downstream = Flaky::always_failing(FlakyErrorKind::Transient);
    let mut svc = stack.around(http_service(downstream.clone()));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = svc.ready().await.unwrap().call(GET).await;
        seen.push(describe(&r));
    }
    assert_eq!(stack.breaker.state(), State::Open);
    assert_eq!(seen[0], "downstream failed: Transient");
    assert!(seen[1].starts_with("circuit open"), "{seen:?}");
    assert!(seen[2].starts_with("circuit open"), "{seen:?}");
    assert_eq!(
        downstream.calls(),
        4,
        "3 attempts, then the 4th opened the circuit"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_and_a_permanent_error_are_not_retried() {
    let stack = Stack::new();
    let slow = Flaky::slow(Duration::from_millis(150));
    let svc = stack.around(http_service(slow.clone()));
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut s = svc.clone();
            tokio::spawn(async move {
                let r = s.ready().await.unwrap().call(GET).await;
                describe(&r)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for c in calls {
        outcomes.push(c.await.unwrap());
    }
    outcomes.sort();
    assert_eq!(outcomes, ["HTTP 200", "HTTP 200", "bulkhead full: Full"]);
    assert_eq!(slow.calls(), 2);

    let bad = Flaky::always_failing(FlakyErrorKind::Permanent);
    let mut svc = stack.around(http_service(bad.clone()));
    let r = svc.ready().await.unwrap().call(GET).await;
    assert_eq!(describe(&r), "downstream failed: Permanent");
    assert_eq!(bad.calls(), 1);
}

#[test]
fn the_stack_error_converts_to_a_tower_box_error() {
    let e: Error<FlakyError> = Error::Timeout(floodwall_resilience::timeout::Elapsed {
        after: Duration::from_millis(200),
    });
    let boxed: BoxError = Box::new(e);
    assert_eq!(boxed.to_string(), "call timed out after 200ms");
}
