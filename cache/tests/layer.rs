//! The tower layers: one inner call per key for concurrent requests, and the per-response
//! "do not store" decision (HTTP: `Cache-Control: no-store`, `Set-Cookie`, non-200).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use floodwall_cache::TieredCache;
use floodwall_cache::http::HttpCacheLayer;
use floodwall_cache::layer::CacheLayer;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

#[tokio::test(start_paused = true)]
async fn concurrent_requests_for_one_key_call_the_service_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |id: u32| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, tower::BoxError>(if id == 0 {
                    String::new()
                } else {
                    format!("user {id}")
                })
            }
        })
    };
    let cache: TieredCache<u32, String> = TieredCache::builder().build();
    let svc = CacheLayer::new(cache, |id: &u32| Some(*id))
        .store_if(|s: &String| !s.is_empty())
        .layer(inner);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.ready().await.unwrap().call(7).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "user 7");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let mut s = svc.clone();
    assert_eq!(s.ready().await.unwrap().call(7).await.unwrap(), "user 7");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "cached");
    // A response the predicate refuses is returned, not stored.
    s.ready().await.unwrap().call(0).await.unwrap();
    s.ready().await.unwrap().call(0).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn http_gets_are_cached_unless_the_response_says_not_to() {
    let calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let mut r = Response::new(Full::new(Bytes::from(format!("{} #{n}", req.uri()))));
                if req.uri().path() == "/private" {
                    r.headers_mut()
                        .insert("cache-control", "private, max-age=60".parse().unwrap());
                }
                if req.uri().path() == "/cookie" {
                    r.headers_mut().insert("set-cookie", "s=1".parse().unwrap());
                }
                r.headers_mut()
                    .insert("content-type", "text/plain".parse().unwrap());
                Ok::<_, Infallible>(r)
            }
        })
    };
    let cache = TieredCache::builder().build();
    let mut svc = HttpCacheLayer::new(cache).layer(inner);
    let body =
        |r: Response<Full<Bytes>>| async move { r.into_body().collect().await.unwrap().to_bytes() };

    let a = svc
        .ready()
        .await
        .unwrap()
        .call(get("/items?page=1"))
        .await
        .unwrap();
    assert_eq!(a.headers()["content-type"], "text/plain");
    assert_eq!(&body(a).await[..], b"/items?page=1 #1");
    let b = svc
        .ready()
        .await
        .unwrap()
        .call(get("/items?page=1"))
        .await
        .unwrap();
    assert_eq!(
        &body(b).await[..],
        b"/items?page=1 #1",
        "served from the cache"
    );
    let c = svc
        .ready()
        .await
        .unwrap()
        .call(get("/items?page=2"))
        .await
        .unwrap();
    assert_eq!(
        &body(c).await[..],
        b"/items?page=2 #2",
        "the query is part of the key"
    );
    for path in ["/private", "/cookie"] {
        svc.ready().await.unwrap().call(get(path)).await.unwrap();
        svc.ready().await.unwrap().call(get(path)).await.unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "private and cookie responses were not stored"
    );
    let post = Request::builder()
        .method(Method::POST)
        .uri("/items?page=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    svc.ready().await.unwrap().call(post).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 7, "a POST passes through");
}

/// A failing upstream: the HTTP layer keeps the inner error type (`Infallible` here, as on an
/// axum route) and answers `502`; the generic layer returns the failure as the inner error
/// type, built `From<CacheError>`.
#[tokio::test]
async fn failures_keep_the_inner_error_type() {
    let failing = service_fn(|_req: Request<Full<Bytes>>| async {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::other("upstream down"))
    });
    let cache = TieredCache::builder().build();
    let mut svc = HttpCacheLayer::new(cache).layer(failing);
    let r = svc.ready().await.unwrap().call(get("/x")).await.unwrap();
    assert_eq!(r.status(), http::StatusCode::BAD_GATEWAY);

    let cache: TieredCache<u32, String> = TieredCache::builder().build();
    let mut svc = CacheLayer::new(cache, |id: &u32| Some(*id)).layer(service_fn(|_: u32| async {
        Err::<String, tower::BoxError>("db down".into())
    }));
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    let cache_err = err
        .downcast_ref::<floodwall_cache::CacheError>()
        .expect("the cache's error, inside the inner error type");
    assert!(cache_err.to_string().contains("db down"), "{cache_err}");
}

/// With fail-safe on, a failing upstream (`500`) gets the last good `200` served in its place
/// while `max_stale` lasts; with nothing to serve, the `500` itself is the answer.
#[tokio::test]
async fn a_failing_upstream_gets_the_last_good_response_under_fail_safe() {
    let clock = floodwall_core::ManualClock::new();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let (failing, calls) = (failing.clone(), calls.clone());
        service_fn(move |_req: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let fail = failing.load(Ordering::SeqCst);
            async move {
                let mut r = Response::new(Full::new(Bytes::from(if fail {
                    "upstream down"
                } else {
                    "good"
                })));
                if fail {
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                Ok::<_, Infallible>(r)
            }
        })
    };
    let cache = TieredCache::builder()
        .ttl(Duration::from_secs(10))
        .fail_safe(Duration::from_secs(300), Duration::from_secs(5))
        .clock(clock.clone())
        .build();
    let mut svc = HttpCacheLayer::new(cache).layer(inner);
    let answer = |svc: &mut _, uri: &'static str| {
        let svc: &mut floodwall_cache::http::HttpCacheService<_> = svc;
        let fut = svc.call(get(uri));
        async move {
            let r: Response<Full<Bytes>> = fut.await.unwrap();
            let status = r.status();
            (status, r.into_body().collect().await.unwrap().to_bytes())
        }
    };
    svc.ready().await.unwrap();
    assert_eq!(
        answer(&mut svc, "/a").await,
        (http::StatusCode::OK, Bytes::from("good"))
    );
    failing.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(11));
    let mut served = 0;
    for _ in 0..20 {
        svc.ready().await.unwrap();
        let (status, body) = answer(&mut svc, "/a").await;
        assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"good"[..]));
        served += 1;
        clock.advance(Duration::from_secs(1));
    }
    // Never cached: a key with no good response gets the upstream's own 500.
    svc.ready().await.unwrap();
    assert_eq!(
        answer(&mut svc, "/b").await,
        (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from("upstream down")
        )
    );
    println!(
        "upstream failing: the last good 200 served {served} of 20 times, {} upstream calls",
        calls.load(Ordering::SeqCst)
    );
}

/// `Cache-Control` is read as directives, not substrings: a response whose directives merely
/// contain the letters of `private` or `no-store` is stored; `No-Store` in any case is not;
/// nor is a response that `Vary`s on `*` (the family's one `may_store` rule).
#[tokio::test]
async fn cache_control_directives_are_matched_whole() {
    let calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let cc = match req.uri().path() {
                    "/lookalike" => "public, max-age=60, x-private-hint=1, no-storey",
                    _ => "max-age=60, No-Store",
                };
                let mut r = Response::new(Full::new(Bytes::from_static(b"body")));
                r.headers_mut().insert("cache-control", cc.parse().unwrap());
                if req.uri().path() == "/vary-star" {
                    r.headers_mut()
                        .insert("cache-control", "max-age=60".parse().unwrap());
                    r.headers_mut().insert("vary", "accept, *".parse().unwrap());
                }
                Ok::<_, Infallible>(r)
            }
        })
    };
    let mut svc = HttpCacheLayer::new(TieredCache::builder().build()).layer(inner);
    for _ in 0..2 {
        svc.ready()
            .await
            .unwrap()
            .call(get("/lookalike"))
            .await
            .unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "stored: no directive forbids it"
    );
    for _ in 0..2 {
        svc.ready()
            .await
            .unwrap()
            .call(get("/nostore"))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "`No-Store` is not stored");
    for _ in 0..2 {
        svc.ready()
            .await
            .unwrap()
            .call(get("/vary-star"))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5, "`Vary: *` is not stored");
}

/// Responses stored under the tags their `Cache-Tag` header lists: invalidating one tag
/// takes every response that listed it and no other; a response listing too many tags is
/// answered but not stored.
#[tokio::test]
async fn responses_are_stored_under_their_cache_tag_header() {
    let calls = Arc::new(AtomicU32::new(0));
    let inner = {
        let calls = calls.clone();
        service_fn(move |req: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let tags = match req.uri().path() {
                    "/products/1" => "product-1, product-list".to_string(),
                    "/products/2" => "product-2 product-list".to_string(),
                    "/about" => "pages".to_string(),
                    _ => (0..17)
                        .map(|i| format!("t{i}"))
                        .collect::<Vec<_>>()
                        .join(","),
                };
                let mut r = Response::new(Full::new(Bytes::from_static(b"body")));
                r.headers_mut().insert("cache-tag", tags.parse().unwrap());
                Ok::<_, Infallible>(r)
            }
        })
    };
    let cache = TieredCache::builder().build();
    let mut svc = HttpCacheLayer::new(cache.clone())
        .tags_from(http::HeaderName::from_static("cache-tag"))
        .layer(inner);
    let paths = ["/products/1", "/products/2", "/about", "/too-many"];
    let mut call = async |path: &str| {
        let r = svc.ready().await.unwrap().call(get(path)).await.unwrap();
        assert_eq!(r.status(), 200);
    };
    for p in paths {
        call(p).await;
    }
    for p in paths {
        call(p).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5, "all but /too-many stored");
    cache.invalidate_tag("product-list").await.unwrap();
    for p in &paths[..3] {
        call(p).await;
    }
    let after = calls.load(Ordering::SeqCst);
    println!(
        "responses tagged from Cache-Tag: {after} upstream calls (5 before the invalidation, the 2 product pages again after)"
    );
    assert_eq!(
        after, 7,
        "the two product pages again, /about from the cache"
    );
}
