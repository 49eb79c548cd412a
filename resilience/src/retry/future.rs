//! The response future of [`RetryService`](super::RetryService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{Attempts, Retry, RetryPolicy};

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] fut: F },
        Sleeping { sleep: Pin<Box<Sleep>> },
        Polling,
    }
}

pin_project! {
    /// Drives attempts, delays and readiness until the policy is done.
    pub struct ResponseFuture<S, Req, P>
    where
        S: tower::Service<Req>,
    {
        service: S,
        request: Req,
        retry: Retry,
        policy: P,
        attempts: Attempts,
        #[pin]
        state: State<S::Future>,
    }
}

impl<S, Req, P> ResponseFuture<S, Req, P>
where
    S: tower::Service<Req>,
{
    pub(crate) fn new(service: S, request: Req, first: S::Future, retry: Retry, policy: P) -> Self {
        let attempts = retry.start();
        ResponseFuture {
            service,
            request,
            retry,
            policy,
            attempts,
            state: State::Calling { fut: first },
        }
    }
}

impl<S, Req, P> Future for ResponseFuture<S, Req, P>
where
    S: tower::Service<Req>,
    Req: Clone,
    P: RetryPolicy<S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx));
                    let decision = this.policy.decide(&result);
                    match this.retry.next_delay(this.attempts, decision) {
                        None => return Poll::Ready(result),
                        Some(delay) => this.state.set(State::Sleeping {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        }),
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Polling);
                }
                StateProj::Polling => {
                    ready!(this.service.poll_ready(cx))?;
                    let fut = this.service.call(this.request.clone());
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}

impl<S, Req, P> std::fmt::Debug for ResponseFuture<S, Req, P>
where
    S: tower::Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
