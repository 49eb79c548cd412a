//! The tower face of [`AdaptiveLimit`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{AdaptiveLimit, Rejected};
use crate::circuit_breaker::{Classify, DefaultClassifier, Outcome};

/// Wraps a service in an [`AdaptiveLimitService`].
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer<C = DefaultClassifier> {
    limit: AdaptiveLimit,
    classifier: C,
}

impl AdaptiveLimitLayer {
    /// `Err` results count as dropped.
    pub fn new(limit: AdaptiveLimit) -> Self {
        AdaptiveLimitLayer {
            limit,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> AdaptiveLimitLayer<C> {
    /// `classifier` decides which results are drops (`Failure`) and which give no sample.
    pub fn with_classifier(limit: AdaptiveLimit, classifier: C) -> Self {
        AdaptiveLimitLayer { limit, classifier }
    }
}

impl<S, C: Clone> tower::Layer<S> for AdaptiveLimitLayer<C> {
    type Service = AdaptiveLimitService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimitService {
            inner,
            limit: self.limit.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service under an adaptive concurrency limit; calls over it fail at once with an error
/// built `From` [`Rejected`] (e.g. [`crate::Error::Limited`]).
#[derive(Debug, Clone)]
pub struct AdaptiveLimitService<S, C = DefaultClassifier> {
    inner: S,
    limit: AdaptiveLimit,
    classifier: C,
}

impl<S, C> AdaptiveLimitService<S, C> {
    /// The limiter.
    pub fn limiter(&self) -> &AdaptiveLimit {
        &self.limit
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, C> tower::Service<Req> for AdaptiveLimitService<S, C>
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
        match self.limit.take() {
            Ok((started, in_flight)) => ResponseFuture {
                state: State::Called {
                    fut: self.inner.call(req),
                    guard: Guard {
                        limit: self.limit.clone(),
                        started,
                        in_flight,
                        live: true,
                    },
                    classifier: self.classifier.clone(),
                },
            },
            Err(r) => ResponseFuture {
                state: State::Rejected { rejected: Some(r) },
            },
        }
    }
}

struct Guard {
    limit: AdaptiveLimit,
    started: u64,
    in_flight: usize,
    live: bool,
}

impl Guard {
    fn finish(&mut self, outcome: Outcome) {
        if std::mem::take(&mut self.live) {
            self.limit.finish(self.started, self.in_flight, outcome);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.finish(Outcome::Ignored);
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Called { #[pin] fut: F, guard: Guard, classifier: C },
        Rejected { rejected: Option<Rejected> },
    }
}

pin_project! {
    /// Records the call's RTT and outcome when it completes.
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: From<Rejected>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                fut,
                guard,
                classifier,
            } => {
                let result = ready!(fut.poll(cx));
                guard.finish(classifier.classify(&result));
                Poll::Ready(result)
            }
            StateProj::Rejected { rejected } => {
                let Some(r) = rejected.take() else {
                    unreachable!("polled after completion");
                };
                Poll::Ready(Err(E::from(r)))
            }
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
