//! Each middleware against local axum servers these tests start: `503` + `Retry-After`
//! honoured (and a `POST` retried only with an `Idempotency-Key`), a dead host's open breaker
//! leaving another host alone, a bulkhead per host, a client rate limit that waits, and a
//! `POST` retried through a lost response against floodwall's `IdempotencyLayer`: one charge.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};
use floodwall_reqwest::{
    ErrorExt, FloodwallError, HostBreaker, HostBulkhead, HostRateLimit, IdempotencyKey,
    RefusalKind, RetryMiddleware, TimeoutMiddleware,
};
use floodwall_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, State};
use floodwall_resilience::retry::Backoff;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

mod common;
use common::{dead_host, live_host, serve};

fn retry(attempts: u32) -> floodwall_resilience::retry::Retry {
    floodwall_resilience::retry::Retry::builder()
        .max_attempts(n(attempts))
        .backoff(Backoff::Constant(Duration::from_millis(5)))
        .build()
}

/// What refused the request, if one of floodwall's middleware did.
fn floodwall_error(e: &reqwest_middleware::Error) -> Option<RefusalKind> {
    e.floodwall().map(FloodwallError::kind)
}

/// A server that answers `503` with `Retry-After: 1` to the first request of each path, then
/// `200`; and counts requests per path.
fn flaky_once(calls: Arc<AtomicU32>) -> Router {
    let handler = move || {
        let calls = calls.clone();
        async move {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    "busy",
                ),
                _ => (StatusCode::OK, [("retry-after", "0")], "ok"),
            }
        }
    };
    Router::new()
        .route("/get", get(handler.clone()))
        .route("/post", post(handler))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_is_retried_after_it_and_a_post_only_with_a_key() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve(flaky_once(calls.clone())).await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(retry(3)))
        .build();
    let started = Instant::now();
    let resp = client.get(format!("{base}/get")).send().await.unwrap();
    let waited = started.elapsed();
    println!(
        "GET: {} after {waited:?} and {} calls",
        resp.status(),
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(resp.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 honoured: {waited:?}"
    );

    // A POST without a key is sent once: its 503 comes back.
    calls.store(0, Ordering::SeqCst);
    let resp = client.post(format!("{base}/post")).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), calls.load(Ordering::SeqCst)),
        (503, 1)
    );
    // With a key (from IdempotencyKey), the same POST is retried.
    calls.store(0, Ordering::SeqCst);
    let keyed = ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyKey::new())
        .with(RetryMiddleware::new(retry(3)))
        .build();
    let resp = keyed.post(format!("{base}/post")).send().await.unwrap();
    println!(
        "POST without a key: sent once (503); with a key: {} after 2 calls",
        resp.status()
    );
    assert_eq!(
        (resp.status().as_u16(), calls.load(Ordering::SeqCst)),
        (200, 2)
    );
}

/// A host always answering `503` opens its own breaker after 4 calls; its next requests fail
/// fast without reaching it; another host keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_open_breaker_does_not_affect_another_host() {
    let dead_calls = Arc::new(AtomicU32::new(0));
    let dead = serve(dead_host(dead_calls.clone())).await;
    let live = serve(live_host()).await;
    let breakers = HostBreaker::new(NonZeroUsize::new(64).unwrap(), |host| {
        CircuitBreaker::builder()
            .name(format!("api:{host}"))
            .sliding_window(SlidingWindow::Count(n(4)))
            .minimum_calls(4)
            .build()
            .unwrap()
    });
    let registry = breakers.registry().clone();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(breakers)
        .build();
    let mut shed = 0;
    for _ in 0..10 {
        match client.get(format!("{dead}/")).send().await {
            Ok(resp) => assert_eq!(resp.status(), 503),
            Err(e) => {
                assert!(matches!(
                    floodwall_error(&e),
                    Some(RefusalKind::CircuitOpen)
                ));
                shed += 1;
            }
        }
        let ok = client.get(format!("{live}/")).send().await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    let dead_key = dead.trim_start_matches("http://");
    let live_key = live.trim_start_matches("http://");
    println!(
        "dead host: {} calls reached it, {shed} shed, breaker {:?}; live host: 10 of 10 answered, breaker {:?}",
        dead_calls.load(Ordering::SeqCst),
        registry.get(dead_key).state(),
        registry.get(live_key).state()
    );
    assert_eq!(dead_calls.load(Ordering::SeqCst), 4);
    assert_eq!(shed, 6);
    assert_eq!(registry.get(dead_key).state(), State::Open);
    assert_eq!(registry.get(live_key).state(), State::Closed);
}

/// Two requests in flight per host: a third to the same host is refused, one to another host
/// goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulkhead_per_host() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(tokio::sync::Semaphore::new(0));
    let (held, arriving) = (gate.clone(), arrived.clone());
    let slow = serve(Router::new().route(
        "/",
        get(move || {
            let (held, arriving) = (held.clone(), arriving.clone());
            async move {
                arriving.add_permits(1);
                let _ = held.acquire().await;
                "slow"
            }
        }),
    ))
    .await;
    let fast = serve(Router::new().route("/", get(|| async { "fast" }))).await;
    let client: ClientWithMiddleware = ClientBuilder::new(reqwest::Client::new())
        .with(HostBulkhead::per_host(
            NonZeroUsize::new(64).unwrap(),
            NonZeroUsize::new(2).unwrap(),
        ))
        .build();
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{slow}/"));
            tokio::spawn(async move { client.get(url).send().await })
        })
        .collect();
    // Both reached the server (and hold their bulkhead slots).
    let _ = arrived.acquire_many(2).await.unwrap();
    let third = client.get(format!("{slow}/")).send().await;
    let refused = matches!(
        third.as_ref().map_err(floodwall_error),
        Err(Some(RefusalKind::BulkheadFull))
    );
    let other = client.get(format!("{fast}/")).send().await.unwrap();
    gate.add_permits(2);
    for t in in_flight {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    println!(
        "slow host: 2 in flight, third refused: {refused}; fast host: {}",
        other.status()
    );
    assert!(refused, "{third:?}");
    assert_eq!(other.status(), 200);
}

/// A quota of 10 per second (bursts of 1) toward the host: 3 requests take at least 200 ms;
/// a client that may wait only 10 ms is refused instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_rate_limit_waits_for_its_quota() {
    let base = serve(Router::new().route("/", get(|| async { "ok" }))).await;
    let limiter = || {
        RateLimiter::builder()
            .limit(
                Limit::new(
                    "api",
                    Algorithm::Gcra,
                    Quota::per_second(n(10)).allow_burst(n(1)),
                )
                .keyed_by("host"),
            )
            .build()
            .unwrap()
    };
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(HostRateLimit::new(limiter(), Duration::from_secs(5)).unwrap())
        .build();
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(
            client
                .get(format!("{base}/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let took = started.elapsed();
    let impatient = ClientBuilder::new(reqwest::Client::new())
        .with(HostRateLimit::new(limiter(), Duration::from_millis(10)).unwrap())
        .build();
    assert!(impatient.get(format!("{base}/")).send().await.is_ok());
    let refused = impatient.get(format!("{base}/")).send().await.unwrap_err();
    println!("3 requests at 10/s took {took:?}; an impatient client: {refused}");
    assert!(took >= Duration::from_millis(190), "{took:?}");
    assert!(matches!(
        floodwall_error(&refused),
        Some(RefusalKind::RateLimited)
    ));
}

/// A payment `POST` whose first response is lost (the attempt times out while the server is
/// still charging) is retried with the same generated `Idempotency-Key` against a server behind
/// floodwall's `IdempotencyLayer`: it waits out the `409`, gets the stored response, and the
/// card is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_retried_through_a_lost_response_charges_once() {
    use floodwall_idempotency::http::IdempotencyLayer;
    use floodwall_idempotency::{Idempotency, MemoryStore};

    let charges = Arc::new(AtomicU32::new(0));
    let counted = charges.clone();
    let idem = Idempotency::builder(MemoryStore::new())
        .lease(Duration::from_secs(1))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/charges",
            post(move || {
                let counted = counted.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await; // the card network
                    let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    (StatusCode::CREATED, format!("ch_{n}"))
                }
            }),
        )
        .layer(IdempotencyLayer::new(idem, |_| Some("shop-1".to_string())));
    let base = serve(app).await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyKey::new())
        .with(RetryMiddleware::new(retry(5)))
        .with(TimeoutMiddleware::new(Duration::from_millis(100)))
        .build();
    let resp = client
        .post(format!("{base}/charges"))
        .body("{\"amount\":42}")
        .send()
        .await
        .unwrap();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let status = resp.status();
    let body = resp.text().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // nothing else is running
    println!(
        "POST through a lost response: {status} {body} (replayed: {replayed}); cards charged: {}",
        charges.load(Ordering::SeqCst)
    );
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, "ch_1");
    assert!(replayed);
    assert_eq!(charges.load(Ordering::SeqCst), 1);
}

/// A limit keyed by anything but `host` would never see a client's request (a typo meant no
/// limit at all): `HostRateLimit::new` refuses it, naming the limit and the key; a limit keyed by
/// nothing is one quota across every host and is taken.
#[test]
fn a_limit_not_keyed_by_host_is_a_build_error() {
    let limiter = |key: Option<&str>| {
        let limit = Limit::new("api", Algorithm::Gcra, Quota::per_second(n(10)));
        let limit = match key {
            Some(k) => limit.keyed_by(k),
            None => limit,
        };
        RateLimiter::builder().limit(limit).build().unwrap()
    };
    let err = HostRateLimit::new(limiter(Some("hots")), Duration::from_secs(1)).unwrap_err();
    println!("{err}");
    assert_eq!((err.limit.as_str(), err.key.as_str()), ("api", "hots"));
    assert!(err.to_string().contains("`hots`"), "{err}");
    assert!(HostRateLimit::new(limiter(Some("host")), Duration::from_secs(1)).is_ok());
    assert!(HostRateLimit::new(limiter(None), Duration::from_secs(1)).is_ok());
}
