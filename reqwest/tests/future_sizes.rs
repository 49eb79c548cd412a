//! What a middleware's future costs to box: every request's future is moved into a `Box` by
//! reqwest-middleware, byte for byte, so its size is paid on every request. A probe placed
//! before the middleware measures the boxed future it is handed (`size_of_val` of the
//! concrete future behind the `dyn`): `RetryMiddleware`'s and `HostPipeline`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use floodwall_reqwest::RetryMiddleware;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, Middleware, Next};

/// Records the size of the future the rest of the stack answers with.
struct Probe(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Middleware for Probe {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let fut = next.run(req, extensions);
        self.0.store(std::mem::size_of_val(&*fut), Ordering::SeqCst);
        fut.await
    }
}

/// Answers `200` itself.
struct Canned;

#[async_trait::async_trait]
impl Middleware for Canned {
    async fn handle(
        &self,
        _: Request,
        _: &mut Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        Ok(Response::from(http::Response::new("")))
    }
}

#[tokio::test]
async fn the_retry_middlewares_future_stays_small() {
    let size = Arc::new(AtomicUsize::new(0));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(Probe(size.clone()))
        .with(RetryMiddleware::new(
            floodwall_resilience::retry::Retry::builder()
                .max_attempts(std::num::NonZeroU32::new(3).unwrap())
                .build(),
        ))
        .with(Canned)
        .build();
    let resp = client.get("http://127.0.0.1:9/x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = size.load(Ordering::SeqCst);
    println!("RetryMiddleware's future, boxed on every request: {bytes} bytes");
    assert!(bytes > 0);
    // 3,720 bytes before the attempts were boxed alone and their timers and spans apart.
    assert!(bytes <= 1280, "{bytes} bytes");
}

#[tokio::test]
async fn the_host_pipelines_future_stays_small() {
    use floodwall_reqwest::HostPipeline;
    let size = Arc::new(AtomicUsize::new(0));
    let pipeline = HostPipeline::new(std::num::NonZeroUsize::new(16).unwrap(), |_| {
        floodwall_resilience::Pipeline::builder()
            .retry(
                floodwall_resilience::retry::Retry::builder()
                    .max_attempts(std::num::NonZeroU32::new(3).unwrap())
                    .build(),
            )
            .build()
    });
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(Probe(size.clone()))
        .with(pipeline)
        .with(Canned)
        .build();
    let resp = client.get("http://127.0.0.1:9/x").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = size.load(Ordering::SeqCst);
    println!("HostPipeline's future, boxed on every request: {bytes} bytes");
    assert!(bytes > 0);
    assert!(bytes <= 1024, "{bytes} bytes");
}
