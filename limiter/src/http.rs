//! HTTP (feature `http`): [`HttpRateLimitLayer`] answers a denied request with `429 Too Many
//! Requests` and `Retry-After`, and marks every response with the IETF draft's `RateLimit`
//! and `RateLimit-Policy` fields (draft-ietf-httpapi-ratelimit-headers):
//!
//! ```text
//! RateLimit-Policy: "user";q=100;w=60        the binding limit: q per w seconds
//! RateLimit-Policy: "user";q=100;w=60;burst=20   (a burst other than q: an extension
//!                                            parameter, as the draft's examples use)
//! RateLimit: "user";r=0;t=42                 r remaining now, t seconds until full again
//! Retry-After: 3                             (429 only) seconds until this request fits
//! ```
//!
//! Seconds are rounded up, so a client that waits what it is told is never early. When the
//! store fails and the policy is to fail closed, the answer is `503 Service Unavailable`. A
//! request the key extractor [`reject`](crate::layer::Descriptor::reject)s (no API key) is
//! answered with the extractor's status (`401`, `400`) and decided by no limit. Bodies are
//! `application/problem+json` (RFC 9457), as the idempotency layer and floodwall-reqwest's
//! refusals answer, or plain text with [`HttpRateLimitLayer::plain_text`].
//!
//! [`ClientIp`] (module `client_ip`, re-exported here) finds the client's address, believing
//! `Forwarded` / `X-Forwarded-For` only when they come from a configured proxy.

use std::fmt;
use std::task::{Context, Poll};

use floodwall_core::problem;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::layer::future::ResponseFuture;
use crate::layer::{KeyExtractor, KeyRejection};
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
    let (q, burst) = (b.quota.limit(), b.quota.burst());
    if burst == q {
        format!("{name};q={q};w={w}")
    } else {
        format!("{name};q={q};w={w};burst={burst}")
    }
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
/// The response body type must be buildable from a `String` (axum's `Body`, `Full<Bytes>`,
/// `String`).
#[derive(Clone)]
pub struct HttpRateLimitLayer<X> {
    limiter: RateLimiter,
    extractor: X,
    answer: Answer429,
}

impl<X> HttpRateLimitLayer<X> {
    /// Limits requests by `limiter`, keyed by what `extractor` finds in each (a closure
    /// `Fn(&Request<B>, &mut Descriptor)`, or [`ClientIp`]).
    pub fn new(limiter: RateLimiter, extractor: X) -> Self {
        HttpRateLimitLayer {
            limiter,
            extractor,
            answer: Answer429 { problem: true },
        }
    }

    /// Answers refusals (429, 503, an extractor's 401/400) with an
    /// `application/problem+json` body (RFC 9457) — the default: `type`
    /// `urn:floodwall:rate-limit:<kind>`, `title`, `status`, `detail`, and for a 429 the
    /// binding `limit` and `retry_after` seconds.
    pub fn problem_json(mut self) -> Self {
        self.answer.problem = true;
        self
    }

    /// Answers refusals with a plain-text body (`text/plain`, the reason and a newline)
    /// instead of problem+json.
    pub fn plain_text(mut self) -> Self {
        self.answer.problem = false;
        self
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
    type Service = HttpRateLimitService<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpRateLimitService {
            inner,
            limiter: self.limiter.clone(),
            extractor: self.extractor.clone(),
            answer: self.answer,
        }
    }
}

/// The service [`HttpRateLimitLayer`] makes.
#[derive(Clone)]
pub struct HttpRateLimitService<S, X> {
    inner: S,
    limiter: RateLimiter,
    extractor: X,
    answer: Answer429,
}

impl<S, X> HttpRateLimitService<S, X> {
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

impl<S: fmt::Debug, X> fmt::Debug for HttpRateLimitService<S, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRateLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Answers `429` (or `503` when failing closed, or the extractor's status for a request it
/// refused) and writes the `RateLimit` fields.
#[derive(Debug, Clone, Copy)]
pub struct Answer429 {
    problem: bool,
}

impl Answer429 {
    /// A refusal: plain text, or problem+json with `extra` members.
    fn body<B: From<String>>(
        &self,
        status: StatusCode,
        kind: &str,
        detail: &str,
        extra: &str,
    ) -> Response<B> {
        let (body, content_type) = if self.problem {
            let title = status.canonical_reason().unwrap_or("Error");
            let kind = format!("rate-limit:{kind}");
            let body = problem::body(&kind, title, status.as_u16(), detail, extra);
            (body, problem::CONTENT_TYPE)
        } else {
            (format!("{detail}\n"), "text/plain; charset=utf-8")
        };
        let mut r = Response::new(B::from(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        r
    }
}

impl<ResBody: From<String>, E> crate::layer::future::Answer<Response<ResBody>, E> for Answer429 {
    fn refuse(&self, verdict: Result<Verdict, LimitError>) -> Result<Response<ResBody>, E> {
        Ok(match verdict {
            Ok(verdict) => {
                let (limit, retry) = match &verdict.binding {
                    Some(b) => (b.name.as_ref(), b.decision.retry_after_secs().unwrap_or(0)),
                    None => ("", 0),
                };
                let extra = format!(
                    ",\"limit\":{},\"retry_after\":{retry}",
                    problem::json_string(limit)
                );
                let mut r = self.body(
                    StatusCode::TOO_MANY_REQUESTS,
                    "exceeded",
                    "too many requests",
                    &extra,
                );
                write_headers(&verdict, r.headers_mut());
                r
            }
            Err(LimitError::Unavailable(_)) => self.body(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "rate limiting is unavailable",
                "",
            ),
            Err(LimitError::InsufficientCapacity { .. }) => self.body(
                StatusCode::TOO_MANY_REQUESTS,
                "too-costly",
                "request exceeds the rate limit",
                "",
            ),
        })
    }

    fn unkeyed(&self, rejection: KeyRejection) -> Result<Response<ResBody>, E> {
        let status = StatusCode::from_u16(rejection.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::BAD_REQUEST);
        Ok(self.body(status, "unkeyed", rejection.message, ""))
    }

    fn admitted(&self, verdict: &Verdict, mut response: Response<ResBody>) -> Response<ResBody> {
        write_headers(verdict, response.headers_mut());
        response
    }
}

impl<S, X, ReqBody, ResBody> Service<Request<ReqBody>> for HttpRateLimitService<S, X>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    X: KeyExtractor<Request<ReqBody>>,
    ResBody: From<String> + Send + 'static,
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
            self.answer,
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
