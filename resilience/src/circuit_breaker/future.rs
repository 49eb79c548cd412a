//! The response future of [`CircuitBreakerService`](super::CircuitBreakerService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{CircuitBreaker, Classify, Outcome, RawPermit, Rejected};

pin_project! {
    /// Records the inner call's outcome when it completes; dropped before completion, the call
    /// counts as ignored.
    #[project = StateProj]
    enum State<F, C> {
        Called {
            #[pin]
            inner: F,
            guard: Guard,
            classifier: C,
        },
        Rejected {
            rejected: Option<Rejected>,
        },
    }
}

/// Records `Ignored` if the future is dropped before the call finishes.
struct Guard {
    breaker: CircuitBreaker,
    permit: Option<RawPermit>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.record_raw(p, Outcome::Ignored);
        }
    }
}

pin_project! {
    /// The response future of [`CircuitBreakerService`](super::CircuitBreakerService).
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(
        inner: F,
        breaker: CircuitBreaker,
        permit: RawPermit,
        classifier: C,
    ) -> Self {
        ResponseFuture {
            state: State::Called {
                inner,
                guard: Guard {
                    breaker,
                    permit: Some(permit),
                },
                classifier,
            },
        }
    }

    pub(crate) fn rejected(rejected: Rejected) -> Self {
        ResponseFuture {
            state: State::Rejected {
                rejected: Some(rejected),
            },
        }
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
                inner,
                guard,
                classifier,
            } => {
                let result = ready!(inner.poll(cx));
                if let Some(p) = guard.permit.take() {
                    guard
                        .breaker
                        .record_with(p, classifier.classify(&result), || {
                            classifier.cause(&result)
                        });
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { rejected } => {
                let r = rejected
                    .take()
                    .expect("ResponseFuture polled after completion");
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
