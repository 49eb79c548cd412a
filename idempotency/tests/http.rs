//! The `Idempotency-Key` layer over the memory store: replays, 422 for another payload, 400s,
//! 409 while in progress, per-principal scopes, what is stored and what is released.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use floodwall_core::ManualClock;
use floodwall_idempotency::http::IdempotencyLayer;
use floodwall_idempotency::{Idempotency, MemoryStore};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

type Body = Full<Bytes>;

fn post(user: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method(Method::POST)
        .uri("/charges?currency=eur")
        .header("x-user", user);
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn text(r: Response<Body>) -> (StatusCode, http::HeaderMap, String) {
    let (p, b) = r.into_parts();
    let bytes = b.collect().await.unwrap().to_bytes();
    (
        p.status,
        p.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// A service that charges: counts its runs and answers 201 with the run number, or the
/// status in the `x-answer` header.
fn charges(
    runs: Arc<AtomicU32>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    service_fn(move |req: Request<Body>| {
        let runs = runs.clone();
        async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            let status = req
                .headers()
                .get("x-answer")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(201u16);
            if req.headers().contains_key("x-slow") {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut r = Response::new(Full::new(Bytes::from(format!("charge #{n}"))));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            r.headers_mut().insert("x-not-stored", "1".parse().unwrap());
            Ok::<_, Infallible>(r)
        }
    })
}

fn layer(store: MemoryStore) -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(Idempotency::new(store), |parts| {
        parts
            .headers
            .get("x-user")?
            .to_str()
            .ok()
            .map(str::to_owned)
    })
}

#[tokio::test]
async fn a_retry_gets_the_stored_response_and_another_payload_gets_422() {
    let runs = Arc::new(AtomicU32::new(0));
    let mut svc =
        layer(MemoryStore::with_clock(ManualClock::new(), 100)).layer(charges(runs.clone()));
    let (status, headers, body) = text(
        svc.ready()
            .await
            .unwrap()
            .call(post("ann", Some("\"k-1\""), "{\"amount\":42}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "charge #1"));
    assert!(headers.get("idempotent-replayed").is_none());

    // The retry: replayed, with the stored headers only.
    let (status, headers, body) = text(
        svc.ready()
            .await
            .unwrap()
            .call(post("ann", Some("\"k-1\""), "{\"amount\":42}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "charge #1"));
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers["content-type"], "text/plain");
    assert!(headers.get("x-not-stored").is_none());

    // Same key, another amount: 422 problem+json, and the stored response is untouched.
    let (status, headers, body) = text(
        svc.ready()
            .await
            .unwrap()
            .call(post("ann", Some("\"k-1\""), "{\"amount\":99}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(body.contains("\"status\":422"), "{body}");
    let (_, _, body) = text(
        svc.ready()
            .await
            .unwrap()
            .call(post("ann", Some("\"k-1\""), "{\"amount\":42}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body, "charge #1");

    // Another user with the same key: an execution of its own.
    let (status, headers, body) = text(
        svc.ready()
            .await
            .unwrap()
            .call(post("bob", Some("\"k-1\""), "{\"amount\":42}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "charge #2"));
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn missing_and_malformed_keys_get_400_and_other_methods_pass() {
    let runs = Arc::new(AtomicU32::new(0));
    let mut required = layer(MemoryStore::new())
        .require_key(true)
        .layer(charges(runs.clone()));
    let (status, _, body) = text(
        required
            .ready()
            .await
            .unwrap()
            .call(post("ann", None, "x"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("missing"), "{body}");
    for bad in [
        "\"\"",
        "a b",
        "\"unterminated",
        &"k".repeat(300),
        "a,b",
        "a;x=1",
    ] {
        let (status, _, _) = text(
            required
                .ready()
                .await
                .unwrap()
                .call(post("ann", Some(bad), "x"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "refused requests never run");

    let mut optional = layer(MemoryStore::new()).layer(charges(runs.clone()));
    // Without a key the request runs unprotected; a GET is not idempotency-managed.
    for _ in 0..2 {
        optional
            .ready()
            .await
            .unwrap()
            .call(post("ann", None, "x"))
            .await
            .unwrap();
    }
    let get = Request::get("/charges")
        .header("idempotency-key", "k")
        .body(Full::new(Bytes::new()))
        .unwrap();
    optional.ready().await.unwrap().call(get).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn in_progress_gets_409_and_server_errors_release_the_key() {
    let runs = Arc::new(AtomicU32::new(0));
    let svc = layer(MemoryStore::new()).layer(charges(runs.clone()));
    let slow = || {
        let mut r = post("ann", Some("slow-1"), "{}");
        r.headers_mut().insert("x-slow", "1".parse().unwrap());
        r
    };
    let first = tokio::spawn({
        let mut svc = svc.clone();
        async move { svc.ready().await.unwrap().call(slow()).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut s = svc.clone();
    let (status, headers, body) = text(s.ready().await.unwrap().call(slow()).await.unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(headers.contains_key("retry-after"));
    assert!(body.contains("\"status\":409"));
    assert_eq!(first.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A 503 from the handler is not stored: the retry runs again; so is a 429.
    for answer in ["503", "429"] {
        let key = format!("release-{answer}");
        let req = || {
            let mut r = post("ann", Some(&key), "{}");
            r.headers_mut().insert("x-answer", answer.parse().unwrap());
            r
        };
        let before = runs.load(Ordering::SeqCst);
        s.ready().await.unwrap().call(req()).await.unwrap();
        s.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            before + 2,
            "{answer} released the key"
        );
    }
    // A 400 from the handler is stored and replayed.
    let req = || {
        let mut r = post("ann", Some("client-error"), "{}");
        r.headers_mut().insert("x-answer", "400".parse().unwrap());
        r
    };
    let before = runs.load(Ordering::SeqCst);
    s.ready().await.unwrap().call(req()).await.unwrap();
    let replay = s.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn oversized_bodies_are_refused_or_not_stored() {
    let runs = Arc::new(AtomicU32::new(0));
    let mut svc = layer(MemoryStore::new())
        .max_request_body(16)
        .max_stored_body(4)
        .layer(charges(runs.clone()));
    let (status, _, _) = text(
        svc.ready()
            .await
            .unwrap()
            .call(post("ann", Some("big"), &"x".repeat(17)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // "charge #1" is over the 4-byte stored cap: returned whole the first time; the
    // completion is recorded without the body, so the retry replays it and never runs again.
    let (status, _, body) = text(
        svc.ready()
            .await
            .unwrap()
            .call(post("ann", Some("k"), "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "charge #1"));
    let (status, headers, body) = text(
        svc.ready()
            .await
            .unwrap()
            .call(post("ann", Some("k"), "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, "", "the body was not kept");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers["idempotent-body-omitted"], "true");
    assert_eq!(
        headers["content-type"], "text/plain",
        "allowed headers are kept"
    );
    println!(
        "over-cap response + retry -> {} execution(s)",
        runs.load(Ordering::SeqCst)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_client_went_away_still_completes_and_replays() {
    let runs = Arc::new(AtomicU32::new(0));
    let svc = layer(MemoryStore::new()).layer(charges(runs.clone()));
    let slow = || {
        let mut r = post("ann", Some("dropped-1"), "{}");
        r.headers_mut().insert("x-slow", "1".parse().unwrap());
        r
    };
    // The client gives up after 50 ms: its request future is dropped mid-handler.
    let mut s = svc.clone();
    let gave_up = tokio::time::timeout(Duration::from_millis(50), async move {
        s.ready().await.unwrap().call(slow()).await
    })
    .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The retry gets the response the server finished and stored: no second run.
    let mut s = svc.clone();
    let (status, headers, body) = text(s.ready().await.unwrap().call(slow()).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "charge #1"));
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Two `Idempotency-Key` fields on one request: 400, and the handler never runs.
#[tokio::test]
async fn two_key_fields_get_400() {
    let runs = Arc::new(AtomicU32::new(0));
    let mut svc = layer(MemoryStore::new()).layer(charges(runs.clone()));
    let mut req = post("ann", Some("k1"), "x");
    req.headers_mut()
        .append("idempotency-key", "k2".parse().unwrap());
    let (status, _, body) = text(svc.ready().await.unwrap().call(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("more than one"), "{body}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Configuring a clone of a layer works and leaves the original as it was.
#[tokio::test]
async fn configuring_a_clone_does_not_panic_or_change_the_original() {
    let runs = Arc::new(AtomicU32::new(0));
    let base = layer(MemoryStore::new());
    let strict = base.clone().require_key(true);
    let mut lax = base.layer(charges(runs.clone()));
    let mut strict = strict.layer(charges(runs.clone()));
    let (status, _, _) = text(
        strict
            .ready()
            .await
            .unwrap()
            .call(post("ann", None, "x"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = text(
        lax.ready()
            .await
            .unwrap()
            .call(post("ann", None, "x"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
}
