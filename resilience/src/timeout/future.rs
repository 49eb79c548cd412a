//! The response future of [`TimeoutService`](super::TimeoutService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::Elapsed;

pin_project! {
    /// Resolves to the inner response, or to an error built `From` [`Elapsed`] once the bound
    /// passes.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, after: Duration) -> Self {
        ResponseFuture {
            inner,
            sleep: tokio::time::sleep(after),
            after,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: From<Elapsed>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(after = ?this.after, "call timed out");
                Poll::Ready(Err(E::from(Elapsed { after: *this.after })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}
