//! [`Deadline`]: a future bounded in time, with its timer armed only when needed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::Elapsed;

pin_project! {
    /// `inner`, given up `after` its first wait. The timer is armed at the first poll that
    /// finds `inner` not ready — so a call that answers at once (a cache hit, a refusal, an
    /// error found before any I/O) costs no timer; one that waits is bounded from then, which
    /// is within a poll of when it was started.
    pub(crate) struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        after: Option<Duration>,
    }
}

impl<F> Deadline<F> {
    pub(crate) fn new(inner: F, after: Duration) -> Self {
        Self::maybe(inner, Some(after))
    }

    /// `inner` bounded by `after` if given, else `inner` as it is.
    pub(crate) fn maybe(inner: F, after: Option<Duration>) -> Self {
        Deadline {
            inner,
            sleep: None,
            after,
        }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(v) = this.inner.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let Some(after) = *this.after else {
            return Poll::Pending;
        };
        if this.sleep.as_ref().as_pin_ref().is_none() {
            this.sleep.set(Some(tokio::time::sleep(after)));
        }
        match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed { after })),
            _ => Poll::Pending,
        }
    }
}
