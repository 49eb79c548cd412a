//! `HostPipeline` against local axum servers these tests start: it retries as `Retry` does
//! (a `503` retried, a `POST` only with an `Idempotency-Key`), and a dead host's breaker
//! opens and sheds that host's requests while another host answers.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use floodwall_reqwest::{FloodwallError, HostPipeline};
use floodwall_resilience::Pipeline;
use floodwall_resilience::bulkhead::Bulkhead;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow};
use floodwall_resilience::retry::{Backoff, Retry};
use reqwest_middleware::ClientBuilder;

mod common;
use common::{dead_host, live_host, serve};

/// Retry (3 attempts), a breaker judging the last `window` calls, a bulkhead of 8 and an
/// attempt timeout, per host.
fn pipelines(window: u32) -> HostPipeline {
    HostPipeline::new(NonZeroUsize::new(1024).unwrap(), move |host| {
        Pipeline::builder()
            .retry(
                Retry::builder()
                    .max_attempts(NonZeroU32::new(3).unwrap())
                    .backoff(Backoff::Constant(Duration::from_millis(1)))
                    .build(),
            )
            .circuit_breaker(
                CircuitBreaker::builder()
                    .name(format!("api:{host}"))
                    .sliding_window(SlidingWindow::Count(NonZeroU32::new(window).unwrap()))
                    .minimum_calls(window)
                    .build()
                    .unwrap(),
            )
            .bulkhead(
                Bulkhead::builder()
                    .max_concurrent(NonZeroUsize::new(8).unwrap())
                    .build(),
            )
            .attempt_timeout(Duration::from_secs(5))
            .build()
    })
}

/// Answers `503` (with `Retry-After: 0`) to every other request, `200` to the rest; counts.
fn every_other(calls: Arc<AtomicU32>) -> Router {
    let handler = move || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n.is_multiple_of(2) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "0")],
                    "busy",
                )
            } else {
                (StatusCode::OK, [("retry-after", "0")], "ok")
            }
        }
    };
    Router::new().route("/", get(handler.clone()).post(handler))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_pipeline_retries_idempotent_and_keyed_requests_only() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve(every_other(calls.clone())).await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines(100))
        .build();
    let mut seen = Vec::new();
    let resp = client.get(&base).send().await.unwrap();
    seen.push((
        "GET",
        resp.status().as_u16(),
        calls.swap(0, Ordering::SeqCst),
    ));
    let resp = client.post(&base).body("{}").send().await.unwrap();
    seen.push((
        "POST",
        resp.status().as_u16(),
        calls.swap(0, Ordering::SeqCst),
    ));
    let resp = client
        .post(&base)
        .header("idempotency-key", "\"k1\"")
        .body("{}")
        .send()
        .await
        .unwrap();
    seen.push((
        "POST keyed",
        resp.status().as_u16(),
        calls.swap(0, Ordering::SeqCst),
    ));
    println!("(request, status, origin calls): {seen:?}");
    assert_eq!(
        seen,
        [("GET", 200, 2), ("POST", 503, 1), ("POST keyed", 200, 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_pipeline_sheds_it_while_another_host_answers() {
    let dead_calls = Arc::new(AtomicU32::new(0));
    let dead = serve(dead_host(dead_calls.clone())).await;
    let live = serve(live_host()).await;
    let pipelines = pipelines(4);
    let registry = pipelines.registry().clone();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();

    let mut shed = 0;
    for _ in 0..5 {
        match client.get(&dead).send().await {
            Err(reqwest_middleware::Error::Middleware(e))
                if matches!(
                    e.downcast_ref::<FloodwallError>(),
                    Some(FloodwallError::CircuitOpen(_))
                ) =>
            {
                shed += 1
            }
            other => assert_eq!(other.unwrap().status(), 503),
        }
    }
    let reached = dead_calls.load(Ordering::SeqCst);
    let live_status = client.get(&live).send().await.unwrap().status();
    println!(
        "dead host: {reached} requests reached it, {shed} of 5 calls shed; live host answered {live_status}; {} pipelines",
        registry.len()
    );
    assert_eq!(reached, 4, "the breaker opened after its 4-call window");
    assert!(shed >= 3, "once open, the dead host's calls are shed");
    assert_eq!(live_status, 200);
    assert_eq!(registry.len(), 2, "one pipeline per host");
}
