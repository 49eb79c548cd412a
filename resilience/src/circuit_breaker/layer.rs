//! The tower face of the breaker.

use std::task::{Context, Poll};

use super::future::ResponseFuture;
use super::{CircuitBreaker, Classify, DefaultClassifier, Rejected};

/// Wraps a service in a [`CircuitBreakerService`] sharing one [`CircuitBreaker`].
///
/// Every service the layer builds shares the breaker's state with the plain API, so a call
/// through `breaker.call(..)` and one through the service count in the same window.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer where `Err` is a failure and `Ok` a success.
    pub fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer {
            breaker,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer that classifies results with `classifier` (e.g. an HTTP 5xx as a failure).
    pub fn with_classifier(breaker: CircuitBreaker, classifier: C) -> Self {
        CircuitBreakerLayer {
            breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> tower::Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service guarded by a [`CircuitBreaker`]; rejected calls fail with the inner service's
/// error type built `From` the [`Rejected`] (e.g. [`crate::Error::CircuitOpen`]) without
/// reaching the inner service.
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C = DefaultClassifier> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C> CircuitBreakerService<S, C> {
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
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

impl<S, Req, C> tower::Service<Req> for CircuitBreakerService<S, C>
where
    S: tower::Service<Req>,
    S::Error: From<Rejected>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.acquire_raw() {
            Ok(permit) => ResponseFuture::called(
                self.inner.call(req),
                self.breaker.clone(),
                permit,
                self.classifier.clone(),
            ),
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
