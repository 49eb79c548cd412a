//! The `GET` response cache against local axum servers these tests start: `max-age` hits,
//! `ETag` and `Last-Modified` revalidation (each `304` counted), `stale-if-error` when the
//! origin answers `500` or is gone, `stale-while-revalidate` refreshed in the background,
//! what is never stored, `Vary`, coalesced misses, and two client instances sharing an entry
//! through a real Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use floodwall_cache::TieredCache;
use floodwall_reqwest::{HttpCache, HttpCacheStats, StoredResponse};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

mod common;
use common::serve_task as serve;

fn memory_cache() -> TieredCache<String, StoredResponse> {
    TieredCache::builder()
        .max_capacity(1000)
        .ttl(Duration::from_secs(3600))
        .build()
}

/// A client with `cache` as its only middleware; no pooled connections, so a stopped
/// server is gone at once.
fn client(cache: HttpCache) -> ClientWithMiddleware {
    let plain = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    ClientBuilder::new(plain).with(cache).build()
}

/// Two instances' caches, each on its own connection to `server`, sharing one keyspace.
async fn redis_instances(
    server: &floodwall_testkit::RedisServer,
) -> Vec<(TieredCache<String, StoredResponse>, HttpCache)> {
    use floodwall_cache::redis::RedisTier;
    use floodwall_core::Keyspace;
    use floodwall_core::redis::{RedisConnection, StoreOptions};

    let mut instances = Vec::new();
    for _ in 0..2 {
        let conn = RedisConnection::standalone(server.url())
            .connect()
            .await
            .unwrap();
        let tier =
            RedisTier::new(StoreOptions::new(conn).keyspace(Keyspace::new("http", 1).unwrap()));
        let tiered = TieredCache::builder()
            .ttl(Duration::from_secs(3600))
            .redis(tier)
            .build();
        instances.push((tiered.clone(), HttpCache::new(tiered)));
    }
    instances
}

async fn fetch(client: &ClientWithMiddleware, url: &str) -> (StatusCode, String) {
    let resp = client.get(url).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// An origin that counts its requests and answers `body-<n>` with `cache_control`.
fn counting(cache_control: &'static str, calls: Arc<AtomicU32>) -> Router {
    Router::new().route(
        "/r",
        get(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { ([("cache-control", cache_control)], format!("body-{n}")) }
        }),
    )
}

#[tokio::test]
async fn max_age_hits_are_served_without_a_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let (base, _server) = serve(counting("max-age=60", calls.clone())).await;
    let cache = HttpCache::new(memory_cache());
    let c = client(cache.clone());
    let url = format!("{base}/r");
    for _ in 0..5 {
        assert_eq!(
            fetch(&c, &url).await,
            (StatusCode::OK, "body-1".to_string())
        );
    }
    let resp = c.get(&url).send().await.unwrap();
    let age = resp
        .headers()
        .get("age")
        .map(|v| v.to_str().unwrap().to_owned());
    let stats = cache.stats();
    println!(
        "max-age=60: 6 GETs, {} origin requests, {stats:?}, age header {age:?}",
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((stats.hits, stats.fetched, stats.stored), (5, 1, 1));
    assert!(age.is_some(), "a hit carries its Age");
    assert_eq!(resp.url().as_str(), url, "a hit keeps the request's URL");
}

/// An origin whose responses are stale at once and carry an `ETag` (`/etag`) or a
/// `Last-Modified` (`/modified`); it answers a matching conditional request `304` and counts
/// both kinds of answers.
fn validating(full: Arc<AtomicU32>, not_modified: Arc<AtomicU32>) -> Router {
    const MODIFIED: &str = "Wed, 21 Oct 2026 07:28:00 GMT";
    let answer =
        move |headers: HeaderMap, name: &'static str, value: &'static str, cond: &'static str| {
            if headers.get(cond).is_some_and(|v| v == value) {
                not_modified.fetch_add(1, Ordering::SeqCst);
                return (
                    StatusCode::NOT_MODIFIED,
                    [("cache-control", "max-age=0"), (name, value)],
                    String::new(),
                );
            }
            let n = full.fetch_add(1, Ordering::SeqCst) + 1;
            (
                StatusCode::OK,
                [("cache-control", "max-age=0"), (name, value)],
                format!("full-{n}"),
            )
        };
    let a = answer.clone();
    Router::new()
        .route(
            "/etag",
            get(move |h: HeaderMap| async move { a(h, "etag", "\"v1\"", "if-none-match") }),
        )
        .route(
            "/modified",
            get(move |h: HeaderMap| async move {
                answer(h, "last-modified", MODIFIED, "if-modified-since")
            }),
        )
}

#[tokio::test]
async fn stale_responses_are_revalidated_with_etag_and_last_modified_and_each_304_counted() {
    let (full, not_modified) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (base, _server) = serve(validating(full.clone(), not_modified.clone())).await;
    let tiered = memory_cache();
    let cache = HttpCache::new(tiered.clone());
    let c = client(cache.clone());
    for path in ["etag", "modified"] {
        for _ in 0..3 {
            assert_eq!(
                fetch(&c, &format!("{base}/{path}")).await,
                (
                    StatusCode::OK,
                    format!("full-{}", if path == "etag" { 1 } else { 2 })
                )
            );
        }
    }
    let stats = cache.stats();
    println!(
        "max-age=0 with validators: 6 GETs, {} full answers, {} × 304 from the origin; {stats:?}",
        full.load(Ordering::SeqCst),
        not_modified.load(Ordering::SeqCst)
    );
    assert_eq!(full.load(Ordering::SeqCst), 2, "one full answer per URL");
    assert_eq!(not_modified.load(Ordering::SeqCst), 4);
    assert_eq!(stats.revalidated, 4, "every 304 is counted");
    assert_eq!(stats.hits, 0, "a max-age=0 response is never a fresh hit");
    // The revalidations are the tiered cache's loads: it counts them itself.
    let engine = tiered.stats();
    println!("the tiered cache under it: {engine:?}");
    assert_eq!((engine.loads, engine.revalidated), (6, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_one_instance_stored_in_redis_is_revalidated_by_another_with_a_304() {
    let Some(server) = floodwall_testkit::RedisServer::start_or_skip(
        "an_entry_one_instance_stored_in_redis_is_revalidated_by_another_with_a_304",
    ) else {
        return;
    };
    let (full, not_modified) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (base, _origin) = serve(validating(full.clone(), not_modified.clone())).await;
    let instances: Vec<_> = redis_instances(&server)
        .await
        .into_iter()
        .map(|(tiered, cache)| (tiered, client(cache)))
        .collect();
    let url = format!("{base}/etag");
    assert_eq!(fetch(&instances[0].1, &url).await.1, "full-1");
    assert_eq!(
        fetch(&instances[1].1, &url).await.1,
        "full-1",
        "instance b revalidated a's response from Redis and was answered its body"
    );
    let (a, b) = (instances[0].0.stats(), instances[1].0.stats());
    println!(
        "a stored, b revalidated: {} full answer(s), {} × 304; a {a:?}; b {b:?}",
        full.load(Ordering::SeqCst),
        not_modified.load(Ordering::SeqCst)
    );
    assert_eq!(
        (
            full.load(Ordering::SeqCst),
            not_modified.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
    assert_eq!((a.revalidated, b.revalidated, b.l2_hits), (0, 1, 1));
}

#[tokio::test]
async fn stale_if_error_serves_the_last_good_response_when_the_origin_fails_or_is_gone() {
    let calls = Arc::new(AtomicU32::new(0));
    let failing_after_first = |cache_control: &'static str, calls: Arc<AtomicU32>| {
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => (
                        StatusCode::OK,
                        [("cache-control", cache_control)],
                        "good".to_string(),
                    )
                        .into_response(),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
                }
            }
        }
    };
    let strict = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/sie",
            get(failing_after_first(
                "max-age=0, stale-if-error=60",
                calls.clone(),
            )),
        )
        .route(
            "/strict",
            get(failing_after_first(
                "max-age=0, must-revalidate, stale-if-error=60",
                strict.clone(),
            )),
        );
    let (base, server) = serve(app).await;
    let cache = HttpCache::new(memory_cache());
    let c = client(cache.clone());
    let (sie, strict_url) = (format!("{base}/sie"), format!("{base}/strict"));
    assert_eq!(fetch(&c, &sie).await, (StatusCode::OK, "good".to_string()));
    assert_eq!(
        fetch(&c, &sie).await,
        (StatusCode::OK, "good".to_string()),
        "a 500 is replaced by the stale response"
    );
    assert_eq!(
        fetch(&c, &strict_url).await,
        (StatusCode::OK, "good".to_string())
    );
    assert_eq!(
        fetch(&c, &strict_url).await.0,
        StatusCode::INTERNAL_SERVER_ERROR,
        "must-revalidate forbids serving stale"
    );
    let after_500 = cache.stats().stale_if_error;

    server.abort();
    let _ = server.await;
    assert_eq!(
        fetch(&c, &sie).await,
        (StatusCode::OK, "good".to_string()),
        "a refused connection is replaced too"
    );
    assert!(
        c.get(&strict_url).send().await.is_err(),
        "must-revalidate: the failure is the answer"
    );
    let stats = cache.stats();
    println!(
        "stale-if-error: served {after_500} stale for a 500, {} in all after the origin went away; {stats:?}",
        stats.stale_if_error
    );
    assert_eq!((after_500, stats.stale_if_error), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let calls = Arc::new(AtomicU32::new(0));
    let (base, _server) = serve(counting(
        "max-age=0, stale-while-revalidate=60",
        calls.clone(),
    ))
    .await;
    let refresher = ClientBuilder::new(reqwest::Client::new()).build();
    let cache = HttpCache::new(memory_cache()).refresh_with(refresher);
    let c = client(cache.clone());
    let url = format!("{base}/r");
    assert_eq!(fetch(&c, &url).await.1, "body-1");
    assert_eq!(
        fetch(&c, &url).await.1,
        "body-1",
        "the stale response answers at once"
    );
    // The background refresh stores the new response; wait for it, bounded.
    tokio::time::timeout(Duration::from_secs(10), async {
        while cache.stats().stored < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the background refresh stored a response");
    assert_eq!(
        fetch(&c, &url).await.1,
        "body-2",
        "the refreshed response is served next"
    );
    let stats = cache.stats();
    println!(
        "stale-while-revalidate: {} origin requests for 3 GETs; {stats:?}",
        calls.load(Ordering::SeqCst)
    );
    assert!(stats.stale_while_revalidate >= 2);
    assert!(calls.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn no_store_private_set_cookie_and_authorized_responses_are_not_stored() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = |headers: [(&'static str, &'static str); 2], calls: Arc<AtomicU32>| {
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { (headers, "x") }
        }
    };
    let app = Router::new()
        .route(
            "/no-store",
            get(counted(
                [("cache-control", "no-store"), ("x-a", "1")],
                calls.clone(),
            )),
        )
        .route(
            "/private",
            get(counted(
                [("cache-control", "private, max-age=60"), ("x-a", "1")],
                calls.clone(),
            )),
        )
        .route(
            "/cookie",
            get(counted(
                [("cache-control", "max-age=60"), ("set-cookie", "s=1")],
                calls.clone(),
            )),
        )
        .route(
            "/auth",
            get(counted(
                [("cache-control", "max-age=60"), ("x-a", "1")],
                calls.clone(),
            )),
        )
        .route(
            "/auth-public",
            get(counted(
                [("cache-control", "public, max-age=60"), ("x-a", "1")],
                calls.clone(),
            )),
        );
    let (base, _server) = serve(app).await;
    let cache = HttpCache::new(memory_cache());
    let c = client(cache.clone());
    for path in ["no-store", "private", "cookie"] {
        for _ in 0..2 {
            fetch(&c, &format!("{base}/{path}")).await;
        }
    }
    for path in ["auth", "auth-public"] {
        for _ in 0..2 {
            c.get(format!("{base}/{path}"))
                .header("authorization", "Bearer t")
                .send()
                .await
                .unwrap();
        }
    }
    // A request's own no-store passes the cache by.
    c.get(format!("{base}/auth-public"))
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    let stats = cache.stats();
    println!(
        "uncacheable: 11 GETs, {} origin requests; {stats:?}",
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2 * 4 + 1 + 1,
        "only the public authorized response is reused"
    );
    assert_eq!((stats.stored, stats.hits), (1, 1));
}

#[tokio::test]
async fn vary_keeps_variants_apart_and_no_cache_revalidates() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/v",
        get(move |h: HeaderMap| {
            counter.fetch_add(1, Ordering::SeqCst);
            let lang = h
                .get("accept-language")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            async move {
                (
                    [("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                    lang,
                )
            }
        }),
    );
    let (base, _server) = serve(app).await;
    let cache = HttpCache::new(memory_cache());
    let c = client(cache.clone());
    let url = format!("{base}/v");
    let in_lang = |lang: &'static str| c.get(&url).header("accept-language", lang).send();
    assert_eq!(in_lang("en").await.unwrap().text().await.unwrap(), "en");
    assert_eq!(in_lang("en").await.unwrap().text().await.unwrap(), "en");
    assert_eq!(in_lang("fr").await.unwrap().text().await.unwrap(), "fr");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "en hit once, fr fetched");
    let fresh = c
        .get(&url)
        .header("accept-language", "fr")
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.text().await.unwrap(), "fr");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "no-cache on the request skips the fresh hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_url_send_one_request() {
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let counter = calls.clone();
    let app = Router::new().route(
        "/slow",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut release = rx.clone();
            async move {
                // Held until every caller has asked.
                let _ = release.wait_for(|go| *go).await;
                ([("cache-control", "max-age=60")], "once")
            }
        }),
    );
    let (base, _server) = serve(app).await;
    let cache = HttpCache::new(memory_cache());
    let c = client(cache.clone());
    let url = format!("{base}/slow");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { fetch(&c, &url).await })
        })
        .collect();
    // The first request reaches the origin; the other 19 wait inside the cache.
    tokio::time::timeout(Duration::from_secs(10), async {
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    tx.send(true).unwrap();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (StatusCode::OK, "once".to_string()));
    }
    let stats: HttpCacheStats = cache.stats();
    println!(
        "20 concurrent GETs of a cold URL: {} origin requests; {stats:?}",
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.fetched + stats.hits, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_client_instances_share_an_entry_through_redis() {
    let Some(server) = floodwall_testkit::RedisServer::start_or_skip(
        "two_client_instances_share_an_entry_through_redis",
    ) else {
        return;
    };
    let calls = Arc::new(AtomicU32::new(0));
    let (base, _origin) = serve(counting("max-age=60", calls.clone())).await;
    let instances: Vec<_> = redis_instances(&server)
        .await
        .into_iter()
        .map(|(_, cache)| (cache.clone(), client(cache)))
        .collect();
    let url = format!("{base}/r");
    assert_eq!(fetch(&instances[0].1, &url).await.1, "body-1");
    assert_eq!(
        fetch(&instances[1].1, &url).await.1,
        "body-1",
        "instance b is answered from Redis"
    );
    let (a, b) = (instances[0].0.stats(), instances[1].0.stats());
    println!(
        "two instances, one Redis: {} origin request(s); a {a:?}; b {b:?}",
        calls.load(Ordering::SeqCst)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((a.fetched, b.fetched, b.hits), (1, 0, 1));
}

#[tokio::test]
async fn configuring_a_clone_leaves_the_original_alone() {
    let original = HttpCache::new(memory_cache());
    let keep = original.clone();
    let tuned = original.clone().max_body(16);
    let calls = Arc::new(AtomicU32::new(0));
    let (base, _server) = serve(counting("max-age=60", calls.clone())).await;
    let url = format!("{base}/r");
    fetch(&client(tuned.clone()), &url).await;
    println!("original {:?}; tuned {:?}", keep.stats(), tuned.stats());
    assert_eq!(
        keep.stats(),
        HttpCacheStats::default(),
        "the original counts nothing"
    );
    assert_eq!(tuned.stats().stored, 1);
}
