//! [`Deadline`]: a future bounded in time, with its timer armed only when needed — in a
//! [lane](super::lane) it shares with the other calls of its thread and bound.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::Elapsed;
use super::lane::Ticket;

pin_project! {
    /// `inner`, given up `after` its first wait. The timer is armed at the first poll that
    /// finds `inner` not ready — so a call that answers at once (a cache hit, a refusal, an
    /// error found before any I/O) costs no timer; one that waits is bounded from then, which
    /// is within a poll of when it was started.
    pub(crate) struct Deadline<F> {
        #[pin]
        inner: F,
        ticket: Option<Ticket>,
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
            ticket: None,
            after,
        }
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.inner.poll(cx) {
            // Out of the lane now, not when this future is dropped.
            *this.ticket = None;
            return Poll::Ready(Ok(v));
        }
        let Some(after) = *this.after else {
            return Poll::Pending;
        };
        let up = match this.ticket.as_mut() {
            Some(ticket) => ticket.poll(cx.waker()).is_ready(),
            // A zero bound is up at the first wait.
            None if after.is_zero() => true,
            None => {
                *this.ticket = Some(Ticket::new(after, cx.waker()));
                false
            }
        };
        match up {
            true => {
                *this.ticket = None;
                Poll::Ready(Err(Elapsed { after }))
            }
            false => Poll::Pending,
        }
    }
}
