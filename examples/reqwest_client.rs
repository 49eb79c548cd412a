//! A reqwest client with floodwall's middleware stack against a local flaky axum server:
//!
//! 1. a `GET` answered `503` + `Retry-After: 1` once is retried after a second;
//! 2. a payment `POST` whose first response is lost (the attempt times out while the server
//!    still charges) is retried with the same generated `Idempotency-Key` against a server
//!    behind floodwall's `IdempotencyLayer`: it gets the stored response, one charge;
//! 3. one request's own settings: the same `POST` with 1.5 s per attempt needs no retry;
//! 4. a shop service behind the `Idempotency-Key` layer forwards the key its client sent
//!    (`RequestKey`, derived per call: `{key}:charge`) to the payments API, so the client's
//!    retry that reaches another instance of the shop is still charged once;
//! 5. a dead host opens its own breaker and is shed, while the payments host keeps
//!    answering; the refusal is read as a typed error (what refused, host, breaker, attempts,
//!    when to come back, the status a proxy answers);
//! 6. a price list behind the `GET` cache: stored, revalidated with its `ETag` (a `304`), and
//!    served stale while the origin is down (`stale-if-error`).
//!
//! It prints each outcome and ends on its own.
//!
//! ```text
//! cargo run --example reqwest_client --features reqwest,http
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use floodwall::cache::TieredCache;
use floodwall::idempotency::http::{IdempotencyLayer, RequestKey};
use floodwall::idempotency::{Idempotency, MemoryStore};
use floodwall::nonzero;
use floodwall::reqwest::reqwest_middleware::ClientWithMiddleware;
use floodwall::reqwest::{
    ErrorExt, HostBreaker, HostBulkhead, HttpCache, IdempotencyKey, RequestSettings,
    RetryMiddleware, StoredResponse, TimeoutMiddleware,
};
use floodwall::resilience::circuit_breaker::{CircuitBreaker, SlidingWindow};
use floodwall::resilience::retry::{Backoff, Jitter};

async fn serve(app: Router) -> Result<String, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// The payments server: `GET /status` is busy once, `POST /charges` takes 300 ms per charge,
/// behind the `Idempotency-Key` layer.
async fn payments(charges: Arc<AtomicU32>) -> Result<String, Box<dyn std::error::Error>> {
    let busy_once = Arc::new(AtomicU32::new(0));
    let idem = Idempotency::builder(MemoryStore::new())
        .lease(Duration::from_secs(1))
        .build()?;
    let charge = post(move |axum::Extension(key): axum::Extension<RequestKey>| {
        let charges = charges.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await; // the card network
            let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
            (StatusCode::CREATED, format!("ch_{n} (key {key})"))
        }
    })
    .layer(IdempotencyLayer::new(idem, |_| Some("shop-1".to_string())));
    let status = get(move || {
        let first = busy_once.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            match first {
                true => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    "busy",
                ),
                false => (StatusCode::OK, [("retry-after", "0")], "up"),
            }
        }
    });
    Ok(serve(
        Router::new()
            .route("/charges", charge)
            .route("/status", status),
    )
    .await?)
}

/// One instance of the shop service (its own idempotency store): `POST /orders` charges the
/// card through `client`, forwarding the key its client sent, derived per call.
async fn shop_instance(
    client: ClientWithMiddleware,
    payments: String,
) -> Result<String, Box<dyn std::error::Error>> {
    let order = post(move |axum::Extension(key): axum::Extension<RequestKey>| {
        let (client, url) = (client.clone(), format!("{payments}/charges"));
        async move {
            let charge = client
                .post(url)
                .body("{\"amount\":42}")
                .with_extension(
                    RequestSettings::new()
                        .attempt_timeout(Duration::from_millis(1500))
                        .idempotency_key(format!("{}:charge", key.as_str())),
                )
                .send()
                .await;
            match charge {
                Ok(resp) => (StatusCode::CREATED, resp.text().await.unwrap_or_default()),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
            }
        }
    });
    let idem = Idempotency::builder(MemoryStore::new()).build()?;
    Ok(serve(
        Router::new()
            .route("/orders", order)
            .layer(IdempotencyLayer::new(idem, |_| {
                Some("client-1".to_string())
            })),
    )
    .await?)
}

/// The price list: stale at once (`max-age=0`), with an `ETag` and a minute of
/// `stale-if-error`; answers `304` to a matching `If-None-Match`, `503` while `down`.
async fn prices(down: Arc<AtomicBool>) -> Result<String, std::io::Error> {
    let list = get(move |headers: axum::http::HeaderMap| {
        let down = down.load(Ordering::SeqCst);
        async move {
            let cached = headers.get("if-none-match").is_some_and(|v| v == "\"v7\"");
            let status = match (down, cached) {
                (true, _) => StatusCode::SERVICE_UNAVAILABLE,
                (false, true) => StatusCode::NOT_MODIFIED,
                (false, false) => StatusCode::OK,
            };
            let headers = [
                ("cache-control", "max-age=0, stale-if-error=60"),
                ("etag", "\"v7\""),
            ];
            (
                status,
                headers,
                if status == StatusCode::OK {
                    "espresso 2.40"
                } else {
                    ""
                },
            )
        }
    });
    serve(Router::new().route("/prices", list)).await
}

/// Part 4: the `GET` cache in front of a price list.
async fn cached_prices() -> Result<(), Box<dyn std::error::Error>> {
    let down = Arc::new(AtomicBool::new(false));
    let origin = prices(down.clone()).await?;
    let responses: TieredCache<String, StoredResponse> = TieredCache::builder()
        .name("http")
        .ttl(Duration::from_secs(3600))
        .build();
    let cache = HttpCache::new(responses);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache.clone())
        .build();
    println!("6. GET /prices through the cache (max-age=0, ETag, stale-if-error=60)");
    for step in ["first", "again", "origin down"] {
        if step == "origin down" {
            down.store(true, Ordering::SeqCst);
        }
        let resp = client.get(format!("{origin}/prices")).send().await?;
        println!("   {step}: {} {:?}", resp.status(), resp.text().await?);
    }
    let stats = cache.stats();
    println!(
        "   requests to the origin: {}; 304s: {}; served stale for an error: {}",
        stats.fetched, stats.revalidated, stats.stale_if_error
    );
    if (stats.revalidated, stats.stale_if_error) != (1, 1) {
        return Err("expected one revalidation and one stale answer".into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let charges = Arc::new(AtomicU32::new(0));
    let shop = payments(charges.clone()).await?;
    let dead = serve(Router::new().route("/", get(|| async { StatusCode::BAD_GATEWAY }))).await?;

    let retry = floodwall::resilience::retry::Retry::builder()
        .max_attempts(nonzero!(5))
        .backoff(Backoff::Exponential {
            initial: Duration::from_millis(20),
            multiplier: 2.0,
        })
        .jitter(Jitter::Full)
        .build();
    let breakers = HostBreaker::new(nonzero!(100), |host| {
        CircuitBreaker::builder()
            .name(format!("api:{host}"))
            .sliding_window(SlidingWindow::Count(nonzero!(8)))
            .minimum_calls(8)
            .build()
            .expect("a valid breaker")
    });
    let registry = breakers.registry().clone();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyKey::new())
        .with(RetryMiddleware::new(retry))
        .with(breakers)
        .with(HostBulkhead::per_host(nonzero!(100), nonzero!(16)))
        .with(TimeoutMiddleware::new(Duration::from_millis(100)))
        .build();

    println!("1. GET /status, busy once with Retry-After: 1");
    let started = Instant::now();
    let resp = client.get(format!("{shop}/status")).send().await?;
    println!("   {} after {:.1?}", resp.status(), started.elapsed());

    println!(
        "2. POST /charges; the first attempt's response is lost (100 ms timeout, 300 ms charge)"
    );
    let resp = client
        .post(format!("{shop}/charges"))
        .body("{\"amount\":42}")
        .send()
        .await?;
    let replayed = resp.headers().contains_key("idempotent-replayed");
    println!(
        "   {} {} (replayed: {replayed})",
        resp.status(),
        resp.text().await?
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let charged = charges.load(Ordering::SeqCst);
    println!("   cards charged: {charged}");

    println!("3. the same POST with its own setting: 1.5 s per attempt");
    let resp = client
        .post(format!("{shop}/charges"))
        .body("{\"amount\":43}")
        .with_extension(RequestSettings::new().attempt_timeout(Duration::from_millis(1500)))
        .send()
        .await?;
    println!(
        "   {} {} at the first attempt",
        resp.status(),
        resp.text().await?
    );

    println!("4. an order, retried by its client through another shop instance");
    let before = charges.load(Ordering::SeqCst);
    let caller = reqwest::Client::new();
    for attempt in 1..=2 {
        // Each instance has its own idempotency store: the retry runs the handler again.
        let instance = shop_instance(client.clone(), shop.clone()).await?;
        let resp = caller
            .post(format!("{instance}/orders"))
            .header("idempotency-key", "\"order-7\"")
            .body("{\"sku\":7}")
            .send()
            .await?;
        println!(
            "   attempt {attempt}: {} {}",
            resp.status(),
            resp.text().await?
        );
    }
    let order_charges = charges.load(Ordering::SeqCst) - before;
    println!("   cards charged for the order: {order_charges}");

    println!("5. a dead host, and the payments host beside it");
    for i in 1..=10 {
        let answer = match client.get(format!("{dead}/")).send().await {
            Ok(resp) => resp.status().to_string(),
            Err(e) => match e.floodwall() {
                // Typed: refusal.kind(), .host_key(), .instance_name(), .attempts(),
                // .retry_after(), .status(), .to_response() — no downcast.
                Some(refusal) => format!("{refusal} [a proxy answers {}]", refusal.status()),
                None => format!("failed: {e}"),
            },
        };
        let other = client.get(format!("{shop}/status")).send().await?.status();
        println!("   dead host request {i}: {answer}; payments host: {other}");
    }
    let dead_host = dead.trim_start_matches("http://");
    println!(
        "   dead host's breaker: {:?}",
        registry.get(dead_host).state()
    );

    if charged != 1 || order_charges != 1 {
        return Err(format!(
            "{charged} cards charged for the lost response, {order_charges} for the order; expected 1 and 1"
        )
        .into());
    }
    cached_prices().await
}
