//! The tower face of [`Retry`].

use std::task::{Context, Poll};

use super::future::ResponseFuture;
use super::{CloneRequest, Retry, RetryOnError, RetryPolicy, RetryRequest};

/// Wraps a service in a [`RetryService`].
///
/// Each attempt sends a copy of the request made by the layer's [`RetryRequest`] (by default
/// `Clone`; the no-retry path copies once and allocates nothing). A request it cannot copy —
/// a streaming body, or a method that must not be repeated — is sent once, never retried.
#[derive(Debug, Clone)]
pub struct RetryLayer<P = RetryOnError, C = CloneRequest> {
    retry: Retry,
    policy: P,
    cloner: C,
}

impl RetryLayer {
    /// Retries every `Err`; requests are copied with `Clone`.
    pub fn new(retry: Retry) -> Self {
        RetryLayer {
            retry,
            policy: RetryOnError,
            cloner: CloneRequest,
        }
    }
}

impl<P> RetryLayer<P> {
    /// Retries as `policy` decides; requests are copied with `Clone`.
    pub fn with_policy(retry: Retry, policy: P) -> Self {
        RetryLayer {
            retry,
            policy,
            cloner: CloneRequest,
        }
    }
}

impl<P, C> RetryLayer<P, C> {
    /// Copies requests with `cloner`, which may refuse (then the request is sent once).
    pub fn clone_requests_with<C2>(self, cloner: C2) -> RetryLayer<P, C2> {
        RetryLayer {
            retry: self.retry,
            policy: self.policy,
            cloner,
        }
    }
}

impl<S, P: Clone, C: Clone> tower::Layer<S> for RetryLayer<P, C> {
    type Service = RetryService<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            retry: self.retry.clone(),
            policy: self.policy.clone(),
            cloner: self.cloner.clone(),
        }
    }
}

/// A service whose failed calls are retried by a [`Retry`].
#[derive(Debug, Clone)]
pub struct RetryService<S, P = RetryOnError, C = CloneRequest> {
    inner: S,
    retry: Retry,
    policy: P,
    cloner: C,
}

impl<S, P, C> RetryService<S, P, C> {
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

impl<S, Req, P, C> tower::Service<Req> for RetryService<S, P, C>
where
    S: tower::Service<Req> + Clone,
    P: RetryPolicy<S::Response, S::Error> + Clone,
    C: RetryRequest<Req> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, P, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // Keep the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let copy = self.cloner.clone_request(&req);
        let first = ready.call(req);
        ResponseFuture::new(
            ready,
            self.cloner.clone(),
            copy,
            first,
            &self.retry,
            self.policy.clone(),
        )
    }
}
