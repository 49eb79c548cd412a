//! The tower face of [`Hedge`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::ServiceExt;

use super::{HandleErrors, Hedge, ShouldHedge};

/// Wraps a service in a [`HedgeService`].
#[derive(Debug, Clone)]
pub struct HedgeLayer<H = HandleErrors> {
    hedge: Hedge,
    handle: H,
}

impl HedgeLayer {
    /// A layer hedging with `hedge` against every error.
    pub fn new(hedge: Hedge) -> Self {
        HedgeLayer {
            hedge,
            handle: HandleErrors,
        }
    }
}

impl<H> HedgeLayer<H> {
    /// Hedges only against the outcomes `handle` names (Polly's `ShouldHandle`), e.g. a 503
    /// response or a connect error; any other outcome is the answer at once.
    pub fn handle<H2>(self, handle: H2) -> HedgeLayer<H2> {
        HedgeLayer {
            hedge: self.hedge,
            handle,
        }
    }
}

impl<S, H: Clone> tower::Layer<S> for HedgeLayer<H> {
    type Service = HedgeService<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            hedge: self.hedge.clone(),
            handle: self.handle.clone(),
        }
    }
}

/// A service whose slow calls are hedged. Each attempt calls a clone of the inner service with
/// a clone of the request, so both must be `Clone`; the response future is boxed.
#[derive(Debug, Clone)]
pub struct HedgeService<S, H = HandleErrors> {
    inner: S,
    hedge: Hedge,
    handle: H,
}

impl<S, H> HedgeService<S, H> {
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

impl<S, H, Req> tower::Service<Req> for HedgeService<S, H>
where
    S: tower::Service<Req> + Clone + Send + 'static,
    H: ShouldHedge<S::Response, S::Error> + Clone + Send + Sync + 'static,
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
        let handle = self.handle.clone();
        Box::pin(async move {
            let mut ready = Some(ready);
            hedge
                .call_with(&handle, move || {
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
