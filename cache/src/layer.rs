//! `tower` layers (feature `tower`): [`CacheLayer`] answers requests from a
//! [`TieredCache`] keyed by a function of the request, running the inner service once per
//! key however many requests miss at once. The service keeps the inner service's error type:
//! a failed or timed-out load comes back as `S::Error::from(CacheError)` (`tower::BoxError`
//! is such a type). For HTTP `GET`s see `http::HttpCacheLayer` (feature `http`).

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use crate::{CacheError, Fetched, TieredCache};

pub mod future;

pub(crate) use floodwall_core::BoxError;
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

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
///     .layer(service_fn(|id: u32| async move { Ok::<_, tower::BoxError>(format!("user {id}")) }));
/// assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), "user 7");
/// # }
/// ```
pub struct CacheLayer<K, V, KF> {
    cache: TieredCache<K, V>,
    key: Arc<KF>,
    store_if: StoreIf<V>,
}

pub(crate) type StoreIf<V> = Arc<dyn Fn(&V) -> bool + Send + Sync>;

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

impl<S, K, V, KF> CacheService<S, K, V, KF> {
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
    S::Error: From<CacheError> + Into<BoxError>,
    Req: Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    KF: Fn(&Req) -> Option<K> + Send + Sync + 'static,
{
    type Response = V;
    type Error = S::Error;
    type Future = future::ResponseFuture<S::Future, V, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(key) = (self.layer.key)(&req) else {
            return future::ResponseFuture::passed(self.inner.call(req));
        };
        let inner = self.inner.clone();
        let cache = self.layer.cache.clone();
        let store_if = self.layer.store_if.clone();
        future::ResponseFuture::cached(Box::pin(async move {
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
                Ok(None) => Err(S::Error::from(CacheError::Loader(Arc::new(
                    "the cached service answered nothing".into(),
                )))),
                Err(e) => Err(S::Error::from(e)),
            }
        }))
    }
}
