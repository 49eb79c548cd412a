//! What the HTTP layer answers besides a plain 429: an extractor's refusal of a request it
//! cannot key, problem+json bodies (RFC 9457), and the burst in `RateLimit-Policy`.

use std::convert::Infallible;
use std::num::NonZeroU32;

use floodwall_limiter::http::HttpRateLimitLayer;
use floodwall_limiter::layer::{Descriptor, Error, KeyRejection, RateLimitLayer};
use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

async fn ok(_req: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("hello".to_owned()))
}

fn limiter() -> RateLimiter {
    RateLimiter::builder()
        .limit(Limit::new(
            "global",
            Algorithm::Gcra,
            Quota::per_second(n(1000)),
        ))
        .limit(
            Limit::new(
                "key",
                Algorithm::Gcra,
                Quota::per_minute(n(60)).allow_burst(n(2)),
            )
            .keyed_by("api_key"),
        )
        .build()
        .unwrap()
}

/// Keys by `x-api-key`; a request without one is refused with 401.
fn by_api_key(req: &Request<String>, d: &mut Descriptor) {
    match req.headers().get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(k) if !k.is_empty() => d.push("api_key", k),
        _ => d.reject(KeyRejection::unauthorized(
            "an x-api-key header is required",
        )),
    }
}

fn req(key: Option<&str>) -> Request<String> {
    let mut b = Request::builder().uri("/v1/charges");
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    b.body(String::new()).unwrap()
}

async fn send<S>(svc: &mut S, r: Request<String>) -> Response<String>
where
    S: Service<Request<String>, Response = Response<String>>,
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(r).await.unwrap()
}

fn json(r: &Response<String>) -> serde_json::Value {
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    serde_json::from_str(r.body()).expect("a JSON body")
}

/// A missing API key is answered with the extractor's 401 and is decided by no limit: not
/// even the global one takes from it, and the service never sees it.
#[tokio::test]
async fn a_request_the_extractor_cannot_key_gets_its_status_not_the_global_limit() {
    let shared = limiter();
    let mut svc = HttpRateLimitLayer::new(shared.clone(), by_api_key)
        .plain_text()
        .layer(service_fn(ok));
    for _ in 0..5 {
        let r = send(&mut svc, req(None)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.body(), "an x-api-key header is required\n");
        assert!(r.headers().get("ratelimit").is_none());
    }
    assert_eq!(shared.memory_keys(), 0, "no limit was consulted");
    let r = send(&mut svc, req(Some("k1"))).await;
    assert_eq!(r.status(), StatusCode::OK);

    // The generic layer fails with the inner service's error type.
    let mut svc =
        RateLimitLayer::new(shared, by_api_key).layer(service_fn(|_: Request<String>| async {
            Ok::<_, Error<Infallible>>("ok")
        }));
    match svc.ready().await.unwrap().call(req(None)).await {
        Err(Error::Unkeyed(r)) => assert_eq!(r.status, 401),
        other => panic!("{other:?}"),
    }
    // A status that is not an error status is answered as 400.
    let mut svc = HttpRateLimitLayer::new(limiter(), |_: &Request<String>, d: &mut Descriptor| {
        d.reject(KeyRejection::new(200, "no key"))
    })
    .layer(service_fn(ok));
    let r = send(&mut svc, req(None)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// RFC 9457 problem details by default, as the idempotency layer answers: 429 with the
/// binding limit and `retry_after`, and the extractor's refusal.
#[tokio::test]
async fn refusals_are_problem_json_by_default() {
    let mut svc = HttpRateLimitLayer::new(limiter(), by_api_key).layer(service_fn(ok));
    for _ in 0..2 {
        let r = send(&mut svc, req(Some("k"))).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = send(&mut svc, req(Some("k"))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = json(&r);
    println!("429 problem+json: {}", r.body());
    assert_eq!(body["type"], "urn:floodwall:rate-limit:exceeded");
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["status"], 429);
    assert_eq!(body["limit"], "key");
    let retry = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(body["retry_after"], retry);
    assert!(retry >= 1);

    let r = send(&mut svc, req(None)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body = json(&r);
    assert_eq!(body["type"], "urn:floodwall:rate-limit:unkeyed");
    assert_eq!(body["detail"], "an x-api-key header is required");
}

/// draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy` names the quota `q` per window
/// `w`; a burst other than `q` is stated as a `burst` parameter (the draft's examples use
/// it; clients ignore parameters they do not know).
#[tokio::test]
async fn ratelimit_policy_states_the_burst() {
    let mut svc = HttpRateLimitLayer::new(limiter(), by_api_key).layer(service_fn(ok));
    let r = send(&mut svc, req(Some("k"))).await;
    assert_eq!(r.headers()["ratelimit-policy"], "\"key\";q=60;w=60;burst=2");
    // Without a separate burst, no parameter.
    let plain = RateLimiter::builder()
        .limit(Limit::new("key", Algorithm::Gcra, Quota::per_minute(n(60))).keyed_by("api_key"))
        .build()
        .unwrap();
    let mut svc = HttpRateLimitLayer::new(plain, by_api_key).layer(service_fn(ok));
    let r = send(&mut svc, req(Some("k"))).await;
    assert_eq!(r.headers()["ratelimit-policy"], "\"key\";q=60;w=60");
}
