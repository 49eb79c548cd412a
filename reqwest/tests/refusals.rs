//! A refused or cut request's error, read as a caller reads it: what refused it, for which
//! host, by which named instance, after how many attempts, when to come back — through
//! `ErrorExt::floodwall`, no downcast — and the answer a proxying server gives its own caller.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use floodwall_reqwest::{
    ErrorExt, HostBreaker, HostPipeline, RefusalKind, RetryMiddleware, TimeoutMiddleware,
};
use floodwall_resilience::Pipeline;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, OpenWait, SlidingWindow};
use floodwall_resilience::retry::Backoff;
use reqwest_middleware::ClientBuilder;

mod common;
use common::{dead_host, serve};

/// Opens after two failed calls of two, for 5 s.
fn breaker(host: &str) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name(format!("api:{host}"))
        .sliding_window(SlidingWindow::Count(NonZeroU32::new(2).unwrap()))
        .minimum_calls(2)
        .open_wait(OpenWait::Fixed(Duration::from_secs(5)))
        .build()
        .unwrap()
}

fn retry(attempts: u32) -> floodwall_resilience::retry::Retry {
    floodwall_resilience::retry::Retry::builder()
        .max_attempts(NonZeroU32::new(attempts).unwrap())
        .backoff(Backoff::Constant(Duration::from_millis(1)))
        .build()
}

/// Checks a breaker refusal that came on the third attempt to `host`.
fn check_breaker_refusal(e: &reqwest_middleware::Error, host: &str) {
    let refusal = e.floodwall().expect("a floodwall refusal");
    let text = refusal.to_string();
    let answer = refusal.to_response();
    println!("{text}");
    println!(
        "  proxied as {} retry-after {:?}: {}",
        answer.status(),
        answer.headers().get("retry-after"),
        answer.body()
    );
    assert_eq!(refusal.kind(), RefusalKind::CircuitOpen);
    assert_eq!(refusal.host_key(), Some(host));
    assert_eq!(
        refusal.instance_name(),
        Some(format!("api:{host}").as_str())
    );
    assert_eq!(refusal.attempts(), 3);
    let after = refusal.retry_after().expect("an open breaker says when");
    assert!(
        after > Duration::from_secs(4) && after <= Duration::from_secs(5),
        "{after:?}"
    );
    assert!(refusal.breaker_rejection().is_some());
    assert!(
        text.contains(host) && text.contains("after 3 attempts"),
        "{text}"
    );
    assert!(!text.contains("Some("), "{text}");
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.headers()["retry-after"], "5");
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    assert!(answer.body().contains("urn:floodwall:client:circuit-open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_calls_error_names_kind_host_instance_attempts_and_retry_after() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve(dead_host(calls.clone())).await;
    let host = base.trim_start_matches("http://").to_owned();

    // HostPipeline: attempts 1 and 2 answer 503 and open the breaker; attempt 3 is refused.
    let pipelines = HostPipeline::new(NonZeroUsize::new(16).unwrap(), |host| {
        Pipeline::builder()
            .retry(retry(3))
            .circuit_breaker(breaker(host))
            .build()
    });
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();
    let e = client.get(&base).send().await.unwrap_err();
    assert_eq!(calls.swap(0, Ordering::SeqCst), 2);
    check_breaker_refusal(&e, &host);

    // The middleware stack: the same error, the same fields.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(retry(3)))
        .with(HostBreaker::new(NonZeroUsize::new(16).unwrap(), breaker))
        .build();
    let e = client.get(&base).send().await.unwrap_err();
    assert_eq!(calls.swap(0, Ordering::SeqCst), 2);
    check_breaker_refusal(&e, &host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_request_is_a_504_naming_its_timeout_and_attempts() {
    let app = Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let base = serve(app).await;
    let host = base.trim_start_matches("http://").to_owned();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(retry(2)))
        .with(TimeoutMiddleware::new(Duration::from_millis(50)).name("upstream"))
        .build();
    let e = client.get(&base).send().await.unwrap_err();
    let refusal = e.floodwall().expect("a floodwall refusal");
    println!("{refusal}");
    assert_eq!(refusal.kind(), RefusalKind::TimedOut);
    assert_eq!(refusal.instance_name(), Some("upstream"));
    assert_eq!(refusal.host_key(), Some(host.as_str()));
    assert_eq!(refusal.attempts(), 2);
    assert_eq!(refusal.timed_out_after(), Some(Duration::from_millis(50)));
    assert_eq!(refusal.status(), 504);
    assert_eq!(refusal.to_response().status(), 504);
    assert!(
        refusal.to_string().contains("no answer within 50ms"),
        "{refusal}"
    );
}
