//! The tower face of [`Chaos`].

use std::task::{Context, Poll};

use super::future::ResponseFuture;
use super::{Chaos, Injected};

/// Wraps a service in a [`ChaosService`].
#[derive(Debug, Clone)]
pub struct ChaosLayer {
    chaos: Chaos,
}

impl ChaosLayer {
    /// A layer injecting `chaos`'s faults.
    pub fn new(chaos: Chaos) -> Self {
        ChaosLayer { chaos }
    }
}

impl<S> tower::Layer<S> for ChaosLayer {
    type Service = ChaosService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ChaosService {
            inner,
            chaos: self.chaos.clone(),
        }
    }
}

/// A service with injected faults: an injected error answers without calling the inner
/// service (built `From` [`Injected`], e.g. [`crate::Error::Injected`]); injected latency
/// delays the answer.
#[derive(Debug, Clone)]
pub struct ChaosService<S> {
    inner: S,
    chaos: Chaos,
}

impl<S> ChaosService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> tower::Service<Req> for ChaosService<S>
where
    S: tower::Service<Req>,
    S::Error: From<Injected>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let faults = self.chaos.draw();
        match faults.error {
            Some(e) => ResponseFuture::failed(S::Error::from(e), faults.latency),
            None => ResponseFuture::called(self.inner.call(req), faults.latency),
        }
    }
}
