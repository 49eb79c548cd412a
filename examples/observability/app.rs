//! The observability example's service, shared with `tests/observability_scrape.rs`: an axum
//! app using a rate limiter, a tiered cache, a circuit breaker with retry and an attempt timeout behind a bulkhead,
//! and the `Idempotency-Key` layer — in memory, or the limiter and the cache's second tier on
//! Redis when given a connection — all reporting to a Prometheus recorder served at
//! `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use floodwall::cache::TieredCache;
use floodwall::cache::redis::RedisTier;
use floodwall::core::Keyspace;
use floodwall::core::redis::{RedisConnection, StoreOptions};
use floodwall::idempotency::http::IdempotencyLayer;
use floodwall::idempotency::{Idempotency, MemoryStore};
use floodwall::limiter::{Algorithm, Limit, Quota, RateLimiter};
use floodwall::nonzero;
use floodwall::resilience::bulkhead::Bulkhead;
use floodwall::resilience::circuit_breaker::CircuitBreaker;
use floodwall::resilience::retry::{Backoff, Retry};
use floodwall::resilience::shed::{
    CpuPressure, HttpShedLayer, LoadShedder, MemoryPressure, SchedulingDelay,
};
use floodwall::resilience::timeout::Timeout;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

/// Installs the process's Prometheus recorder, with histogram buckets from 10 µs to 1 s.
pub(crate) fn install_recorder() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets(&[
            0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
        ])
        .expect("valid buckets")
        .install_recorder()
        .expect("the only recorder in this process")
}

#[derive(Clone)]
struct Shop {
    limiter: RateLimiter,
    prices: TieredCache<String, u64>,
    breaker: CircuitBreaker,
    retry: Retry,
    attempt: Timeout,
    bulkhead: Bulkhead,
    upstream_calls: Arc<AtomicU64>,
    metrics: PrometheusHandle,
}

/// The upstream price service: 5 ms, and every fourth call fails.
async fn upstream_price(calls: &AtomicU64, sku: &str) -> Result<u64, String> {
    let n = calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(5)).await;
    if n % 4 == 3 {
        return Err("upstream: 503".to_string());
    }
    Ok(sku.bytes().map(u64::from).sum())
}

/// The service: `GET /price/{sku}` (limited per user, cached, fetched through a bulkhead,
/// breaker and retry), `POST /orders` (behind the `Idempotency-Key` layer) and
/// `GET /metrics`. With `redis`, the limits and the cache's second tier live there (keys
/// under a fresh version per process).
pub(crate) fn app(metrics: PrometheusHandle, redis: Option<RedisConnection>) -> Router {
    let version = std::process::id();
    let mut limiter = RateLimiter::builder().limit(
        Limit::new("per-user", Algorithm::Gcra, Quota::per_second(nonzero!(50))).keyed_by("user"),
    );
    let mut prices = TieredCache::builder()
        .name("prices")
        .ttl(Duration::from_millis(200));
    if let Some(conn) = &redis {
        let space = |ns| Keyspace::new(ns, version).expect("a valid keyspace");
        limiter = limiter.redis(StoreOptions::new(conn.clone()).keyspace(space("fw-obs-rl")));
        prices = prices.redis(RedisTier::new(
            StoreOptions::new(conn.clone()).keyspace(space("fw-obs-cache")),
        ));
    }
    let shop = Shop {
        limiter: limiter.build().expect("a valid limiter"),
        prices: prices.build(),
        breaker: CircuitBreaker::builder()
            .name("upstream")
            .build()
            .expect("a valid breaker"),
        retry: Retry::builder()
            .name("upstream")
            .max_attempts(nonzero!(3))
            .backoff(Backoff::Constant(Duration::from_millis(1)))
            .build(),
        attempt: Timeout::new(Duration::from_millis(200)).name("upstream"),
        bulkhead: Bulkhead::builder()
            .name("upstream")
            .max_concurrent(nonzero!(4))
            .build(),
        upstream_calls: Arc::new(AtomicU64::new(0)),
        metrics,
    };
    let orders = IdempotencyLayer::new(
        Idempotency::builder(MemoryStore::new())
            .name("orders")
            .build()
            .expect("a valid idempotency"),
        |parts| {
            parts
                .headers
                .get("x-user")?
                .to_str()
                .ok()
                .map(str::to_owned)
        },
    );
    // The process sheds sheddable, then default requests when Tokio polls tasks late, memory
    // nears the container's limit or the CPU quota is spent; the scrape is never shed.
    let shedder = LoadShedder::builder()
        .name("server")
        .signal(
            SchedulingDelay::spawn(Duration::from_millis(50), Duration::from_millis(100))
                .expect("inside the runtime"),
        )
        .signal(MemoryPressure::cgroup_or_budget(None))
        .signal(CpuPressure::new())
        .build()
        .expect("a valid shedder");
    Router::new()
        .route("/price/{sku}", get(price))
        .route("/orders", post(order).layer(orders))
        .layer(HttpShedLayer::new(shedder))
        .route("/metrics", get(scrape))
        .with_state(shop)
}

async fn price(State(shop): State<Shop>, Path(sku): Path<String>, headers: HeaderMap) -> Response {
    let user = headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let span = tracing::info_span!("decision", user = %user, sku = %sku);
    async move {
        let verdict = match shop.limiter.check(&[("user", &user)]).await {
            Ok(v) => v,
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        };
        if !verdict.allowed {
            tracing::debug!(retry_after = ?verdict.retry_after(), "rate limited");
            return StatusCode::TOO_MANY_REQUESTS.into_response();
        }
        let (breaker, retry) = (shop.breaker.clone(), shop.retry.clone());
        let attempt = shop.attempt.clone();
        let (bulkhead, calls) = (shop.bulkhead.clone(), shop.upstream_calls.clone());
        let key = sku.clone();
        let loaded = shop
            .prices
            .get_or_load(sku, move || async move {
                let fetch = || breaker.call(|| attempt.call(|| upstream_price(&calls, &key)));
                let guarded = bulkhead.call(|| retry.call(fetch)).await;
                guarded.map(Some).map_err(|e| e.to_string())
            })
            .await;
        match loaded {
            Ok(Some(cents)) => (StatusCode::OK, cents.to_string()).into_response(),
            Ok(None) => StatusCode::NOT_FOUND.into_response(),
            Err(e) => {
                tracing::warn!(error = %e, "price unavailable");
                (StatusCode::BAD_GATEWAY, e.to_string()).into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn order(body: String) -> (StatusCode, String) {
    (StatusCode::CREATED, format!("order for {body}"))
}

async fn scrape(State(shop): State<Shop>) -> String {
    shop.metrics.render()
}

/// Drives the service at `base` with 8 clients for `length`: prices for a few SKUs (some
/// users over their limit), and orders sent twice with the same key. Returns the statuses.
pub(crate) async fn drive(base: &str, length: Duration) -> std::collections::BTreeMap<u16, u64> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let deadline = tokio::time::Instant::now() + length;
    let mut tasks = Vec::new();
    for c in 0..8u32 {
        let (client, base) = (client.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<u16, u64>::new();
            let mut i = 0u32;
            while tokio::time::Instant::now() < deadline {
                i += 1;
                let req = if i.is_multiple_of(10) {
                    http::Request::post(format!("{base}/orders"))
                        .header("x-user", format!("user-{c}"))
                        .header("idempotency-key", format!("\"order-{}\"", i / 20))
                        .body(Full::new(bytes::Bytes::from(format!(
                            "sku-{}",
                            (i / 20) % 3
                        ))))
                } else {
                    http::Request::get(format!("{base}/price/sku-{}", i % 5))
                        .header("x-user", format!("user-{}", c % 3))
                        .body(Full::default())
                }
                .expect("a valid request");
                if let Ok(resp) = client.request(req).await {
                    *seen.entry(resp.status().as_u16()).or_default() += 1;
                    let _ = resp.into_body().collect().await;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        }));
    }
    let mut total = std::collections::BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("a client task") {
            *total.entry(k).or_default() += v;
        }
    }
    total
}
