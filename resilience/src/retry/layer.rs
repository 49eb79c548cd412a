//! The tower face of [`Retry`].

use std::task::{Context, Poll};

use super::future::ResponseFuture;
use super::{Retry, RetryOnError, RetryPolicy};

/// Wraps a service in a [`RetryService`].
///
/// Requests must be `Clone` (each attempt sends a clone; the no-retry path clones once and
/// allocates nothing). For HTTP, buffer the body first; a request that cannot be cloned cannot
/// be retried and should not go through this layer.
#[derive(Debug, Clone)]
pub struct RetryLayer<P = RetryOnError> {
    retry: Retry,
    policy: P,
}

impl RetryLayer {
    /// Retries every `Err`.
    pub fn new(retry: Retry) -> Self {
        RetryLayer {
            retry,
            policy: RetryOnError,
        }
    }
}

impl<P> RetryLayer<P> {
    /// Retries as `policy` decides.
    pub fn with_policy(retry: Retry, policy: P) -> Self {
        RetryLayer { retry, policy }
    }
}

impl<S, P: Clone> tower::Layer<S> for RetryLayer<P> {
    type Service = RetryService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            retry: self.retry.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// A service whose failed calls are retried by a [`Retry`].
#[derive(Debug, Clone)]
pub struct RetryService<S, P = RetryOnError> {
    inner: S,
    retry: Retry,
    policy: P,
}

impl<S, P> RetryService<S, P> {
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

impl<S, Req, P> tower::Service<Req> for RetryService<S, P>
where
    S: tower::Service<Req> + Clone,
    Req: Clone,
    P: RetryPolicy<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Keep the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let first = ready.call(req.clone());
        ResponseFuture::new(ready, req, first, self.retry.clone(), self.policy.clone())
    }
}
