//! Metrics on the paths people use: a breaker admitted through its permits (`HostBreaker`,
//! the `Pipeline` stage, the tower layer) and a retry through the tower `RetryLayer` measure
//! their calls (`floodwall_circuit_breaker_call_duration_seconds`,
//! `floodwall_retry_call_duration_seconds`), as the plain `call` APIs do.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use floodwall::reqwest::HostBreaker;
use floodwall::resilience::circuit_breaker::CircuitBreaker;
use floodwall::resilience::retry::{Backoff, Retry, RetryLayer};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Samples recorded in the histogram `name` labelled `label=value`.
fn samples<A, B>(
    snapshot: &[(metrics_util::CompositeKey, A, B, DebugValue)],
    name: &str,
    label: (&str, &str),
) -> usize {
    snapshot
        .iter()
        .filter(|(key, ..)| {
            let k = key.key();
            k.name() == name
                && k.labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .map(|(.., v)| match v {
            DebugValue::Histogram(h) => h.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn host_breaker_and_retry_layer_measure_every_call() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (breaker_calls, retried) = runtime.block_on(async {
        // 20 requests through HostBreaker against a local server.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().route("/", get(|| async { StatusCode::OK }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let breakers = HostBreaker::new(NonZeroUsize::new(16).unwrap(), |_| {
            CircuitBreaker::builder().name("upstream").build().unwrap()
        });
        let client = floodwall::reqwest::reqwest_middleware::ClientBuilder::new(
            floodwall::reqwest::reqwest::Client::new(),
        )
        .with(breakers)
        .build();
        for _ in 0..20 {
            assert!(
                client
                    .get(&base)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .is_success()
            );
        }
        // 10 calls through the tower RetryLayer, each failing once and then succeeding.
        let failures = Arc::new(AtomicU32::new(0));
        let inner = service_fn(move |x: u32| {
            let n = failures.fetch_add(1, Ordering::SeqCst);
            async move {
                match n % 2 {
                    0 => Err(std::io::Error::other("once")),
                    _ => Ok(x),
                }
            }
        });
        let retry = Retry::builder()
            .name("upstream")
            .max_attempts(NonZeroU32::new(3).unwrap())
            .backoff(Backoff::Constant(Duration::from_millis(1)))
            .build();
        let mut svc = RetryLayer::new(retry).layer(inner);
        for i in 0..10 {
            let svc = svc.ready().await.unwrap();
            assert_eq!(svc.call(i).await.unwrap(), i);
        }
        (20, 10)
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let breaker = samples(
        &snapshot,
        "floodwall_circuit_breaker_call_duration_seconds",
        ("breaker", "upstream"),
    );
    let retry = samples(
        &snapshot,
        "floodwall_retry_call_duration_seconds",
        ("retry", "upstream"),
    );
    println!(
        "HostBreaker: {breaker} durations for {breaker_calls} requests; RetryLayer: {retry} durations for {retried} calls"
    );
    assert_eq!(breaker, breaker_calls);
    assert_eq!(retry, retried);
}
