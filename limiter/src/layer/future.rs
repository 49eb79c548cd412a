//! The response future of [`RateLimitService`](super::RateLimitService) and
//! [`HttpRateLimitService`](crate::http::HttpRateLimitService): a pin-projected state machine. When the
//! limits live in memory the decision is made before the future exists and nothing is boxed;
//! a Redis decision is the one boxed step.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;

use super::{BoxFuture, KeyRejection};
use crate::{LimitError, Verdict};

/// What a layer does with a verdict: refuse the request itself, or let the inner service
/// answer and touch up its response.
pub(crate) trait Answer<Res, E>: Send + 'static {
    /// The answer to a request that is not admitted (denied, or no decision could be made).
    fn refuse(&self, verdict: Result<Verdict, LimitError>) -> Result<Res, E>;
    /// The answer to a request the key extractor refused.
    fn unkeyed(&self, rejection: KeyRejection) -> Result<Res, E>;
    /// The inner service's response to an admitted request.
    fn admitted(&self, verdict: &Verdict, response: Res) -> Res;
}

pin_project! {
    /// The future of a rate-limited call.
    pub struct ResponseFuture<S, Req, A>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        answer: A,
        verdict: Option<Verdict>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Deciding {
            decide: BoxFuture<Result<Verdict, LimitError>>,
            inner: Option<S>,
            req: Option<Req>,
        },
        Calling {
            #[pin]
            fut: S::Future,
        },
        Refused {
            verdict: Option<Result<Verdict, LimitError>>,
        },
        Unkeyed {
            rejection: Option<KeyRejection>,
        },
    }
}

impl<S, Req, A> ResponseFuture<S, Req, A>
where
    S: Service<Req>,
{
    /// A decision made already (memory store): call `inner` now, or refuse.
    pub(crate) fn decided(
        verdict: Result<Verdict, LimitError>,
        inner: &mut S,
        req: Req,
        answer: A,
    ) -> Self {
        match verdict {
            Ok(v) if v.allowed => ResponseFuture {
                state: State::Calling {
                    fut: inner.call(req),
                },
                answer,
                verdict: Some(v),
            },
            other => ResponseFuture {
                state: State::Refused {
                    verdict: Some(other),
                },
                answer,
                verdict: None,
            },
        }
    }

    /// A request the key extractor refused: no decision, no call.
    pub(crate) fn unkeyed(rejection: KeyRejection, answer: A) -> Self {
        ResponseFuture {
            state: State::Unkeyed {
                rejection: Some(rejection),
            },
            answer,
            verdict: None,
        }
    }

    /// A decision still to be awaited (Redis): `inner` is the ready service to call after.
    pub(crate) fn deciding(
        decide: BoxFuture<Result<Verdict, LimitError>>,
        inner: S,
        req: Req,
        answer: A,
    ) -> Self {
        ResponseFuture {
            state: State::Deciding {
                decide,
                inner: Some(inner),
                req: Some(req),
            },
            answer,
            verdict: None,
        }
    }
}

impl<S, Req, A> Future for ResponseFuture<S, Req, A>
where
    S: Service<Req>,
    A: Answer<S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { decide, inner, req } => {
                    let verdict = ready!(decide.as_mut().poll(cx));
                    let next = match verdict {
                        Ok(v) if v.allowed => {
                            let (mut inner, req) = (
                                inner.take().expect("polled after completion"),
                                req.take().expect("polled after completion"),
                            );
                            *this.verdict = Some(v);
                            State::Calling {
                                fut: inner.call(req),
                            }
                        }
                        other => State::Refused {
                            verdict: Some(other),
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Calling { fut } => {
                    let response = ready!(fut.poll(cx))?;
                    let verdict = this.verdict.as_ref().expect("set when admitted");
                    return Poll::Ready(Ok(this.answer.admitted(verdict, response)));
                }
                StateProj::Refused { verdict } => {
                    let verdict = verdict.take().expect("polled after completion");
                    return Poll::Ready(this.answer.refuse(verdict));
                }
                StateProj::Unkeyed { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    return Poll::Ready(this.answer.unkeyed(rejection));
                }
            }
        }
    }
}
