//! `tower` layers (feature `tower`): [`RateLimitLayer`] decides each request before it
//! reaches the service and fails a denied one with [`Error::RateLimited`], which carries
//! `retry_after`. For HTTP servers, [`HttpRateLimitLayer`](crate::http::HttpRateLimitLayer)
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
//! let mut svc = layer.layer(service_fn(|job: Job| async move { Ok::<_, std::convert::Infallible>(job.tenant) }));
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

use crate::{Decision, LimitError, RateLimiter, Verdict};

/// The entries a request is limited by, e.g. `("user", "42")`, `("ip", "203.0.113.9")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    entries: Vec<(&'static str, String)>,
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
    pub limit: Arc<str>,
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

/// The error of a [`RateLimitService`].
#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    /// The request was denied.
    #[error(transparent)]
    RateLimited(RateLimited),
    /// No decision could be made (the store failed and the policy is to fail closed, or the
    /// request costs more than a limit allows).
    #[error(transparent)]
    Limiter(LimitError),
    /// The inner service failed.
    #[error("{0}")]
    Inner(E),
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

/// The service [`RateLimitLayer`] makes.
#[derive(Clone)]
pub struct RateLimitService<S, X> {
    inner: S,
    limiter: RateLimiter,
    extractor: X,
}

impl<S: fmt::Debug, X> fmt::Debug for RateLimitService<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// A boxed response future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, X, Req> Service<Req> for RateLimitService<S, X>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    X: KeyExtractor<Req>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = BoxFuture<Result<S::Response, Error<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut descriptor = Descriptor::new();
        self.extractor.extract(&req, &mut descriptor);
        let limiter = self.limiter.clone();
        // The clone is not ready; the ready one goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let verdict = descriptor.check(&limiter).await.map_err(Error::Limiter)?;
            if !verdict.allowed {
                return Err(Error::RateLimited(RateLimited::from_verdict(&verdict)));
            }
            inner.call(req).await.map_err(Error::Inner)
        })
    }
}
