//! The response future of [`FallbackService`](super::FallbackService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

pin_project! {
    #[project = StateProj]
    enum State<F, H, HFut> {
        Primary { #[pin] fut: F, handler: Option<H> },
        Fallback { #[pin] fut: HFut },
    }
}

pin_project! {
    /// The inner call, then — if it failed — the handler's answer.
    pub struct ResponseFuture<F, H, HFut> {
        #[pin]
        state: State<F, H, HFut>,
    }
}

impl<F, H, HFut> ResponseFuture<F, H, HFut> {
    pub(crate) fn new(fut: F, handler: H) -> Self {
        ResponseFuture {
            state: State::Primary {
                fut,
                handler: Some(handler),
            },
        }
    }
}

impl<F, H, HFut, T, E, E2> Future for ResponseFuture<F, H, HFut>
where
    F: Future<Output = Result<T, E>>,
    H: Fn(E) -> HFut,
    HFut: Future<Output = Result<T, E2>>,
{
    type Output = Result<T, E2>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { fut, handler } => match ready!(fut.poll(cx)) {
                    Ok(v) => return Poll::Ready(Ok(v)),
                    Err(e) => {
                        let handler = handler.take().expect("polled after completion");
                        let fut = handler(e);
                        this.state.set(State::Fallback { fut });
                    }
                },
                StateProj::Fallback { fut } => return fut.poll(cx),
            }
        }
    }
}

impl<F, H, HFut> std::fmt::Debug for ResponseFuture<F, H, HFut> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
