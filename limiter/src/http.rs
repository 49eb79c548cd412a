//! HTTP (feature `http`): [`HttpRateLimitLayer`] answers a denied request with `429 Too Many
//! Requests` and `Retry-After`, and marks every response with the IETF draft's `RateLimit`
//! and `RateLimit-Policy` fields (draft-ietf-httpapi-ratelimit-headers):
//!
//! ```text
//! RateLimit-Policy: "user";q=100;w=60        the binding limit: q per w seconds
//! RateLimit: "user";r=0;t=42                 r remaining now, t seconds until full again
//! Retry-After: 3                             (429 only) seconds until this request fits
//! ```
//!
//! Seconds are rounded up, so a client that waits what it is told is never early. When the
//! store fails and the policy is to fail closed, the answer is `503 Service Unavailable`.
//!
//! [`ClientIp`] (module `client_ip`, re-exported here) finds the client's address, believing
//! `Forwarded` / `X-Forwarded-For` only when they come from a configured proxy.

use std::fmt;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::layer::KeyExtractor;
use crate::layer::future::ResponseFuture;
use crate::{Binding, LimitError, RateLimiter, Verdict};

pub use crate::client_ip::{ClientIp, ForwardedHeader, InvalidRange, IpRange};

/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Writes the `RateLimit`, `RateLimit-Policy` and (when denied) `Retry-After` fields for a
/// verdict into `headers`. Nothing is written when no limit applied.
pub fn write_headers(verdict: &Verdict, headers: &mut HeaderMap) {
    let Some(b) = &verdict.binding else {
        return;
    };
    let name = sf_string(&b.name);
    if let Ok(v) = HeaderValue::from_str(&policy_item(&name, b)) {
        headers.insert(RATELIMIT_POLICY.clone(), v);
    }
    let d = &b.decision;
    let value = format!("{name};r={};t={}", d.remaining, d.reset_after_secs());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(RATELIMIT.clone(), v);
    }
    if !verdict.allowed
        && let Some(secs) = d.retry_after_secs()
    {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

fn policy_item(name: &str, b: &Binding) -> String {
    let w = b.quota.period().as_secs_f64().ceil().max(1.0) as u64;
    format!("{name};q={};w={w}", b.quota.limit())
}

/// A structured-field string: quoted, with `"` and `\` escaped and anything outside
/// printable ASCII replaced.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// Rate-limits HTTP requests: `429` with `Retry-After` when denied, `RateLimit` fields on
/// every response, `503` when the store fails and the policy is to fail closed.
///
/// The response body type must be buildable from a `&'static str` (axum's `Body`,
/// `Full<Bytes>`, `String`).
#[derive(Clone)]
pub struct HttpRateLimitLayer<X> {
    limiter: RateLimiter,
    extractor: X,
}

impl<X> HttpRateLimitLayer<X> {
    /// Limits requests by `limiter`, keyed by what `extractor` finds in each (a closure
    /// `Fn(&Request<B>, &mut Descriptor)`, or [`ClientIp`]).
    pub fn new(limiter: RateLimiter, extractor: X) -> Self {
        HttpRateLimitLayer { limiter, extractor }
    }
}

impl<X> fmt::Debug for HttpRateLimitLayer<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, X: Clone> Layer<S> for HttpRateLimitLayer<X> {
    type Service = HttpRateLimit<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpRateLimit {
            inner,
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

/// The service [`HttpRateLimitLayer`] makes.
#[derive(Clone)]
pub struct HttpRateLimit<S, X> {
    inner: S,
    limiter: RateLimiter,
    extractor: X,
}

impl<S, X> HttpRateLimit<S, X> {
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

impl<S: fmt::Debug, X> fmt::Debug for HttpRateLimit<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn plain<B: From<&'static str>>(status: StatusCode, text: &'static str) -> Response<B> {
    let mut r = Response::new(B::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answers `429` (or `503` when failing closed) and writes the `RateLimit` fields.
#[derive(Debug, Clone, Copy)]
pub struct Answer429;

impl<ResBody: From<&'static str>, E> crate::layer::future::Answer<Response<ResBody>, E>
    for Answer429
{
    fn refuse(&self, verdict: Result<Verdict, LimitError>) -> Result<Response<ResBody>, E> {
        Ok(match verdict {
            Ok(verdict) => {
                let mut r = plain(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
                write_headers(&verdict, r.headers_mut());
                r
            }
            Err(LimitError::Unavailable(_)) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate limiting is unavailable\n",
            ),
            Err(LimitError::InsufficientCapacity { .. }) => plain(
                StatusCode::TOO_MANY_REQUESTS,
                "request exceeds the rate limit\n",
            ),
        })
    }

    fn admitted(&self, verdict: &Verdict, mut response: Response<ResBody>) -> Response<ResBody> {
        write_headers(verdict, response.headers_mut());
        response
    }
}

impl<S, X, ReqBody, ResBody> Service<Request<ReqBody>> for HttpRateLimit<S, X>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    X: KeyExtractor<Request<ReqBody>>,
    ResBody: From<&'static str> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqBody>, Answer429>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        crate::layer::decide(
            &self.limiter,
            &self.extractor,
            &mut self.inner,
            req,
            Answer429,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_field_strings_are_escaped() {
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(sf_string("ü"), "\"_\"");
    }
}
