//! Per-request settings through one client: each request's own attempt bound, whole-call
//! bound and attempt limit, through the middleware stack and through `HostPipeline`;
//! reqwest's own per-request timeout honoured by floodwall's `TimeoutMiddleware`; and the caller's own
//! `Idempotency-Key`, reused across the caller's own retries, charging once.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use floodwall_reqwest::{
    ErrorExt, HostPipeline, IdempotencyKey, RefusalKind, RequestSettings, RetryMiddleware,
    TimeoutMiddleware,
};
use floodwall_resilience::Pipeline;
use floodwall_resilience::retry::{Backoff, Jitter};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

mod common;
use common::{dead_host, serve};

/// `attempts` attempts, `backoff` apart exactly (no jitter: the whole-call bound below must
/// cut the retries, whatever the draws).
fn retry(attempts: u32, backoff: Duration) -> floodwall_resilience::retry::Retry {
    floodwall_resilience::retry::Retry::builder()
        .max_attempts(NonZeroU32::new(attempts).unwrap())
        .backoff(Backoff::Constant(backoff))
        .jitter(Jitter::None)
        .build()
}

/// The two client shapes: the middleware stack and `HostPipeline`, each retrying 5 times with
/// `backoff` and bounding each attempt by `attempt` unless a request says otherwise.
fn clients(attempt: Duration, backoff: Duration) -> [(&'static str, ClientWithMiddleware); 2] {
    let stack = ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(retry(5, backoff)))
        .with(TimeoutMiddleware::new(attempt))
        .build();
    let pipeline = HostPipeline::new(NonZeroUsize::new(16).unwrap(), move |_| {
        Pipeline::builder()
            .retry(retry(5, backoff))
            .attempt_timeout(attempt)
            .build()
    });
    let pipeline = ClientBuilder::new(reqwest::Client::new())
        .with(pipeline)
        .build();
    [("stack", stack), ("HostPipeline", pipeline)]
}

/// Answers `GET /` and `POST /` after 800 ms.
fn slow() -> Router {
    let handler = || async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        "done"
    };
    Router::new().route("/", get(handler).post(handler))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_bounds_a_get_at_400ms_and_a_post_at_1500ms() {
    let base = serve(slow()).await;
    for (shape, client) in clients(Duration::from_secs(5), Duration::from_millis(1)) {
        let get = client
            .get(&base)
            .with_extension(
                RequestSettings::new()
                    .attempt_timeout(Duration::from_millis(400))
                    .no_retry(),
            )
            .send()
            .await
            .unwrap_err();
        let post = client
            .post(&base)
            .with_extension(RequestSettings::new().attempt_timeout(Duration::from_millis(1500)))
            .send()
            .await
            .unwrap();
        let refusal = get.floodwall().expect("cut by floodwall");
        println!("{shape}: GET {refusal}; POST {}", post.status());
        assert_eq!(refusal.kind(), RefusalKind::TimedOut);
        assert_eq!(refusal.timed_out_after(), Some(Duration::from_millis(400)));
        assert_eq!(post.status(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwests_own_per_request_timeout_is_honoured_by_floodwalls_timeout() {
    let base = serve(slow()).await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(TimeoutMiddleware::new(Duration::from_millis(100)))
        .build();
    let resp = client
        .get(&base)
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    println!("a 100 ms stack bound, reqwest's timeout 1.5 s, an 800 ms server: {resp:?}");
    assert_eq!(resp.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_limits_its_own_attempts_and_its_whole_call() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve(dead_host(calls.clone())).await;
    for (shape, client) in clients(Duration::from_secs(5), Duration::from_millis(1)) {
        let mut seen = Vec::new();
        for settings in [
            None,
            Some(RequestSettings::new().max_attempts(NonZeroU32::new(2).unwrap())),
            Some(RequestSettings::new().no_retry()),
        ] {
            let req = client.get(&base);
            let req = match settings {
                Some(s) => req.with_extension(s),
                None => req,
            };
            assert_eq!(req.send().await.unwrap().status(), 503);
            seen.push(calls.swap(0, Ordering::SeqCst));
        }
        println!("{shape}: requests reaching a 503 host (default, max 2, no retry): {seen:?}");
        assert_eq!(seen, [5, 2, 1]);
    }
    // A whole-call bound shorter than the retries' backoff: cut, naming that bound.
    for (shape, client) in clients(Duration::from_secs(5), Duration::from_millis(200)) {
        let e = client
            .get(&base)
            .with_extension(RequestSettings::new().timeout(Duration::from_millis(300)))
            .send()
            .await
            .unwrap_err();
        let reached = calls.swap(0, Ordering::SeqCst);
        let refusal = e.floodwall().expect("cut by floodwall");
        println!("{shape}: a 300 ms call with 200 ms backoff: {refusal}; {reached} reached");
        assert_eq!(refusal.timed_out_after(), Some(Duration::from_millis(300)));
        assert!(
            (1..=2).contains(&reached),
            "attempts at 0 and 200 ms fit in 300 ms: {reached}"
        );
    }
}

/// The caller's own retry of a charge (its first call got no answer it could use) carries
/// the caller's key: a server behind floodwall's `IdempotencyLayer` charges once. Without a
/// key of its own, each of the caller's calls gets a fresh generated key and charges again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_key_reused_across_the_callers_own_retries_charges_once() {
    use floodwall_idempotency::http::IdempotencyLayer;
    use floodwall_idempotency::{Idempotency, MemoryStore};

    let charges = Arc::new(AtomicU32::new(0));
    let counted = charges.clone();
    let idem = Idempotency::builder(MemoryStore::new()).build().unwrap();
    let app = Router::new()
        .route(
            "/charges",
            post(move || {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                async move { (StatusCode::CREATED, format!("ch_{n}")) }
            }),
        )
        .layer(IdempotencyLayer::new(idem, |_| Some("shop-1".to_string())));
    let base = serve(app).await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyKey::new())
        .with(RetryMiddleware::new(retry(3, Duration::from_millis(1))))
        .build();
    let charge = |settings: Option<RequestSettings>| {
        let req = client
            .post(format!("{base}/charges"))
            .body("{\"amount\":42}");
        let req = match settings {
            Some(s) => req.with_extension(s),
            None => req,
        };
        async move {
            let resp = req.send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let own = || Some(RequestSettings::new().idempotency_key("order-42-charge"));
    let first = charge(own()).await;
    let again = charge(own()).await;
    let keyed = charges.swap(0, Ordering::SeqCst);
    charge(None).await;
    charge(None).await;
    let generated = charges.load(Ordering::SeqCst);
    println!(
        "the caller's key twice: {first:?} then {again:?}, {keyed} charge(s); generated keys: {generated} charges"
    );
    assert_eq!(first, (StatusCode::CREATED, "ch_1".to_string()));
    assert_eq!(again, first);
    assert_eq!(keyed, 1);
    assert_eq!(generated, 2);
}

/// A service behind the `Idempotency-Key` layer charges a card through an upstream API.
/// The client's retry of an order reaches another instance of the service (with its own
/// idempotency store), which runs the handler again: forwarding a key derived from the
/// client's (the layer's `RequestKey`) lets the upstream recognise the charge — once. A
/// generated key per call charges twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_key_charges_once_when_another_instance_runs_the_retry() {
    use axum::Extension;
    use floodwall_idempotency::http::{IdempotencyLayer, RequestKey};
    use floodwall_idempotency::{Idempotency, MemoryStore};

    let charges = Arc::new(AtomicU32::new(0));
    let counted = charges.clone();
    let upstream = Router::new()
        .route(
            "/charges",
            post(move || {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                async move { (StatusCode::CREATED, format!("ch_{n}")) }
            }),
        )
        .layer(IdempotencyLayer::new(
            Idempotency::builder(MemoryStore::new()).build().unwrap(),
            |_| Some("shop".to_string()),
        ));
    let upstream = serve(upstream).await;
    // One instance of the shop service, with its own store.
    let instance = |forward: bool| {
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(IdempotencyKey::new())
            .with(RetryMiddleware::new(retry(3, Duration::from_millis(1))))
            .build();
        let url = format!("{upstream}/charges");
        let app = Router::new()
            .route(
                "/orders",
                post(move |Extension(key): Extension<RequestKey>| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let req = client.post(url).body("{\"amount\":42}");
                        let req = match forward {
                            true => req.with_extension(
                                RequestSettings::new()
                                    .idempotency_key(format!("{}:charge", key.as_str())),
                            ),
                            false => req,
                        };
                        let charge = req.send().await.unwrap().text().await.unwrap();
                        (StatusCode::CREATED, charge)
                    }
                }),
            )
            .layer(IdempotencyLayer::new(
                Idempotency::builder(MemoryStore::new()).build().unwrap(),
                |_| Some("client-1".to_string()),
            ));
        serve(app)
    };
    let caller = reqwest::Client::new();
    let mut seen = Vec::new();
    for forward in [true, false] {
        charges.store(0, Ordering::SeqCst);
        let (first, second) = (instance(forward).await, instance(forward).await);
        let mut bodies = Vec::new();
        for base in [&first, &second] {
            let resp = caller
                .post(format!("{base}/orders"))
                .header("idempotency-key", "\"order-9\"")
                .body("{\"sku\":7}")
                .send()
                .await
                .unwrap();
            bodies.push(resp.text().await.unwrap());
        }
        let charged = charges.load(Ordering::SeqCst);
        println!("forwarding the key: {forward}; answers {bodies:?}; cards charged: {charged}");
        seen.push((forward, charged));
    }
    assert_eq!(seen, [(true, 1), (false, 2)]);
}
