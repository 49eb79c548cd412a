//! HTTP-aware classification and retry for `http::Request` / `http::Response` (feature
//! `http`).
//!
//! - [`HttpClassifier`] tells a circuit breaker that a `5xx` or `408` response is a failure,
//!   a `2xx`/`3xx` a success, and other `4xx` (the caller's mistake, or `429`, the server's
//!   rate limit) nothing about the downstream's health.
//! - [`HttpRetryPolicy`] retries `408`, `429` and `5xx` responses and transport errors and
//!   per-attempt timeouts, honouring `Retry-After` (seconds or HTTP-date); never a
//!   rejection by a breaker or bulkhead.
//! - [`IdempotentRequests`] copies requests for retries only when their method is idempotent
//!   (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) unless told otherwise, for bodies
//!   that are buffered and `Clone` (`Full<Bytes>`, `String`, `Vec<u8>`, `Bytes`); a `POST` is
//!   sent once. Extensions are not copied. For a body type that may stream, give
//!   [`RetryLayer::clone_requests_with`](crate::retry::RetryLayer::clone_requests_with) a
//!   closure that returns `None` when the body cannot be replayed, keeping the method check
//!   (with reqwest: `|r: &reqwest::Request| if is_idempotent(r.method()) { r.try_clone() }
//!   else { None }` — `try_clone` alone would retry a `POST`): such a request is passed
//!   through once.
//!
//! The helpers read responses through [`HttpResponse`] and copy requests through
//! [`HttpRequest`], implemented for `http`'s types; implement them for another client's types
//! to use the helpers with it. A call whose result is not a response is a compile error that
//! names the missing trait.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use http::{HeaderMap, HeaderValue, StatusCode, header::RETRY_AFTER};
//! use floodwall_resilience::circuit_breaker::Outcome;
//! use floodwall_resilience::http::{breaker_outcome, retry_after};
//!
//! assert_eq!(breaker_outcome(StatusCode::SERVICE_UNAVAILABLE), Outcome::Failure);
//! assert_eq!(breaker_outcome(StatusCode::NOT_FOUND), Outcome::Ignored);
//! let mut h = HeaderMap::new();
//! h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
//! assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_secs(3)));
//! ```

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, Method, Request, Response, StatusCode};

use crate::Error;
use crate::circuit_breaker::{Classify, Outcome};
use crate::retry::{Decision, RetryPolicy, RetryRequest};

/// Whether repeating a request with this method has the effect of sending it once (RFC 9110
/// §9.2.2): `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a response with this status is worth retrying: `408`, `429` and every `5xx`.
pub fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// What a response says about the downstream's health: `5xx` and `408` are failures, other
/// `4xx` are ignored, everything else is a success.
pub fn breaker_outcome(status: StatusCode) -> Outcome {
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        Outcome::Failure
    } else if status.is_client_error() {
        Outcome::Ignored
    } else {
        Outcome::Success
    }
}

/// The wait a `Retry-After` header asks for: delay-seconds, or an HTTP-date (IMF-fixdate, or
/// the obsolete RFC 850 and asctime forms) minus `now`; a date in the past is zero. `None`
/// when the header is absent or unparsable.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP response as the helpers read it: its status and headers. Implemented for
/// `http::Response<B>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an HTTP response the floodwall HTTP helpers can read",
    label = "`HttpClassifier` / `HttpRetryPolicy` need calls that return an HTTP response, not `{Self}`",
    note = "the helpers judge a response by its status and `Retry-After`: return `http::Response<B>` from the call, or implement `floodwall_resilience::http::HttpResponse` (status and headers) for your client's response type"
)]
pub trait HttpResponse {
    /// The status.
    fn status(&self) -> StatusCode;
    /// The headers.
    fn headers(&self) -> &HeaderMap;
}

impl<B> HttpResponse for Response<B> {
    fn status(&self) -> StatusCode {
        Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        Response::headers(self)
    }
}

/// An HTTP request as [`IdempotentRequests`] copies it: its method, and a copy for another
/// attempt when its body can be replayed. Implemented for `http::Request<B>` with a `Clone`
/// body.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an HTTP request `IdempotentRequests` can copy",
    label = "`IdempotentRequests` copies HTTP requests with a replayable body, not `{Self}`",
    note = "use `http::Request<B>` with a `Clone` body (`Full<Bytes>`, `String`, `Vec<u8>`, `Bytes`), or implement `floodwall_resilience::http::HttpRequest` (method and copy) for your client's request type"
)]
pub trait HttpRequest: Sized {
    /// The method.
    fn method(&self) -> &Method;
    /// A copy for another attempt, or `None` when the body cannot be replayed.
    fn copy(&self) -> Option<Self>;
}

impl<B: Clone> HttpRequest for Request<B> {
    fn method(&self) -> &Method {
        Request::method(self)
    }
    fn copy(&self) -> Option<Self> {
        let mut copy = Request::new(self.body().clone());
        *copy.method_mut() = self.method().clone();
        *copy.uri_mut() = self.uri().clone();
        *copy.version_mut() = self.version();
        *copy.headers_mut() = self.headers().clone();
        Some(copy)
    }
}

/// Classifies responses by status ([`breaker_outcome`]) and every error as a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpClassifier;

impl<R: HttpResponse, E> Classify<R, E> for HttpClassifier {
    fn classify(&self, result: &Result<R, E>) -> Outcome {
        match result {
            Ok(resp) => breaker_outcome(resp.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

/// Retries retryable statuses ([`is_retryable_status`]), honouring `Retry-After`, and
/// transport errors and timeouts; returns rejections by a breaker or bulkhead at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRetryPolicy;

impl<R: HttpResponse, E> RetryPolicy<R, Error<E>> for HttpRetryPolicy {
    fn decide(&self, result: &Result<R, Error<E>>) -> Decision {
        match result {
            Ok(resp) if is_retryable_status(resp.status()) => {
                match retry_after(resp.headers(), SystemTime::now()) {
                    Some(d) => Decision::RetryAfter(d),
                    None => Decision::Retry,
                }
            }
            Ok(_) => Decision::Done,
            Err(Error::Inner(_)) | Err(Error::Timeout(_)) | Err(Error::Injected(_)) => {
                Decision::Retry
            }
            Err(_) => Decision::Done,
        }
    }
}

/// Copies idempotent requests with a cloneable body for retries; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdempotentRequests {
    all_methods: bool,
}

impl IdempotentRequests {
    /// Only idempotent methods are retried.
    pub const fn new() -> Self {
        IdempotentRequests { all_methods: false }
    }

    /// Every method is retried — for APIs that dedupe with an idempotency key.
    pub const fn all_methods() -> Self {
        IdempotentRequests { all_methods: true }
    }
}

impl<R: HttpRequest> RetryRequest<R> for IdempotentRequests {
    fn clone_request(&self, req: &R) -> Option<R> {
        if !self.all_methods && !is_idempotent(req.method()) {
            return None;
        }
        req.copy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn retry_after_in_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static(" 120 "));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:50:07 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sunday, 06-Nov-94 08:49:47 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun Nov  6 08:49:57 1994"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(20)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:00:00 GMT"),
        );
        assert_eq!(
            retry_after(&h, now),
            Some(Duration::ZERO),
            "past dates wait nothing"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("-5"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn statuses_and_methods() {
        for (code, retry, outcome) in [
            (200, false, Outcome::Success),
            (301, false, Outcome::Success),
            (400, false, Outcome::Ignored),
            (404, false, Outcome::Ignored),
            (408, true, Outcome::Failure),
            (429, true, Outcome::Ignored),
            (500, true, Outcome::Failure),
            (503, true, Outcome::Failure),
        ] {
            let s = StatusCode::from_u16(code).unwrap();
            assert_eq!(is_retryable_status(s), retry, "{code}");
            assert_eq!(breaker_outcome(s), outcome, "{code}");
        }
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }

    #[test]
    fn policy_and_cloner() {
        let p = HttpRetryPolicy;
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("2"));
        let r: Result<_, Error<()>> = Ok(resp);
        assert_eq!(p.decide(&r), Decision::RetryAfter(Duration::from_secs(2)));
        let r: Result<Response<()>, Error<()>> = Ok(Response::new(()));
        assert_eq!(p.decide(&r), Decision::Done);
        let r: Result<Response<()>, Error<()>> = Err(Error::Inner(()));
        assert_eq!(p.decide(&r), Decision::Retry);
        let open = crate::circuit_breaker::Rejected {
            state: crate::circuit_breaker::State::Open,
            retry_after: None,
            cause: None,
        };
        let r: Result<Response<()>, Error<()>> = Err(Error::CircuitOpen(open));
        assert_eq!(p.decide(&r), Decision::Done);

        let get = Request::get("http://a/b")
            .header("x-k", "v")
            .body("x".to_string())
            .unwrap();
        let copy = IdempotentRequests::new().clone_request(&get).unwrap();
        assert_eq!(
            (copy.method(), copy.uri(), copy.body()),
            (get.method(), get.uri(), get.body())
        );
        assert_eq!(copy.headers()["x-k"], "v");
        let post = Request::post("http://a/b").body(String::new()).unwrap();
        assert!(IdempotentRequests::new().clone_request(&post).is_none());
        assert!(
            IdempotentRequests::all_methods()
                .clone_request(&post)
                .is_some()
        );
    }
}
