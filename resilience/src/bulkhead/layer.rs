//! The tower face of [`Bulkhead`].

use std::task::{Context, Poll};

use super::future::ResponseFuture;
use super::{Bulkhead, Rejected};

/// Wraps a service in a [`BulkheadService`] sharing one [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer over `bulkhead`.
    pub fn new(bulkhead: Bulkhead) -> Self {
        BulkheadLayer { bulkhead }
    }
}

impl<S> tower::Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
        }
    }
}

/// A service whose calls hold a bulkhead slot until their response future ends.
///
/// A call that finds the bulkhead full waits (as configured) inside its response future, on
/// a clone of the inner service; so the inner service must be `Clone`.
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S> BulkheadService<S> {
    /// The bulkhead.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

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

impl<S, Req> tower::Service<Req> for BulkheadService<S>
where
    S: tower::Service<Req> + Clone + Send + 'static,
    S::Error: From<Rejected>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.bulkhead.try_acquire_owned() {
            Some(permit) => ResponseFuture::called(self.inner.call(req), permit),
            None => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                let bulkhead = self.bulkhead.clone();
                ResponseFuture::waiting(
                    Box::pin(async move { bulkhead.acquire_owned().await }),
                    ready,
                    req,
                )
            }
        }
    }
}
