//! The tower face of [`Registry`]: [`KeyedLayer`] routes each request through the layer its
//! key picks.

use std::fmt;
use std::task::{Context, Poll};

use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use super::Registry;

/// Routes each request through the layer (a [`CircuitBreakerLayer`], a [`BulkheadLayer`], …)
/// that its key picks from a [`Registry`]: one breaker per downstream host, one bulkhead per
/// tenant — bounded, made on a key's first request.
///
/// Each call wraps a clone of the inner service in the key's layer and drives it to readiness
/// in the call's future (as [`ServiceExt::oneshot`] does), so the service itself is always
/// ready and one key's backpressure never holds up another key's requests.
///
/// [`CircuitBreakerLayer`]: crate::circuit_breaker::CircuitBreakerLayer
/// [`BulkheadLayer`]: crate::bulkhead::BulkheadLayer
///
/// ```
/// use std::num::NonZeroUsize;
/// use floodwall_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
/// use floodwall_resilience::registry::{KeyedLayer, Registry};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let per_host = Registry::new(NonZeroUsize::new(1000).unwrap(), |host: &str| {
///     CircuitBreakerLayer::new(CircuitBreaker::builder().name(format!("api:{host}")).build().unwrap())
/// });
/// let svc = ServiceBuilder::new()
///     .layer(KeyedLayer::new(per_host, |req: &(String, u32)| req.0.clone()))
///     .service_fn(|req: (String, u32)| async move {
///         Ok::<_, floodwall_resilience::Error<std::io::Error>>(req.1 * 2)
///     });
/// assert_eq!(svc.oneshot(("payments".to_string(), 21)).await.unwrap(), 42);
/// # }
/// ```
pub struct KeyedLayer<L, F> {
    registry: Registry<L>,
    key: F,
}

impl<L, F> KeyedLayer<L, F> {
    /// Picks each request's layer from `registry` by `key(&request)`.
    pub fn new(registry: Registry<L>, key: F) -> Self {
        KeyedLayer { registry, key }
    }
}

impl<L, F: Clone> Clone for KeyedLayer<L, F> {
    fn clone(&self) -> Self {
        KeyedLayer {
            registry: self.registry.clone(),
            key: self.key.clone(),
        }
    }
}

impl<L, F> fmt::Debug for KeyedLayer<L, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLayer")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<S, L, F: Clone> Layer<S> for KeyedLayer<L, F> {
    type Service = KeyedService<S, L, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedService {
            inner,
            registry: self.registry.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service [`KeyedLayer`] makes.
pub struct KeyedService<S, L, F> {
    inner: S,
    registry: Registry<L>,
    key: F,
}

impl<S: Clone, L, F: Clone> Clone for KeyedService<S, L, F> {
    fn clone(&self) -> Self {
        KeyedService {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, L, F> fmt::Debug for KeyedService<S, L, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedService")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<S, L, F> KeyedService<S, L, F> {
    /// The registry the keys pick from.
    pub fn registry(&self) -> &Registry<L> {
        &self.registry
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, L, F, K, Req> Service<Req> for KeyedService<S, L, F>
where
    S: Clone,
    L: Layer<S> + Clone,
    L::Service: Service<Req>,
    F: Fn(&Req) -> K,
    K: AsRef<str>,
{
    type Response = <L::Service as Service<Req>>::Response;
    type Error = <L::Service as Service<Req>>::Error;
    type Future = Oneshot<L::Service, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key)(&req);
        let layer = self.registry.get(key.as_ref());
        layer.layer(self.inner.clone()).oneshot(req)
    }
}
