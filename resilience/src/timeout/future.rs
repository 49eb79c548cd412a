//! The response future of [`TimeoutService`](super::TimeoutService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{Elapsed, Timeout};

pin_project! {
    /// Resolves to the inner response, or to an error built `From` [`Elapsed`] once the bound
    /// passes.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
        // Only a named timeout carries itself here, to record the call's end.
        measured: Option<(Timeout, Option<Instant>)>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, timeout: &Timeout) -> Self {
        let after = timeout.duration();
        let started = timeout.start();
        ResponseFuture {
            inner,
            sleep: tokio::time::sleep(after),
            after,
            measured: started.map(|t| (timeout.clone(), Some(t))),
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
            if let Some((t, started)) = this.measured.take() {
                t.record(started, true);
            }
            return Poll::Ready(r);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                if let Some((t, started)) = this.measured.take() {
                    t.record(started, false);
                }
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
