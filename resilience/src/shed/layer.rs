//! The tower faces of [`LoadShedder`]: [`ShedLayer`] for any service (a shed request is
//! [`Error::Shed`]), and, with feature `http`, [`HttpShedLayer`] for HTTP servers (a shed
//! request is answered `503` with `Retry-After` and a problem+json body).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{LoadShedder, Priority, Shed, ShedPermit};
use crate::Error;

/// What priority a request has: a constant [`Priority`], or a closure `Fn(&Req) -> Priority`.
pub trait PriorityOf<Req>: Clone {
    /// The request's priority.
    fn priority(&self, req: &Req) -> Priority;
}

impl<Req> PriorityOf<Req> for Priority {
    fn priority(&self, _: &Req) -> Priority {
        *self
    }
}

impl<Req, F: Fn(&Req) -> Priority + Clone> PriorityOf<Req> for F {
    fn priority(&self, req: &Req) -> Priority {
        self(req)
    }
}

/// Sheds requests through a [`LoadShedder`] before they reach the service; a shed request
/// fails with [`Error::Shed`] and never reaches it.
#[derive(Debug, Clone)]
pub struct ShedLayer<P = Priority> {
    shedder: LoadShedder,
    priority: P,
}

impl<P> ShedLayer<P> {
    /// Every request's priority from `priority` (a constant [`Priority`] or a closure).
    pub fn new(shedder: LoadShedder, priority: P) -> Self {
        ShedLayer { shedder, priority }
    }
}

impl<S, P: Clone> tower::Layer<S> for ShedLayer<P> {
    type Service = ShedService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            shedder: self.shedder.clone(),
            priority: self.priority.clone(),
        }
    }
}

/// The service [`ShedLayer`] makes.
#[derive(Debug, Clone)]
pub struct ShedService<S, P = Priority> {
    inner: S,
    shedder: LoadShedder,
    priority: P,
}

impl<S, P> ShedService<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

pin_project! {
    /// The response future of [`ShedService`]: the inner call, holding its permit.
    #[project = ShedProj]
    pub enum ResponseFuture<F> {
        /// Admitted: the call runs with its permit.
        Admitted { #[pin] fut: F, permit: Option<ShedPermit> },
        /// Shed.
        Shed { shed: Option<Shed> },
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ShedProj::Admitted { fut, permit } => {
                let out = ready!(fut.poll(cx));
                drop(permit.take());
                Poll::Ready(out.map_err(Error::Inner))
            }
            ShedProj::Shed { shed } => {
                let shed = shed.take().expect("polled after completion");
                Poll::Ready(Err(Error::Shed(shed)))
            }
        }
    }
}

impl<S, P, Req> tower::Service<Req> for ShedService<S, P>
where
    S: tower::Service<Req>,
    P: PriorityOf<Req>,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.shedder.try_acquire(self.priority.priority(&req)) {
            Ok(permit) => ResponseFuture::Admitted {
                fut: self.inner.call(req),
                permit: Some(permit),
            },
            Err(shed) => ResponseFuture::Shed { shed: Some(shed) },
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_layer::{HttpShedLayer, HttpShedService, PRIORITY_HEADER};

#[cfg(feature = "http")]
mod http_layer {
    use std::sync::Arc;

    use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
    use http::{Request, Response, StatusCode};

    use super::*;

    /// `x-priority`: a request's priority as its client sends it (`sheddable`, `default`,
    /// `critical`), read by [`HttpShedLayer`] when the request carries no [`Priority`]
    /// extension. Trust it only from callers you trust (an internal hop, or set by your
    /// gateway): a client that sends `critical` on everything defeats the point.
    pub static PRIORITY_HEADER: HeaderName = HeaderName::from_static("x-priority");

    type PriorityFn =
        Arc<dyn Fn(&http::Method, &http::Uri, &http::HeaderMap) -> Option<Priority> + Send + Sync>;

    /// Sheds HTTP requests through a [`LoadShedder`]: a shed request is answered `503` with
    /// `Retry-After` and a problem+json body, and never reaches the service. A request's
    /// priority is its [`Priority`] extension (set by an earlier layer: auth, routing), else
    /// the layer's [`priority_by`](Self::priority_by) function, else the
    /// [`PRIORITY_HEADER`], else [`Priority::Default`].
    #[derive(Clone)]
    pub struct HttpShedLayer {
        shedder: LoadShedder,
        by: Option<PriorityFn>,
        header: bool,
    }

    impl std::fmt::Debug for HttpShedLayer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HttpShedLayer")
                .field("shedder", &self.shedder)
                .field("header", &self.header)
                .finish_non_exhaustive()
        }
    }

    impl HttpShedLayer {
        /// Over `shedder`, reading the [`PRIORITY_HEADER`].
        pub fn new(shedder: LoadShedder) -> Self {
            HttpShedLayer {
                shedder,
                by: None,
                header: true,
            }
        }

        /// A request's priority from its method, URI and headers (`None`: the header, then the
        /// default).
        pub fn priority_by(
            mut self,
            by: impl Fn(&http::Method, &http::Uri, &http::HeaderMap) -> Option<Priority>
            + Send
            + Sync
            + 'static,
        ) -> Self {
            self.by = Some(Arc::new(by));
            self
        }

        /// Whether the [`PRIORITY_HEADER`] is read. Default: yes.
        pub fn read_header(mut self, on: bool) -> Self {
            self.header = on;
            self
        }
    }

    impl<S> tower::Layer<S> for HttpShedLayer {
        type Service = HttpShedService<S>;

        fn layer(&self, inner: S) -> Self::Service {
            HttpShedService {
                inner,
                layer: self.clone(),
            }
        }
    }

    /// The service [`HttpShedLayer`] makes.
    #[derive(Clone, Debug)]
    pub struct HttpShedService<S> {
        inner: S,
        layer: HttpShedLayer,
    }

    impl HttpShedLayer {
        fn priority_of<B>(&self, req: &Request<B>) -> Priority {
            if let Some(p) = req.extensions().get::<Priority>() {
                return *p;
            }
            if let Some(by) = &self.by
                && let Some(p) = by(req.method(), req.uri(), req.headers())
            {
                return p;
            }
            self.header
                .then(|| req.headers().get(&PRIORITY_HEADER))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(Priority::parse)
                .unwrap_or_default()
        }
    }

    /// The `503` for a shed request.
    fn shed_response<B: From<String>>(shed: &Shed) -> Response<B> {
        let secs = super::super::whole_seconds(shed.retry_after);
        let priority = format!(",\"priority\":\"{}\"", shed.priority);
        let body = floodwall_core::problem::body(
            "shed",
            "Service overloaded",
            503,
            &shed.to_string(),
            &priority,
        );
        let mut r = Response::new(B::from(body));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(floodwall_core::problem::CONTENT_TYPE),
        );
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        r
    }

    pin_project! {
        /// The response future of [`HttpShedService`].
        #[project = HttpShedProj]
        pub enum HttpResponseFuture<F, B> {
            /// Admitted: the call runs with its permit.
            Admitted { #[pin] fut: F, permit: Option<ShedPermit> },
            /// Shed: the `503`.
            Shed { response: Option<Response<B>> },
        }
    }

    impl<F, B, E> Future for HttpResponseFuture<F, B>
    where
        F: Future<Output = Result<Response<B>, E>>,
    {
        type Output = Result<Response<B>, E>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project() {
                HttpShedProj::Admitted { fut, permit } => {
                    let out = ready!(fut.poll(cx));
                    drop(permit.take());
                    Poll::Ready(out)
                }
                HttpShedProj::Shed { response } => {
                    Poll::Ready(Ok(response.take().expect("polled after completion")))
                }
            }
        }
    }

    impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for HttpShedService<S>
    where
        S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: From<String>,
    {
        type Response = Response<ResBody>;
        type Error = S::Error;
        type Future = HttpResponseFuture<S::Future, ResBody>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
            let priority = self.layer.priority_of(&req);
            match self.layer.shedder.try_acquire(priority) {
                Ok(permit) => HttpResponseFuture::Admitted {
                    fut: self.inner.call(req),
                    permit: Some(permit),
                },
                Err(shed) => HttpResponseFuture::Shed {
                    response: Some(shed_response(&shed)),
                },
            }
        }
    }
}
