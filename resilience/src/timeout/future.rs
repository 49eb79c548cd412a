//! The response future of [`TimeoutService`](super::TimeoutService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;

use super::deadline::Deadline;
use super::{Elapsed, Timeout};

pin_project! {
    /// Resolves to the inner response, or to an error built `From` [`Elapsed`] once the bound
    /// passes.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Deadline<F>,
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
            inner: Deadline::new(inner, after),
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
        let ended = std::task::ready!(this.inner.poll(cx));
        if let Some((t, started)) = this.measured.take() {
            t.record(started, ended.is_ok());
        }
        Poll::Ready(match ended {
            Ok(r) => r,
            Err(elapsed) => {
                tracing::debug!(after = ?this.after, "call timed out");
                Err(E::from(elapsed))
            }
        })
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}
