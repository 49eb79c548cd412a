//! `tower` layers (feature `tower`): [`RateLimitLayer`] decides each request before it
//! reaches the service and fails a denied one with the inner service's own error type,
//! made `From<`[`Rejected`]`>` (the ready-made [`Error`] is one; so is `tower::BoxError`); a
//! denial carries `retry_after`. For HTTP servers, [`HttpRateLimitLayer`](crate::http::HttpRateLimitLayer)
//! answers `429` instead.
//!
//! A [`KeyExtractor`] turns a request into its [`Descriptor`]: the entries (`"user"`,
//! `"ip"`, `"token"`, ...) the limiter's limits are keyed by.
//!
//! ```
//! use std::num::NonZeroU32;
//! use floodwall_limiter::layer::{Descriptor, Error, RateLimitLayer};
//! use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! #[derive(Clone)]
//! struct Job { tenant: String }
//!
//! let limiter = RateLimiter::builder()
//!     .limit(Limit::new("tenant", Algorithm::Gcra, Quota::per_minute(NonZeroU32::new(1).unwrap())).keyed_by("tenant"))
//!     .build()
//!     .unwrap();
//! let layer = RateLimitLayer::new(limiter, |job: &Job, d: &mut Descriptor| d.push("tenant", &job.tenant));
//! let mut svc = layer.layer(service_fn(|job: Job| async move {
//!     Ok::<_, Error<std::convert::Infallible>>(job.tenant)
//! }));
//!
//! let job = Job { tenant: "acme".into() };
//! assert_eq!(svc.ready().await.unwrap().call(job.clone()).await.unwrap(), "acme");
//! match svc.ready().await.unwrap().call(job).await {
//!     Err(Error::RateLimited(r)) => assert!(r.retry_after.as_secs() >= 59),
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

pub mod future;

use crate::{Decision, LimitError, RateLimiter, Verdict};

/// The entries a request is limited by, e.g. `("user", "42")`, `("ip", "203.0.113.9")`.
/// An extractor that cannot key a request (no API key) [`reject`](Descriptor::reject)s it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    entries: Vec<(&'static str, String)>,
    rejection: Option<KeyRejection>,
}

/// An extractor's refusal of a request it cannot key: the HTTP status to answer with (a
/// missing API key is `401` or `400`, as the service chooses) and a message. The request
/// reaches neither the limiter nor the service, so an unkeyed request is never limited by
/// the global limits alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request refused by the key extractor ({status}): {message}")]
pub struct KeyRejection {
    /// The HTTP status [`HttpRateLimitLayer`](crate::http::HttpRateLimitLayer) answers with
    /// (a code outside 400–599 is answered as 400).
    pub status: u16,
    /// Why, for the response body.
    pub message: &'static str,
}

impl KeyRejection {
    /// A refusal with `status` and `message`.
    pub const fn new(status: u16, message: &'static str) -> Self {
        KeyRejection { status, message }
    }

    /// `401 Unauthorized` (no credentials to key by).
    pub const fn unauthorized(message: &'static str) -> Self {
        Self::new(401, message)
    }

    /// `400 Bad Request` (a malformed key).
    pub const fn bad_request(message: &'static str) -> Self {
        Self::new(400, message)
    }
}

impl Descriptor {
    /// An empty descriptor (only global limits apply).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry (replacing an entry of the same name).
    pub fn push(&mut self, name: &'static str, value: impl Into<String>) {
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = value,
            None => self.entries.push((name, value)),
        }
    }

    /// The value of entry `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses the request: it is answered with `rejection` and decided by no limit. The
    /// last rejection wins.
    pub fn reject(&mut self, rejection: KeyRejection) {
        self.rejection = Some(rejection);
    }

    /// The extractor's refusal, if it made one.
    pub fn rejection(&self) -> Option<&KeyRejection> {
        self.rejection.as_ref()
    }

    /// The entries, in the order they were pushed.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.entries.iter().map(|(n, v)| (*n, v.as_str()))
    }

    /// Decides this descriptor on `limiter` (cost 1).
    pub async fn check(&self, limiter: &RateLimiter) -> Result<Verdict, LimitError> {
        let pairs: Vec<(&str, &str)> = self.entries().collect();
        limiter.check(&pairs).await
    }
}

/// Builds a request's [`Descriptor`]. Implemented for closures
/// `Fn(&Req, &mut Descriptor)`.
pub trait KeyExtractor<Req>: Clone + Send + Sync + 'static {
    /// Adds the request's entries to `out`.
    fn extract(&self, req: &Req, out: &mut Descriptor);
}

impl<Req, F> KeyExtractor<Req> for F
where
    F: Fn(&Req, &mut Descriptor) + Clone + Send + Sync + 'static,
{
    fn extract(&self, req: &Req, out: &mut Descriptor) {
        self(req, out)
    }
}

/// A request was denied: how long to wait, and by which limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limited by {limit:?}; retry after {retry_after:?}")]
pub struct RateLimited {
    /// How long until the same request would be admitted.
    pub retry_after: Duration,
    /// The limit that denied it.
    pub limit: crate::LimitName,
    /// That limit's decision.
    pub decision: Decision,
}

impl RateLimited {
    pub(crate) fn from_verdict(v: &Verdict) -> RateLimited {
        let b = v.binding.as_ref();
        RateLimited {
            retry_after: v.retry_after().unwrap_or_default(),
            limit: b.map(|b| b.name.clone()).unwrap_or_else(|| "".into()),
            decision: b.map(|b| b.decision).unwrap_or(Decision {
                allowed: false,
                limit: 0,
                remaining: 0,
                reset_after: Duration::ZERO,
                retry_after: None,
            }),
        }
    }
}

/// What a [`RateLimitService`] refuses a request with; the inner service's error type takes it
/// through `From<Rejected>` (as [`Error`] does, and `tower::BoxError`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejected {
    /// The request was denied.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// No decision could be made (the store failed and the policy is to fail closed, or the
    /// request costs more than a limit allows).
    #[error(transparent)]
    Limiter(Arc<LimitError>),
    /// The key extractor refused the request.
    #[error(transparent)]
    Unkeyed(KeyRejection),
}

impl Rejected {
    /// `retry_after` of a denial.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejected::RateLimited(r) => Some(r.retry_after),
            Rejected::Limiter(_) | Rejected::Unkeyed(_) => None,
        }
    }
}

/// A ready-made error for services behind a [`RateLimitService`]: a rejection, or the inner
/// service's own error (map yours into it with `map_err(Error::Inner)`).
#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    /// The request was denied.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// No decision could be made.
    #[error(transparent)]
    Limiter(Arc<LimitError>),
    /// The key extractor refused the request.
    #[error(transparent)]
    Unkeyed(KeyRejection),
    /// The inner service failed.
    #[error("{0}")]
    Inner(E),
}

impl<E> From<Rejected> for Error<E> {
    fn from(r: Rejected) -> Self {
        match r {
            Rejected::RateLimited(r) => Error::RateLimited(r),
            Rejected::Limiter(e) => Error::Limiter(e),
            Rejected::Unkeyed(r) => Error::Unkeyed(r),
        }
    }
}

impl<E> Error<E> {
    /// `retry_after` of a denial.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited(r) => Some(r.retry_after),
            _ => None,
        }
    }
}

/// Applies a [`RateLimiter`] to every request. See the [module docs](self).
#[derive(Clone)]
pub struct RateLimitLayer<X> {
    limiter: RateLimiter,
    extractor: X,
}

impl<X> RateLimitLayer<X> {
    /// Limits requests by `limiter`, keyed by what `extractor` finds in each.
    pub fn new(limiter: RateLimiter, extractor: X) -> Self {
        RateLimitLayer { limiter, extractor }
    }
}

impl<X> fmt::Debug for RateLimitLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, X: Clone> Layer<S> for RateLimitLayer<X> {
    type Service = RateLimitService<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes: decides each request, then calls the inner service
/// or fails with `S::Error::from(Rejected)`.
#[derive(Clone)]
pub struct RateLimitService<S, X> {
    inner: S,
    limiter: RateLimiter,
    extractor: X,
}

impl<S, X> RateLimitService<S, X> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, X> fmt::Debug for RateLimitService<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// A boxed future: a decision on Redis.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Refuses with `E::from(Rejected)`.
#[derive(Debug, Clone, Copy)]
pub struct Refuse;

impl<Res, E: From<Rejected>> future::Answer<Res, E> for Refuse {
    fn refuse(&self, verdict: Result<Verdict, LimitError>) -> Result<Res, E> {
        Err(E::from(match verdict {
            Ok(v) => Rejected::RateLimited(RateLimited::from_verdict(&v)),
            Err(e) => Rejected::Limiter(Arc::new(e)),
        }))
    }

    fn unkeyed(&self, rejection: KeyRejection) -> Result<Res, E> {
        Err(E::from(Rejected::Unkeyed(rejection)))
    }

    fn admitted(&self, _: &Verdict, response: Res) -> Res {
        response
    }
}

/// Decides `req` on `limiter` and makes the response future: at once and with no boxed
/// future when the limits live in memory; with the inner service cloned (the ready one moves
/// into the future) and the decision boxed when they live on Redis.
pub(crate) fn decide<S, Req, X, A>(
    limiter: &RateLimiter,
    extractor: &X,
    inner: &mut S,
    req: Req,
    answer: A,
) -> future::ResponseFuture<S, Req, A>
where
    S: Service<Req> + Clone,
    X: KeyExtractor<Req>,
{
    let mut descriptor = Descriptor::new();
    extractor.extract(&req, &mut descriptor);
    if let Some(rejection) = descriptor.rejection.take() {
        return future::ResponseFuture::unkeyed(rejection, answer);
    }
    let pairs: Vec<(&str, &str)> = descriptor.entries().collect();
    if let Some(verdict) = limiter.try_check_now(&pairs) {
        return future::ResponseFuture::decided(verdict, inner, req, answer);
    }
    let limiter = limiter.clone();
    let decide: BoxFuture<Result<Verdict, LimitError>> =
        Box::pin(async move { descriptor.check(&limiter).await });
    let clone = inner.clone();
    let ready = std::mem::replace(inner, clone);
    future::ResponseFuture::deciding(decide, ready, req, answer)
}

impl<S, X, Req> Service<Req> for RateLimitService<S, X>
where
    S: Service<Req> + Clone,
    S::Error: From<Rejected>,
    X: KeyExtractor<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = future::ResponseFuture<S, Req, Refuse>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        decide(&self.limiter, &self.extractor, &mut self.inner, req, Refuse)
    }
}
