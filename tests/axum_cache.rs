//! `HttpCacheLayer` on an axum route, with no `HandleErrorLayer`: it keeps the route's
//! `Infallible` error type. The route's handler runs once for repeated GETs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use floodwall::cache::TieredCache;
use floodwall::cache::http::HttpCacheLayer;
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

#[tokio::test]
async fn http_cache_layer_sits_on_an_axum_route() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let app: Router = Router::new()
        .route(
            "/price",
            get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { format!("price #{n}") }
            }),
        )
        .layer(HttpCacheLayer::new(TieredCache::builder().build()));
    for _ in 0..3 {
        let response = app
            .clone()
            .oneshot(Request::get("/price").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"price #1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
}
