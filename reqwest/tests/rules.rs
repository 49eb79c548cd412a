//! The rules results are judged by: by default a host's breaker ignores a `404`, a `429` and
//! the stack's own full bulkhead (none is the host's failing), and a caller's own breaker and
//! retry rules replace the defaults — through the middleware stack and through `HostPipeline`.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use floodwall_reqwest::{
    ErrorExt, HostBreaker, HostBulkhead, HostPipeline, RefusalKind, RetryMiddleware, host_outcome,
    is_retryable_error, is_retryable_response,
};
use floodwall_resilience::Pipeline;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, Outcome, SlidingWindow, State};
use floodwall_resilience::retry::{Backoff, Decision};
use reqwest_middleware::ClientBuilder;

mod common;
use common::serve;

/// Opens when the last 4 counted calls all failed.
fn breaker(host: &str) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name(format!("api:{host}"))
        .sliding_window(SlidingWindow::Count(NonZeroU32::new(4).unwrap()))
        .minimum_calls(4)
        .build()
        .unwrap()
}

fn retry() -> floodwall_resilience::retry::Retry {
    floodwall_resilience::retry::Retry::builder()
        .max_attempts(NonZeroU32::new(3).unwrap())
        .backoff(Backoff::Constant(Duration::from_millis(1)))
        .build()
}

/// `/missing` answers 404, `/busy` 429, `/slow` 200 after 300 ms, `/early` 425 on every other
/// call (then 200); counts `/early` calls.
fn app(early: Arc<AtomicU32>) -> Router {
    Router::new()
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/busy", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "ok"
            }),
        )
        .route(
            "/early",
            get(move || {
                let n = early.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n % 2 {
                        0 => StatusCode::from_u16(425).unwrap(),
                        _ => StatusCode::OK,
                    }
                }
            }),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_breaker_ignores_404_429_and_a_full_bulkhead() {
    let base = serve(app(Arc::default())).await;
    let host = base.trim_start_matches("http://").to_owned();
    let breakers = HostBreaker::new(NonZeroUsize::new(16).unwrap(), breaker);
    let registry = breakers.registry().clone();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(breakers)
        .with(HostBulkhead::per_host(
            NonZeroUsize::new(16).unwrap(),
            NonZeroUsize::MIN,
        ))
        .build();
    for path in ["missing", "busy"] {
        for _ in 0..6 {
            let status = client.get(format!("{base}/{path}")).send().await.unwrap();
            assert!(status.status().is_client_error());
        }
    }
    // One request holds the host's only bulkhead slot; six more are refused by the bulkhead.
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/slow"));
        async move { client.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refused = 0;
    for _ in 0..6 {
        let e = client.get(format!("{base}/slow")).send().await.unwrap_err();
        refused += u32::from(e.floodwall().unwrap().kind() == RefusalKind::BulkheadFull);
    }
    assert_eq!(slow.await.unwrap(), 200);
    let snapshot = registry.get(&host).snapshot();
    println!(
        "6 × 404, 6 × 429, {refused} bulkhead refusals: breaker {}, {} calls counted, {} failures",
        snapshot.state, snapshot.calls, snapshot.failures
    );
    assert_eq!(refused, 6);
    assert_eq!(snapshot.state, State::Closed);
    assert_eq!(snapshot.failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_breaker_rule_counts_what_the_default_ignores() {
    let base = serve(app(Arc::default())).await;
    let host = base.trim_start_matches("http://").to_owned();
    // An API that answers 404 only when its index is broken.
    let rule = |r: Result<&reqwest::Response, &reqwest_middleware::Error>| match r {
        Ok(resp) if resp.status() == StatusCode::NOT_FOUND => Outcome::Failure,
        other => host_outcome(other),
    };
    let breakers = HostBreaker::new(NonZeroUsize::new(16).unwrap(), breaker).classify(rule);
    let registry = breakers.registry().clone();
    let pipelines = HostPipeline::new(NonZeroUsize::new(16).unwrap(), |host| {
        Pipeline::builder().circuit_breaker(breaker(host)).build()
    })
    .classify(rule);
    let peek = pipelines.clone();
    let stack = ClientBuilder::new(reqwest::Client::new())
        .with(breakers)
        .build();
    let pipeline = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();
    for client in [&stack, &pipeline] {
        for _ in 0..4 {
            let _ = client.get(format!("{base}/missing")).send().await;
        }
        let e = client
            .get(format!("{base}/missing"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.floodwall().unwrap().kind(), RefusalKind::CircuitOpen);
    }
    let states = (
        registry.get(&host).state(),
        peek.peek(&host).unwrap().circuit_breaker().unwrap().state(),
    );
    println!(
        "4 × 404 counted as failures: stack {}, HostPipeline {}",
        states.0, states.1
    );
    assert_eq!(states, (State::Open, State::Open));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_retry_rule_retries_what_the_default_does_not() {
    let early = Arc::new(AtomicU32::new(0));
    let base = serve(app(early.clone())).await;
    let url = format!("{base}/early");
    // Also retry "425 Too Early".
    let rule = |r: Result<&reqwest::Response, &reqwest_middleware::Error>| match r {
        Ok(resp) if resp.status().as_u16() == 425 => Decision::Retry,
        Ok(resp) => is_retryable_response(resp),
        Err(e) => is_retryable_error(e),
    };
    let plain = ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(retry()))
        .build();
    let stack = ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(retry()).when(rule))
        .build();
    let pipeline = ClientBuilder::new(reqwest::Client::new())
        .with(
            HostPipeline::new(NonZeroUsize::new(16).unwrap(), |_| {
                Pipeline::builder().retry(retry()).build()
            })
            .retry_when(rule),
        )
        .build();
    let mut seen = Vec::new();
    for (shape, client) in [
        ("default", plain),
        ("stack", stack),
        ("HostPipeline", pipeline),
    ] {
        early.store(0, Ordering::SeqCst);
        let status = client.get(&url).send().await.unwrap().status().as_u16();
        seen.push((shape, status, early.load(Ordering::SeqCst)));
    }
    println!("(client, status, calls): {seen:?}");
    assert_eq!(
        seen,
        [
            ("default", 425, 1),
            ("stack", 200, 2),
            ("HostPipeline", 200, 2)
        ]
    );
}
