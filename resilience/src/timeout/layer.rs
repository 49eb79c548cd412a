//! The tower face of [`Timeout`].

use std::task::{Context, Poll};

use super::future::ResponseFuture;
use super::{Elapsed, Timeout};

/// Wraps a service in a [`TimeoutService`].
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    timeout: Timeout,
}

impl TimeoutLayer {
    /// Bounds each call through the layer by `timeout`.
    pub const fn new(timeout: Timeout) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            timeout: self.timeout.clone(),
        }
    }
}

/// A service whose calls fail with an error built `From` [`Elapsed`] (e.g.
/// [`crate::Error::Timeout`]) when they take too long.
///
/// Only the call is timed, not waiting for readiness.
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    timeout: Timeout,
}

impl<S> TimeoutService<S> {
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

impl<S, Req> tower::Service<Req> for TimeoutService<S>
where
    S: tower::Service<Req>,
    S::Error: From<Elapsed>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(req), &self.timeout)
    }
}
