//! The response future of the cache layers: the inner service's own future when a request is
//! not cached (nothing boxed), or the boxed cache lookup.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::BoxFuture;

pin_project! {
    /// The future of a call through [`Cache`](super::Cache) or
    /// [`HttpCacheService`](crate::http::HttpCacheService).
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        kind: Kind<F, T, E>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F, T, E> {
        // Not cached: the inner service's call.
        Passed {
            #[pin]
            fut: F,
        },
        // Answered from the cache (or by the one load every waiting request shares).
        Cached {
            fut: BoxFuture<Result<T, E>>,
        },
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    pub(crate) fn passed(fut: F) -> Self {
        ResponseFuture {
            kind: Kind::Passed { fut },
        }
    }

    pub(crate) fn cached(fut: BoxFuture<Result<T, E>>) -> Self {
        ResponseFuture {
            kind: Kind::Cached { fut },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Passed { fut } => fut.poll(cx),
            Proj::Cached { fut } => fut.as_mut().poll(cx),
        }
    }
}
