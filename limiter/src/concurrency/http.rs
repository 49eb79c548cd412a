//! The HTTP face of [`ConcurrencyLimit`]: a request over its key's limit is answered `429`
//! with `Retry-After` and a problem+json body; while the store fails closed, `503`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::request::Parts;
use http::{Request, Response, StatusCode};

use super::{ConcurrencyError, ConcurrencyLimit};
use floodwall_core::problem;

type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Holds a [`ConcurrencyLimit`] slot for each request while its handler runs (until the
/// response is returned; a streamed body is not counted). The key comes from `key` (a user,
/// a tenant, a route); a request it gives no key to is not limited.
///
/// ```
/// use floodwall_limiter::concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
///
/// let limit = ConcurrencyLimit::builder(10).build().unwrap();
/// let layer = ConcurrencyLimitLayer::new(limit, |parts| {
///     parts.headers.get("x-tenant")?.to_str().ok().map(str::to_owned)
/// });
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    limit: ConcurrencyLimit,
    key: KeyFn,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimitLayer {
    /// Over `limit`, each request keyed by `key`.
    pub fn new(
        limit: ConcurrencyLimit,
        key: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        ConcurrencyLimitLayer {
            limit,
            key: Arc::new(key),
        }
    }
}

impl<S> tower::Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ConcurrencyLimitLayer`] makes.
#[derive(Clone)]
pub struct ConcurrencyLimitService<S> {
    inner: S,
    layer: ConcurrencyLimitLayer,
}

impl<S: fmt::Debug> fmt::Debug for ConcurrencyLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The refusal: `429` for a full key, `503` while the store fails closed.
fn refusal<B: From<String>>(e: &ConcurrencyError) -> Response<B> {
    let (status, kind, retry_after) = match e {
        ConcurrencyError::Full { retry_after, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "concurrency",
            super::whole_seconds(*retry_after),
        ),
        ConcurrencyError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", 1),
    };
    let title = status.canonical_reason().unwrap_or("Error");
    let body = problem::body(
        &format!("rate-limit:{kind}"),
        title,
        status.as_u16(),
        &e.to_string(),
        "",
    );
    let mut r = Response::new(B::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(problem::CONTENT_TYPE),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for ConcurrencyLimitService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let key = (self.layer.key)(&parts);
        let req = Request::from_parts(parts, body);
        // Keep the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.layer.limit.clone();
        Box::pin(async move {
            let Some(key) = key else {
                return inner.call(req).await;
            };
            match limit.acquire(&key).await {
                Ok(permit) => {
                    let response = inner.call(req).await;
                    drop(permit);
                    response
                }
                Err(e) => Ok(refusal(&e)),
            }
        })
    }
}
