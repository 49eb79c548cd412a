//! HTTP (feature `http`): [`HttpCacheLayer`] caches `GET` responses by path and query in a
//! [`TieredCache`], running the upstream once per key however many requests miss at once. It
//! keeps the inner service's error type — so it sits on an axum route without a
//! `HandleErrorLayer` — and answers a failed load `502 Bad Gateway` and a load cut by the
//! cache's `hard_timeout` `504 Gateway Timeout`.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

pub use crate::cache_control::{CacheControl, Stated, may_store, stated};
use crate::layer::future::ResponseFuture;
use crate::layer::{BoxError, StoreIf};
use crate::{CacheError, Fetched, TieredCache};

type KeyFn = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

/// A buffered HTTP response, as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "redis", derive(serde::Serialize, serde::Deserialize))]
pub struct CachedResponse {
    /// Status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl CachedResponse {
    fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let mut r = Response::new(B::from(Bytes::from(self.body)));
        *r.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        for (n, v) in self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(&v),
            ) {
                r.headers_mut().append(n, v);
            }
        }
        r
    }
}

/// Whether a response may be cached by default: what [`may_store`] says of it (a `200`
/// without `Set-Cookie`, `Vary: *`, `Cache-Control: no-store` or `private`).
pub(crate) fn storable(r: &CachedResponse) -> bool {
    let mut headers = http::HeaderMap::with_capacity(r.headers.len());
    for (n, v) in &r.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(n, v);
        }
    }
    may_store(r.status, &headers, false)
}

/// Whether a response is a failure of the upstream by default: a `5xx`.
pub(crate) fn failed(r: &CachedResponse) -> bool {
    (500..600).contains(&r.status)
}

/// An upstream response the layer counts as a failed load (see
/// [`HttpCacheLayer::fails_if`]): the cache's fail-safe may answer the last good response
/// instead; with none, this response is the answer.
#[derive(Debug)]
struct UpstreamFailed(CachedResponse);

impl fmt::Display for UpstreamFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the upstream answered {}", self.0.status)
    }
}

impl std::error::Error for UpstreamFailed {}

/// Caches `GET` responses by path and query (other methods pass through). A response is
/// stored if [`may_store`] allows it — a `200` without `Set-Cookie`, `Vary: *`,
/// `Cache-Control: no-store` or `private` — or as [`store_if`](Self::store_if) says; the key can add request parts
/// (e.g. a `Vary`-ing header) with [`key`](Self::key).
///
/// A `5xx` response (or what [`fails_if`](Self::fails_if) says) is a failed load, not a value:
/// with fail-safe on (the cache's `max_stale`), the last good response is served in its
/// place; with none to serve, the failing response itself is the answer. Either way it is
/// not stored.
#[derive(Clone)]
pub struct HttpCacheLayer {
    cache: TieredCache<String, CachedResponse>,
    key: KeyFn,
    store_if: StoreIf<CachedResponse>,
    fails_if: StoreIf<CachedResponse>,
    tags_from: Option<HeaderName>,
}

impl fmt::Debug for HttpCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheLayer")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl HttpCacheLayer {
    /// Caches `GET`s in `cache`, keyed by path and query.
    pub fn new(cache: TieredCache<String, CachedResponse>) -> Self {
        HttpCacheLayer {
            cache,
            key: Arc::new(|p: &http::request::Parts| {
                (p.method == Method::GET).then(|| {
                    p.uri
                        .path_and_query()
                        .map_or("/", |q| q.as_str())
                        .to_owned()
                })
            }),
            store_if: Arc::new(storable),
            fails_if: Arc::new(failed),
            tags_from: None,
        }
    }

    /// Stores each response under the [cache tags](crate::tags) its `header` lists (comma-
    /// or space-separated, as `Cache-Tag` and `Surrogate-Key` do), so
    /// [`invalidate_tag`](TieredCache::invalidate_tag) takes every response carrying a tag.
    /// A response whose tags are not valid [`Tags`](crate::Tags) (more than 16, too long) is
    /// answered but not stored. The header is passed on to the client as it came.
    pub fn tags_from(mut self, header: HeaderName) -> Self {
        self.tags_from = Some(header);
        self
    }

    /// The key for a request (`None`: not cached).
    pub fn key(
        mut self,
        f: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(f);
        self
    }

    /// Which responses are stored.
    pub fn store_if(mut self, f: impl Fn(&CachedResponse) -> bool + Send + Sync + 'static) -> Self {
        self.store_if = Arc::new(f);
        self
    }

    /// Which responses are failures of the upstream (default: `5xx`): a failed load, so the
    /// fail-safe may serve the last good response instead. Checked before
    /// [`store_if`](Self::store_if).
    pub fn fails_if(mut self, f: impl Fn(&CachedResponse) -> bool + Send + Sync + 'static) -> Self {
        self.fails_if = Arc::new(f);
        self
    }
}

impl<S> Layer<S> for HttpCacheLayer {
    type Service = HttpCacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCacheService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`HttpCacheLayer`] makes.
#[derive(Clone)]
pub struct HttpCacheService<S> {
    inner: S,
    layer: HttpCacheLayer,
}

impl<S> HttpCacheService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for HttpCacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCacheService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpCacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body + From<Bytes> + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, Response<ResBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let key = (self.layer.key)(&parts);
        let req = Request::from_parts(parts, body);
        let Some(key) = key else {
            return ResponseFuture::passed(self.inner.call(req));
        };
        let inner = self.inner.clone();
        let cache = self.layer.cache.clone();
        let store_if = self.layer.store_if.clone();
        let fails_if = self.layer.fails_if.clone();
        let tags_from = self.layer.tags_from.clone();
        ResponseFuture::cached(Box::pin(async move {
            let answer = cache
                .get_or_fetch(key, move || async move {
                    let r = inner.oneshot(req).await.map_err(Into::into)?;
                    let (p, b) = r.into_parts();
                    let body = b.collect().await.map_err(Into::into)?.to_bytes();
                    let cached = CachedResponse {
                        status: p.status.as_u16(),
                        headers: p
                            .headers
                            .iter()
                            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                            .collect(),
                        body: body.to_vec(),
                    };
                    if fails_if(&cached) {
                        return Err(Box::new(UpstreamFailed(cached)) as BoxError);
                    }
                    if !store_if(&cached) {
                        return Ok(Fetched::Uncacheable(cached));
                    }
                    Ok::<_, BoxError>(match tags_from.map(|h| tags_of(&p.headers, &h)) {
                        None => Fetched::Value(cached),
                        Some(Ok(tags)) if tags.is_empty() => Fetched::Value(cached),
                        Some(Ok(tags)) => Fetched::Tagged(cached, tags),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "a response's cache tags were refused; not storing it");
                            Fetched::Uncacheable(cached)
                        }
                    })
                })
                .await;
            Ok(match answer {
                Ok(Some(c)) => c.into_response(),
                Ok(None) => failure(StatusCode::BAD_GATEWAY, "the upstream answered nothing"),
                Err(CacheError::Timeout(_)) => {
                    failure(StatusCode::GATEWAY_TIMEOUT, "the upstream timed out")
                }
                Err(CacheError::Loader(e)) if e.downcast_ref::<UpstreamFailed>().is_some() => {
                    let failed = e
                        .downcast_ref::<UpstreamFailed>()
                        .expect("checked just now");
                    failed.0.clone().into_response()
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cached upstream failed; answering 502");
                    failure(StatusCode::BAD_GATEWAY, "the upstream failed")
                }
            })
        }))
    }
}

/// The tags listed in `headers`' `name` values (comma- or space-separated).
fn tags_of(headers: &http::HeaderMap, name: &HeaderName) -> Result<crate::Tags, crate::TagError> {
    let listed = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ' ']))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    crate::Tags::new(listed)
}

/// The answer to a request whose load failed: the layer keeps the inner service's error type,
/// so a failure shared by every waiting request is answered, not returned.
fn failure<B: From<Bytes>>(status: StatusCode, text: &'static str) -> Response<B> {
    let mut r = Response::new(B::from(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
