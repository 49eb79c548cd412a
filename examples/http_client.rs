//! A real HTTP client wrapped in floodwall, against a local server that misbehaves.
//!
//! `cargo run --example http_client --features http`
//!
//! The axum server on a loopback port has four routes:
//! - `/flaky` fails with 500 twice in every three calls;
//! - `/stall` answers after 2 s (the client gives each attempt 300 ms);
//! - `/busy` answers 503 with `Retry-After: 1` once, then 200;
//! - `/down` always answers 503.
//!
//! The client is hyper-util's, wrapped (outermost first) in an overall timeout, retry (HTTP
//! policy, idempotent requests only), a circuit breaker (5xx are failures), a bulkhead and a
//! per-attempt timeout. Each outcome and every breaker transition is printed; the program
//! ends on its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::{get, post};
use bytes::Bytes;
use floodwall::nonzero;
use floodwall::resilience::bulkhead::{Bulkhead, BulkheadLayer};
use floodwall::resilience::circuit_breaker::{
    CircuitBreaker, CircuitBreakerLayer, OpenWait, SlidingWindow, Transition,
};
use floodwall::resilience::http::{HttpClassifier, HttpRetryPolicy, IdempotentRequests};
use floodwall::resilience::retry::{Backoff, Jitter, Retry, RetryLayer};
use floodwall::resilience::timeout::{Timeout, TimeoutLayer};
use floodwall::resilience::{Error, ErrorLayer};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

#[derive(Default)]
struct Counters {
    flaky: AtomicU32,
    busy: AtomicU32,
    hits: AtomicU32,
}

async fn serve() -> std::io::Result<SocketAddr> {
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let flaky = move || {
        let c = c.clone();
        async move {
            c.hits.fetch_add(1, Ordering::Relaxed);
            if c.flaky.fetch_add(1, Ordering::Relaxed) % 3 < 2 {
                (StatusCode::INTERNAL_SERVER_ERROR, "flaky failure").into_response()
            } else {
                (StatusCode::OK, "flaky success").into_response()
            }
        }
    };
    let c = counters.clone();
    let busy = move || {
        let c = c.clone();
        async move {
            c.hits.fetch_add(1, Ordering::Relaxed);
            if c.busy.fetch_add(1, Ordering::Relaxed) == 0 {
                let mut r: AxumResponse = (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                r
            } else {
                (StatusCode::OK, "no longer busy").into_response()
            }
        }
    };
    let c = counters.clone();
    let app = Router::new()
        .route("/flaky", get(flaky))
        .route("/busy", get(busy))
        .route(
            "/stall",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "finally"
            }),
        )
        .route(
            "/down",
            get(move || {
                let c = c.clone();
                async move {
                    c.hits.fetch_add(1, Ordering::Relaxed);
                    (StatusCode::SERVICE_UNAVAILABLE, "down")
                }
            }),
        )
        .route(
            "/charge",
            post(|| async { (StatusCode::BAD_GATEWAY, "gateway hiccup") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr = serve().await?;
    println!("flaky server on http://{addr}");

    let breaker = CircuitBreaker::builder()
        .name("local-api")
        .sliding_window(SlidingWindow::Count(nonzero!(10)))
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .open_wait(OpenWait::Fixed(Duration::from_secs(30)))
        .slow_call_duration(None)
        .on_transition(|t: &Transition| println!("  [breaker] {:?} -> {:?}", t.from, t.to))
        .build()?;
    let retry = Retry::builder()
        .max_attempts(nonzero!(3))
        .backoff(Backoff::Exponential {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
        })
        .jitter(Jitter::Full)
        .max_delay(Duration::from_secs(2))
        .on_retry(|e| {
            println!(
                "  [retry] attempt {} failed, next in {:?}",
                e.attempt, e.delay
            )
        })
        .build();
    let bulkhead = Bulkhead::builder()
        .max_concurrent(nonzero!(4))
        .max_wait(Duration::from_millis(500))
        .build();

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut api = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Timeout::new(Duration::from_secs(5))))
        .layer(
            RetryLayer::with_policy(retry, HttpRetryPolicy)
                .clone_requests_with(IdempotentRequests::new()),
        )
        .layer(CircuitBreakerLayer::with_classifier(
            breaker.clone(),
            HttpClassifier,
        ))
        .layer(BulkheadLayer::new(bulkhead))
        .layer(TimeoutLayer::new(Timeout::new(Duration::from_millis(300))))
        .layer(ErrorLayer)
        .service(client);

    let plan = [
        ("GET", "/flaky"),
        ("GET", "/busy"),
        ("GET", "/stall"),
        ("POST", "/charge"),
        ("GET", "/down"),
        ("GET", "/down"),
        ("GET", "/down"),
        ("GET", "/flaky"),
    ];
    for (method, path) in plan {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))?;
        println!("{method} {path}");
        let started = Instant::now();
        let result = api.ready().await?.call(req).await;
        let took = started.elapsed();
        match result {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                println!(
                    "  -> {status} {:?} in {took:.0?}",
                    String::from_utf8_lossy(&body)
                );
            }
            Err(Error::CircuitOpen(r)) => println!(
                "  -> rejected: circuit {:?}, retry after {:?} ({took:.0?})",
                r.state, r.retry_after
            ),
            Err(Error::BulkheadFull(r)) => {
                println!("  -> rejected by the bulkhead: {:?}", r.reason)
            }
            Err(Error::Timeout(t)) => println!("  -> timed out after {:?} ({took:.0?})", t.after),
            Err(Error::Inner(e)) => println!("  -> transport error: {e}"),
            Err(other) => println!("  -> {other}"),
        }
    }
    let snap = breaker.snapshot();
    println!(
        "breaker {:?}: {} calls in window, {} rejected",
        snap.state, snap.calls, snap.not_permitted
    );
    Ok(())
}
