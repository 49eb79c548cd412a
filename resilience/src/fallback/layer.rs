//! The tower face of [`Fallback`](super::Fallback).

use std::future::Future;
use std::task::{Context, Poll};

use super::future::ResponseFuture;

/// Wraps a service in a [`FallbackService`]: on an error the handler answers instead.
#[derive(Debug, Clone)]
pub struct FallbackLayer<H> {
    handler: H,
}

impl<H> FallbackLayer<H> {
    /// A layer whose services answer `handler(error)` when the inner call fails.
    pub const fn new(handler: H) -> Self {
        FallbackLayer { handler }
    }
}

impl<S, H: Clone> tower::Layer<S> for FallbackLayer<H> {
    type Service = FallbackService<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            handler: self.handler.clone(),
        }
    }
}

/// A service that answers from its handler when a call fails. A failure to become ready is
/// not a call: it passes through, converted with `From`.
#[derive(Debug, Clone)]
pub struct FallbackService<S, H> {
    inner: S,
    handler: H,
}

impl<S, H> FallbackService<S, H> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, H, HFut, E2> tower::Service<Req> for FallbackService<S, H>
where
    S: tower::Service<Req>,
    H: Fn(S::Error) -> HFut + Clone,
    HFut: Future<Output = Result<S::Response, E2>>,
    E2: From<S::Error>,
{
    type Response = S::Response;
    type Error = E2;
    type Future = ResponseFuture<S::Future, H, HFut>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E2>> {
        self.inner.poll_ready(cx).map_err(E2::from)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), self.handler.clone())
    }
}
