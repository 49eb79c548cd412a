//! The tower face of [`Hedge`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::ServiceExt;

use super::Hedge;

/// Wraps a service in a [`HedgeService`].
#[derive(Debug, Clone)]
pub struct HedgeLayer {
    hedge: Hedge,
}

impl HedgeLayer {
    /// A layer hedging with `hedge`.
    pub fn new(hedge: Hedge) -> Self {
        HedgeLayer { hedge }
    }
}

impl<S> tower::Layer<S> for HedgeLayer {
    type Service = HedgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            hedge: self.hedge.clone(),
        }
    }
}

/// A service whose slow calls are hedged. Each attempt calls a clone of the inner service with
/// a clone of the request, so both must be `Clone`; the response future is boxed.
#[derive(Debug, Clone)]
pub struct HedgeService<S> {
    inner: S,
    hedge: Hedge,
}

impl<S> HedgeService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The response future of [`HedgeService`].
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, Req> tower::Service<Req> for HedgeService<S>
where
    S: tower::Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Send,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let template = self.inner.clone();
        let hedge = self.hedge.clone();
        Box::pin(async move {
            let mut ready = Some(ready);
            hedge
                .call(move || {
                    // The first attempt uses the service the caller made ready; each hedge
                    // waits for readiness on its own clone.
                    let first = ready.take();
                    let mut spare = template.clone();
                    let req = req.clone();
                    async move {
                        match first {
                            Some(mut svc) => svc.call(req).await,
                            None => spare.ready().await?.call(req).await,
                        }
                    }
                })
                .await
        })
    }
}
