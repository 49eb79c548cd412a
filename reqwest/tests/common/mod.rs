//! Local servers the reqwest tests start.
#![allow(dead_code)] // each test file uses some of these

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// Serves `app` on a free loopback port; returns its base URL and the server task (abort it
/// to take the server away).
pub(crate) async fn serve_task(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, task)
}

/// Serves `app` on a free loopback port; returns its base URL.
pub(crate) async fn serve(app: Router) -> String {
    serve_task(app).await.0
}

/// A host answering `503` to every `GET /`, counting the requests that reach it.
pub(crate) fn dead_host(calls: Arc<AtomicU32>) -> Router {
    Router::new().route(
        "/",
        get(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::SERVICE_UNAVAILABLE }
        }),
    )
}

/// A host answering `200 ok` to `GET /`.
pub(crate) fn live_host() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}
