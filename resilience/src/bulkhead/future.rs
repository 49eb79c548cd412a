//! The response future of [`BulkheadService`](super::BulkheadService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{OwnedPermit, Rejected};

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedPermit, Rejected>> + Send>>;

pin_project! {
    #[project = StateProj]
    enum State<S, Req, F> {
        Waiting { acquire: Acquire, service: Option<S>, request: Option<Req> },
        Ready { service: Option<S>, request: Option<Req>, permit: Option<OwnedPermit> },
        Called { #[pin] fut: F, permit: Option<OwnedPermit> },
    }
}

pin_project! {
    /// Holds the bulkhead slot until the inner call's response is ready (or the future is
    /// dropped).
    pub struct ResponseFuture<S, Req, F = <S as tower::Service<Req>>::Future>
    where
        S: tower::Service<Req>,
    {
        #[pin]
        state: State<S, Req, F>,
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: tower::Service<Req>,
{
    pub(crate) fn called(fut: S::Future, permit: OwnedPermit) -> Self {
        ResponseFuture {
            state: State::Called {
                fut,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn waiting(acquire: Acquire, service: S, request: Req) -> Self {
        ResponseFuture {
            state: State::Waiting {
                acquire,
                service: Some(service),
                request: Some(request),
            },
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: tower::Service<Req>,
    S::Error: From<Rejected>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting {
                    acquire,
                    service,
                    request,
                } => {
                    let permit = ready!(acquire.as_mut().poll(cx))?;
                    let (service, request) = (service.take(), request.take());
                    this.state.set(State::Ready {
                        service,
                        request,
                        permit: Some(permit),
                    });
                }
                StateProj::Ready {
                    service,
                    request,
                    permit,
                } => {
                    let svc = service.as_mut().expect("service present until called");
                    ready!(svc.poll_ready(cx))?;
                    let req = request.take().expect("request present until called");
                    let fut = svc.call(req);
                    let permit = permit.take();
                    this.state.set(State::Called { fut, permit });
                }
                StateProj::Called { fut, permit } => {
                    let out = ready!(fut.poll(cx));
                    permit.take(); // release the slot as soon as the response is in
                    return Poll::Ready(out);
                }
            }
        }
    }
}

impl<S, Req> std::fmt::Debug for ResponseFuture<S, Req>
where
    S: tower::Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
