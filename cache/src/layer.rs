//! `tower` layers (feature `tower`): [`CacheLayer`] answers requests from a
//! [`TieredCache`] keyed by a function of the request, running the inner service once per
//! key however many requests miss at once; (feature `http`) `HttpCacheLayer` does it for
//! HTTP `GET`s, keyed by path and query.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use crate::{CacheError, Fetched, TieredCache};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Caches a service's responses. A request whose key function answers `None` passes
/// through; a response the store predicate refuses is returned but not cached.
///
/// ```
/// use std::time::Duration;
/// use floodwall_cache::TieredCache;
/// use floodwall_cache::layer::CacheLayer;
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache: TieredCache<u32, String> = TieredCache::builder().ttl(Duration::from_secs(60)).build();
/// let mut svc = CacheLayer::new(cache, |id: &u32| Some(*id))
///     .store_if(|answer: &String| !answer.is_empty())
///     .layer(service_fn(|id: u32| async move { Ok::<_, std::io::Error>(format!("user {id}")) }));
/// assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), "user 7");
/// # }
/// ```
pub struct CacheLayer<K, V, KF> {
    cache: TieredCache<K, V>,
    key: Arc<KF>,
    store_if: StoreIf<V>,
}

type StoreIf<V> = Arc<dyn Fn(&V) -> bool + Send + Sync>;

impl<K, V, KF> Clone for CacheLayer<K, V, KF> {
    fn clone(&self) -> Self {
        CacheLayer {
            cache: self.cache.clone(),
            key: self.key.clone(),
            store_if: self.store_if.clone(),
        }
    }
}

impl<K, V, KF> fmt::Debug for CacheLayer<K, V, KF> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<K, V, KF> CacheLayer<K, V, KF> {
    /// Caches in `cache` under `key(&request)`; stores every response.
    pub fn new(cache: TieredCache<K, V>, key: KF) -> Self {
        CacheLayer {
            cache,
            key: Arc::new(key),
            store_if: Arc::new(|_: &V| true),
        }
    }

    /// Stores only the responses `f` accepts (the others are returned uncached).
    pub fn store_if(mut self, f: impl Fn(&V) -> bool + Send + Sync + 'static) -> Self {
        self.store_if = Arc::new(f);
        self
    }
}

impl<S, K, V, KF> Layer<S> for CacheLayer<K, V, KF> {
    type Service = CacheService<S, K, V, KF>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`CacheLayer`] makes.
pub struct CacheService<S, K, V, KF> {
    inner: S,
    layer: CacheLayer<K, V, KF>,
}

impl<S: Clone, K, V, KF> Clone for CacheService<S, K, V, KF> {
    fn clone(&self) -> Self {
        CacheService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K, V, KF> fmt::Debug for CacheService<S, K, V, KF> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, K, V, KF> Service<Req> for CacheService<S, K, V, KF>
where
    S: Service<Req, Response = V> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    KF: Fn(&Req) -> Option<K> + Send + Sync + 'static,
{
    type Response = V;
    type Error = BoxError;
    type Future = BoxFuture<Result<V, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.layer.key)(&req) else {
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        };
        let inner = self.inner.clone();
        let cache = self.layer.cache.clone();
        let store_if = self.layer.store_if.clone();
        Box::pin(async move {
            let answer = cache
                .get_or_fetch(key, move || async move {
                    let v = inner.oneshot(req).await.map_err(Into::into)?;
                    Ok::<_, BoxError>(if store_if(&v) {
                        Fetched::Value(v)
                    } else {
                        Fetched::Uncacheable(v)
                    })
                })
                .await;
            match answer {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err("the cached service answered nothing".into()),
                Err(CacheError::Loader(e)) => Err(Box::new(LoaderFailed(e)) as BoxError),
                Err(e) => Err(Box::new(e) as BoxError),
            }
        })
    }
}

/// The inner service failed (shared by every request that waited for the same load).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LoaderFailed(pub Arc<BoxError>);

#[cfg(feature = "http")]
pub use self::http_layer::{CachedResponse, HttpCacheLayer};

#[cfg(feature = "http")]
mod http_layer {
    use bytes::Bytes;
    use http::header::{CACHE_CONTROL, HeaderName, HeaderValue, SET_COOKIE};
    use http::{Method, Request, Response, StatusCode};
    use http_body::Body;
    use http_body_util::BodyExt;

    use super::*;

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

    /// Whether a response may be cached by default: `200`, no `Set-Cookie`, and no
    /// `Cache-Control: no-store` or `private`.
    pub(crate) fn storable(r: &CachedResponse) -> bool {
        let header = |name: &'static str| {
            r.headers
                .iter()
                .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        };
        r.status == 200
            && header(SET_COOKIE.as_str()).next().is_none()
            && !header(CACHE_CONTROL.as_str()).any(|(_, v)| {
                let v = String::from_utf8_lossy(v).to_ascii_lowercase();
                v.contains("no-store") || v.contains("private")
            })
    }

    /// Caches `GET` responses by path and query (other methods pass through). A response is
    /// stored if it is a `200` without `Set-Cookie`, `Cache-Control: no-store` or
    /// `private` (or as [`store_if`](Self::store_if) says); the key can add request parts
    /// (e.g. a `Vary`-ing header) with [`key`](Self::key).
    #[derive(Clone)]
    pub struct HttpCacheLayer {
        cache: TieredCache<String, CachedResponse>,
        key: KeyFn,
        store_if: StoreIf<CachedResponse>,
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
            }
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
        pub fn store_if(
            mut self,
            f: impl Fn(&CachedResponse) -> bool + Send + Sync + 'static,
        ) -> Self {
            self.store_if = Arc::new(f);
            self
        }
    }

    impl<S> Layer<S> for HttpCacheLayer {
        type Service = HttpCache<S>;

        fn layer(&self, inner: S) -> Self::Service {
            HttpCache {
                inner,
                layer: self.clone(),
            }
        }
    }

    /// The service [`HttpCacheLayer`] makes.
    #[derive(Clone)]
    pub struct HttpCache<S> {
        inner: S,
        layer: HttpCacheLayer,
    }

    impl<S: fmt::Debug> fmt::Debug for HttpCache<S> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("HttpCache")
                .field("inner", &self.inner)
                .finish_non_exhaustive()
        }
    }

    impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpCache<S>
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
        type Error = BoxError;
        type Future = BoxFuture<Result<Response<ResBody>, BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.inner.poll_ready(cx).map_err(Into::into)
        }

        fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
            let (parts, body) = req.into_parts();
            let key = (self.layer.key)(&parts);
            let req = Request::from_parts(parts, body);
            let Some(key) = key else {
                let fut = self.inner.call(req);
                return Box::pin(async move { fut.await.map_err(Into::into) });
            };
            let inner = self.inner.clone();
            let cache = self.layer.cache.clone();
            let store_if = self.layer.store_if.clone();
            Box::pin(async move {
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
                        Ok::<_, BoxError>(if store_if(&cached) {
                            Fetched::Value(cached)
                        } else {
                            Fetched::Uncacheable(cached)
                        })
                    })
                    .await;
                match answer {
                    Ok(Some(c)) => Ok(c.into_response()),
                    Ok(None) => Err("the cached service answered nothing".into()),
                    Err(CacheError::Loader(e)) => Err(Box::new(LoaderFailed(e)) as BoxError),
                    Err(e) => Err(Box::new(e) as BoxError),
                }
            })
        }
    }
}
