//! The response future of [`ChaosService`](super::ChaosService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

pin_project! {
    #[project = StateProj]
    enum State<F, T, E> {
        Called { #[pin] fut: F, latency: Option<Duration> },
        Delaying { sleep: Pin<Box<Sleep>>, result: Option<Result<T, E>> },
    }
}

pin_project! {
    /// The inner answer (or the injected error), after the injected latency.
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        state: State<F, T, E>,
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    pub(crate) fn called(fut: F, latency: Option<Duration>) -> Self {
        ResponseFuture {
            state: State::Called { fut, latency },
        }
    }

    pub(crate) fn failed(error: E, latency: Option<Duration>) -> Self {
        ResponseFuture {
            state: State::Delaying {
                sleep: Box::pin(tokio::time::sleep(latency.unwrap_or(Duration::ZERO))),
                result: Some(Err(error)),
            },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut, latency } => {
                    let result = ready!(fut.poll(cx));
                    match latency.take() {
                        None => return Poll::Ready(result),
                        Some(d) => this.state.set(State::Delaying {
                            sleep: Box::pin(tokio::time::sleep(d)),
                            result: Some(result),
                        }),
                    }
                }
                StateProj::Delaying { sleep, result } => {
                    ready!(sleep.as_mut().poll(cx));
                    let Some(r) = result.take() else {
                        unreachable!("polled after completion");
                    };
                    return Poll::Ready(r);
                }
            }
        }
    }
}

impl<F, T, E> std::fmt::Debug for ResponseFuture<F, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
