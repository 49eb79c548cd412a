//! The one error type of floodwall's resilience primitives: [`rejections!`] declares it (the
//! entries are in `lib.rs`), and the methods that do not depend on which primitives exist are
//! here.

/// Declares [`Error`] from the primitives that refuse or cut calls: each entry is a variant and
/// the rejection type it carries, written once in `lib.rs` beside the primitive's `mod` line.
/// A new primitive adds its folder and its entry there; this file names none of them.
///
/// Each rejection type is a `std::error::Error` whose `Display` reads as a sentence; the
/// generated `Display` and `source` are its own, `From` builds the variant, and `map_inner`
/// passes every rejection through.
macro_rules! rejections {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty), )*) => {
        /// What went wrong with a call made through floodwall: one of its primitives refused or cut
        /// it, or the call itself failed with `E`.
        ///
        /// Every plain API returns it, and every layer can report through it: the layers keep their
        /// inner service's error type and only require it to be buildable `From` each rejection, which
        /// `Error<E>` is. Put [`ErrorLayer`] innermost in a stack to turn a plain service error `E`
        /// into `Error<E>`, and the whole stack has this one type to match on:
        ///
        /// ```
        /// # #[cfg(feature = "tower")] {
        /// use floodwall_resilience::{Error, ErrorLayer};
        /// use floodwall_resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
        /// use tower::ServiceBuilder;
        ///
        /// let breaker = CircuitBreaker::builder().build().unwrap();
        /// let svc = ServiceBuilder::new()
        ///     .layer(CircuitBreakerLayer::new(breaker))
        ///     .layer(ErrorLayer)
        ///     .service(tower::service_fn(|x: u32| async move { Err::<u32, &str>("boom") }));
        /// # let _ = svc; }
        /// ```
        ///
        /// `Error<E>` is a [`std::error::Error`] when `E` is one, and [`source`](std::error::Error::source)
        /// leads to the call's own error for [`Error::Inner`] (to the rejection's cause for the
        /// others, e.g. the error that tripped a breaker).
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Error<E> {
            $( $(#[$doc])* $variant($ty), )*
            /// The call ran and failed.
            Inner(E),
        }

        impl<E: ::std::fmt::Display> ::std::fmt::Display for Error<E> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self {
                    $( Error::$variant(r) => r.fmt(f), )*
                    Error::Inner(e) => e.fmt(f),
                }
            }
        }

        impl<E: ::std::error::Error + 'static> ::std::error::Error for Error<E> {
            fn source(&self) -> Option<&(dyn ::std::error::Error + 'static)> {
                match self {
                    $( Error::$variant(r) => ::std::error::Error::source(r), )*
                    Error::Inner(e) => Some(e),
                }
            }
        }

        impl<E> Error<E> {
            /// The same error with the call's own error mapped by `f` (a rejection stays as it
            /// is).
            pub fn map_inner<F>(self, f: impl FnOnce(E) -> F) -> Error<F> {
                match self {
                    $( Error::$variant(r) => Error::$variant(r), )*
                    Error::Inner(e) => Error::Inner(f(e)),
                }
            }
        }

        $(
            impl<E> From<$ty> for Error<E> {
                fn from(r: $ty) -> Self {
                    Error::$variant(r)
                }
            }
        )*
    };
}

pub(crate) use rejections;

impl<E> crate::Error<E> {
    /// The call's own error, if it ran and failed.
    pub fn into_inner(self) -> Option<E> {
        match self {
            crate::Error::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// The call's own error, if it ran and failed, by reference.
    pub fn inner(&self) -> Option<&E> {
        match self {
            crate::Error::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// Whether a floodwall primitive refused or cut the call (it did not fail by itself).
    pub fn is_rejection(&self) -> bool {
        !matches!(self, crate::Error::Inner(_))
    }
}

#[cfg(feature = "tower")]
pub use layer::{ErrorLayer, ErrorService};

#[cfg(feature = "tower")]
mod layer {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, ready};

    use pin_project_lite::pin_project;

    use crate::Error;

    /// Turns a service's error `E` into [`Error<E>`]; put it innermost in a stack.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ErrorLayer;

    impl<S> tower::Layer<S> for ErrorLayer {
        type Service = ErrorService<S>;

        fn layer(&self, inner: S) -> Self::Service {
            ErrorService { inner }
        }
    }

    /// A service whose errors are wrapped as [`Error::Inner`].
    #[derive(Debug, Clone)]
    pub struct ErrorService<S> {
        inner: S,
    }

    impl<S> ErrorService<S> {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    }

    impl<S, Req> tower::Service<Req> for ErrorService<S>
    where
        S: tower::Service<Req>,
    {
        type Response = S::Response;
        type Error = Error<S::Error>;
        type Future = ErrorFuture<S::Future>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx).map_err(Error::Inner)
        }

        fn call(&mut self, req: Req) -> Self::Future {
            ErrorFuture {
                inner: self.inner.call(req),
            }
        }
    }

    pin_project! {
        /// The response future of [`ErrorService`].
        #[derive(Debug)]
        pub struct ErrorFuture<F> {
            #[pin]
            inner: F,
        }
    }

    impl<F, T, E> Future for ErrorFuture<F>
    where
        F: Future<Output = Result<T, E>>,
    {
        type Output = Result<T, Error<E>>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Ready(ready!(self.project().inner.poll(cx)).map_err(Error::Inner))
        }
    }
}
