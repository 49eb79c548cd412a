//! `HostPipeline`'s own stages beyond the host's `Pipeline`: a rate limit that counts every
//! attempt, hedging of idempotent requests, and a fallback answer — on local axum servers.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};
use floodwall_reqwest::{ErrorExt, HostPipeline, HostRateLimit};
use floodwall_resilience::Pipeline;
use floodwall_resilience::circuit_breaker::CircuitBreaker;
use floodwall_resilience::hedge::{Hedge, HedgeDelay};
use floodwall_resilience::retry::{Backoff, Jitter, Retry};
use reqwest_middleware::ClientBuilder;

mod common;
use common::serve;

fn retry(attempts: u32) -> Retry {
    Retry::builder()
        .max_attempts(NonZeroU32::new(attempts).unwrap())
        .backoff(Backoff::Constant(Duration::from_millis(1)))
        .jitter(Jitter::None)
        .build()
}

/// Answers `503` to the first `failures` requests, then `200`; counts them.
fn fails_first(failures: u32, calls: Arc<AtomicU32>) -> Router {
    Router::new().route(
        "/",
        get(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n < failures {
                    true => StatusCode::SERVICE_UNAVAILABLE,
                    false => StatusCode::OK,
                }
            }
        }),
    )
}

/// Three requests per minute to each host.
fn three_a_minute() -> HostRateLimit {
    let limit = Limit::new(
        "per-host",
        Algorithm::Gcra,
        Quota::per_minute(NonZeroU32::new(3).unwrap()),
    )
    .keyed_by("host");
    let limiter = RateLimiter::builder().limit(limit).build().unwrap();
    HostRateLimit::new(limiter, Duration::ZERO).unwrap()
}

/// In the pipeline, the rate limit counts what the host sees: a request that took three
/// attempts spends three units, and the next request is refused before it is sent. In front
/// of the pipeline, the same limit counts logical requests: the next one is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_in_the_pipeline_counts_every_attempt() {
    let mut seen = Vec::new();
    for inside in [true, false] {
        let calls = Arc::new(AtomicU32::new(0));
        let base = serve(fails_first(2, calls.clone())).await;
        let pipeline = HostPipeline::new(NonZeroUsize::new(16).unwrap(), |_| {
            Pipeline::builder().retry(retry(3)).build()
        });
        let client = match inside {
            true => ClientBuilder::new(reqwest::Client::new())
                .with(pipeline.rate_limit(three_a_minute()))
                .build(),
            false => ClientBuilder::new(reqwest::Client::new())
                .with(three_a_minute())
                .with(pipeline)
                .build(),
        };
        let first = client.get(&base).send().await.unwrap().status().as_u16();
        let second = match client.get(&base).send().await {
            Ok(resp) => resp.status().to_string(),
            Err(e) => e
                .floodwall()
                .map_or_else(|| "not floodwall's".to_owned(), |r| r.kind().to_string()),
        };
        let reached = calls.load(Ordering::SeqCst);
        println!(
            "rate limit {}: first {first}, second {second}, {reached} requests reached the host",
            if inside { "per attempt" } else { "per request" }
        );
        seen.push((first, second, reached));
    }
    assert_eq!(seen[0], (200, "rate-limited".to_string(), 3));
    assert_eq!(seen[1], (200, "200 OK".to_string(), 4));
}

/// A `GET` whose first copy stalls for 2 s is answered by the hedge sent after 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_get_is_answered_by_the_copy_that_beats_a_slow_first_answer() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return "slow";
                }
                "fast"
            }
        }),
    );
    let base = serve(app).await;
    let hedge = Hedge::builder()
        .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
        .build();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            HostPipeline::new(NonZeroUsize::new(16).unwrap(), |_| {
                Pipeline::builder().retry(retry(2)).build()
            })
            .hedge(hedge.clone()),
        )
        .build();
    let body = client
        .get(&base)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    println!(
        "hedged GET: {body:?}; copies sent {}, hedges started {}",
        calls.load(Ordering::SeqCst),
        hedge.hedges_started()
    );
    assert_eq!(body, "fast");
    assert_eq!(hedge.hedges_started(), 1);
    // A POST is not hedged.
    let posts = Arc::new(AtomicU32::new(0));
    let counted = posts.clone();
    let app = Router::new().route(
        "/",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "done"
            }
        }),
    );
    let base = serve(app).await;
    assert!(
        client
            .post(&base)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert_eq!(posts.load(Ordering::SeqCst), 1);
    assert_eq!(hedge.hedges_started(), 1);
}

/// A failed request — a `503` after every retry, or a refusal — is answered by the fallback;
/// a good answer is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_answers_a_failed_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let dead = serve(fails_first(u32::MAX, calls.clone())).await;
    let live = serve(fails_first(0, Arc::default())).await;
    let pipelines = HostPipeline::new(NonZeroUsize::new(16).unwrap(), |_| {
        Pipeline::builder()
            .retry(retry(2))
            .circuit_breaker(CircuitBreaker::builder().build().unwrap())
            .build()
    })
    .fallback(|failed| {
        let why = match failed {
            Ok(resp) => resp.status().to_string(),
            Err(e) => e
                .floodwall()
                .map_or_else(|| "not floodwall's".to_owned(), |r| r.kind().to_string()),
        };
        let answer = http::Response::builder()
            .status(200)
            .header("x-fallback", why)
            .body("cached price list")
            .unwrap();
        Some(reqwest::Response::from(answer))
    });
    let stages = pipelines.clone();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();
    let mut seen = Vec::new();
    let mut read = async |url: &str| {
        let resp = client.get(url).send().await.unwrap();
        let why = resp
            .headers()
            .get("x-fallback")
            .map(|v| v.to_str().unwrap().to_owned());
        seen.push((resp.status().as_u16(), why, resp.text().await.unwrap()));
    };
    read(&dead).await;
    stages
        .get(dead.trim_start_matches("http://"))
        .circuit_breaker()
        .unwrap()
        .force_open();
    read(&dead).await;
    read(&live).await;
    println!("(status, fallback for, body): {seen:?}");
    assert_eq!(
        seen,
        [
            (
                200,
                Some("503 Service Unavailable".to_string()),
                "cached price list".to_string()
            ),
            (
                200,
                Some("circuit-open".to_string()),
                "cached price list".to_string()
            ),
            (200, None, String::new()),
        ]
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "two attempts, then refused"
    );
}
