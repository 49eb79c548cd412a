//! The response future of [`RetryService`](super::RetryService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{Attempts, Decision, Retry, RetryPolicy, RetryRequest};

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
    pub struct ResponseFuture<S, Req, P, C>
    where
        S: tower::Service<Req>,
    {
        service: S,
        cloner: C,
        // A copy for the next attempt; `None` when the request could not be copied.
        request: Option<Req>,
        retry: Retry,
        policy: P,
        attempts: Attempts,
        #[pin]
        state: State<S::Future>,
    }
}

impl<S, Req, P, C> ResponseFuture<S, Req, P, C>
where
    S: tower::Service<Req>,
{
    #[inline]
    pub(crate) fn new(
        service: S,
        cloner: C,
        request: Option<Req>,
        first: S::Future,
        retry: &Retry,
        policy: P,
    ) -> Self {
        // The policy is cloned in place: a clone made by the caller and moved in here was
        // copied twice, and the second copy's reads straddled the first's writes.
        ResponseFuture {
            service,
            cloner,
            request,
            attempts: retry.start(),
            retry: retry.clone(),
            policy,
            state: State::Calling { fut: first },
        }
    }
}

impl<S, Req, P, C> Future for ResponseFuture<S, Req, P, C>
where
    S: tower::Service<Req>,
    P: RetryPolicy<S::Response, S::Error>,
    C: RetryRequest<Req>,
{
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let StateProj::Calling { fut } = this.state.as_mut().project() {
                let result = ready!(fut.poll(cx));
                // A request that could not be copied is sent once.
                let decision = match this.request {
                    None => Decision::Done,
                    Some(_) => this.policy.decide(&result),
                };
                match this.retry.next_delay(this.attempts, decision) {
                    None => {
                        this.retry.finish(this.attempts);
                        return Poll::Ready(result);
                    }
                    Some(delay) => this.state.set(State::Sleeping {
                        sleep: Box::pin(tokio::time::sleep(delay)),
                    }),
                }
            }
            // Between attempts: out of line, so the first attempt's path stays small.
            if let Err(e) = ready!(between(
                this.state.as_mut(),
                this.service,
                this.cloner,
                this.request,
                cx
            )) {
                this.retry.finish(this.attempts);
                return Poll::Ready(Err(e));
            }
        }
    }
}

/// Waits out the delay, then the service's readiness, then sends the next attempt (the
/// state is `Calling` again when this returns `Ready(Ok)`).
#[inline(never)]
fn between<S, Req, C>(
    mut state: Pin<&mut State<S::Future>>,
    service: &mut S,
    cloner: &mut C,
    request: &mut Option<Req>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), S::Error>>
where
    S: tower::Service<Req>,
    C: RetryRequest<Req>,
{
    loop {
        match state.as_mut().project() {
            StateProj::Calling { .. } => return Poll::Ready(Ok(())),
            StateProj::Sleeping { sleep } => {
                ready!(sleep.as_mut().poll(cx));
                state.set(State::Polling);
            }
            StateProj::Polling => {
                ready!(service.poll_ready(cx))?;
                let Some(req) = request.take() else {
                    unreachable!("a retry is only scheduled with a request copy");
                };
                // Keep a copy for the attempt after this one, if the cloner allows.
                *request = cloner.clone_request(&req);
                let fut = service.call(req);
                state.set(State::Calling { fut });
            }
        }
    }
}

impl<S, Req, P, C> std::fmt::Debug for ResponseFuture<S, Req, P, C>
where
    S: tower::Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
