//! `tracing` spans for client requests, with OpenTelemetry's HTTP client attribute names: one
//! span per logical request (`HTTP request`) and one per attempt (`HTTP attempt`), made by
//! [`RetryMiddleware`](crate::RetryMiddleware) and [`HostPipeline`](crate::HostPipeline).
//!
//! | field | on | value |
//! |---|---|---|
//! | `otel.name`, `otel.kind` | both | the method (`GET`), `client` |
//! | `http.request.method` | both | the method |
//! | `server.address`, `server.port` | both | the URL's host and port |
//! | `url.full` | both | the URL, its user info replaced by `REDACTED` and the values of signing query parameters (`sig`, `signature`, `X-Amz-Signature`, …) too |
//! | `http.request.resend_count` | attempt | how many times it was sent before (set from the second attempt) |
//! | `http.response.status_code` | both | the final status |
//! | `error.type` | both | the status code for a `4xx`/`5xx`, `timeout`, a refusal's kind (`circuit-open`, `bulkhead-full`, `rate-limited`, `limiter-unavailable`), or reqwest's error kind (`connect`, `request`, …) |
//! | `floodwall.attempts` | request | attempts made |
//! | `floodwall.refused_by` | request | what refused or cut it, if floodwall did |
//!
//! Without any subscriber installed a span costs one atomic load; one nobody listens to costs
//! the span macro's interest check; no field is formatted for either.

use reqwest::{Request, Response};
use tracing::Span;
use tracing::field::Empty;

use crate::ErrorExt;

/// Query parameters whose values are secrets (signed URLs).
const SECRET_PARAMS: [&str; 5] = [
    "sig",
    "signature",
    "x-amz-signature",
    "x-goog-signature",
    "awsaccesskeyid",
];

/// Whether any subscriber could want a span: none was ever installed (the common case in a
/// service without tracing) means no span, for one atomic load — cheaper than the span macro's
/// own checks.
#[inline]
fn wanted() -> bool {
    tracing::dispatcher::has_been_set()
}

/// The span of one logical request.
pub(crate) fn request_span(req: &Request) -> Span {
    if !wanted() {
        return Span::none();
    }
    let method = req.method().as_str();
    let span = tracing::info_span!(
        target: "floodwall::http_client",
        "HTTP request",
        otel.name = method,
        otel.kind = "client",
        http.request.method = method,
        server.address = Empty,
        server.port = Empty,
        url.full = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        floodwall.attempts = Empty,
        floodwall.refused_by = Empty,
    );
    describe(&span, req);
    span
}

/// The span of attempt `n` (1-based) of a request to `req`'s URL.
pub(crate) fn attempt_span(req: &Request, n: u32) -> Span {
    if !wanted() {
        return Span::none();
    }
    let method = req.method().as_str();
    let span = tracing::info_span!(
        target: "floodwall::http_client",
        "HTTP attempt",
        otel.name = method,
        otel.kind = "client",
        http.request.method = method,
        server.address = Empty,
        server.port = Empty,
        url.full = Empty,
        http.request.resend_count = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
    );
    if !span.is_disabled() {
        describe(&span, req);
        if n > 1 {
            span.record("http.request.resend_count", n - 1);
        }
    }
    span
}

fn describe(span: &Span, req: &Request) {
    if span.is_disabled() {
        return;
    }
    let url = req.url();
    span.record("server.address", url.host_str().unwrap_or(""));
    if let Some(port) = url.port_or_known_default() {
        span.record("server.port", port);
    }
    span.record("url.full", redacted(url).as_str());
}

/// Records how the attempt or request ended.
pub(crate) fn record_result(span: &Span, result: Result<&Response, &reqwest_middleware::Error>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(resp) => {
            let status = resp.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_client_error() || status.is_server_error() {
                span.record("error.type", status.as_str());
            }
        }
        Err(e) => {
            span.record("error.type", error_type(e));
            if let Some(refusal) = e.floodwall() {
                span.record("floodwall.refused_by", refusal.kind().slug());
            }
        }
    }
}

/// Records the attempts a logical request made.
pub(crate) fn record_attempts(span: &Span, attempts: u32) {
    if !span.is_disabled() {
        span.record("floodwall.attempts", attempts);
    }
}

fn error_type(e: &reqwest_middleware::Error) -> &'static str {
    if let Some(refusal) = e.floodwall() {
        return match refusal.kind() {
            crate::RefusalKind::TimedOut => "timeout",
            kind => kind.slug(),
        };
    }
    match e {
        reqwest_middleware::Error::Reqwest(e) if e.is_timeout() => "timeout",
        reqwest_middleware::Error::Reqwest(e) if e.is_connect() => "connect",
        reqwest_middleware::Error::Reqwest(e) if e.is_body() => "body",
        reqwest_middleware::Error::Reqwest(e) if e.is_decode() => "decode",
        reqwest_middleware::Error::Reqwest(e) if e.is_redirect() => "redirect",
        reqwest_middleware::Error::Reqwest(_) => "request",
        reqwest_middleware::Error::Middleware(_) => "middleware",
    }
}

/// `url` with its user info replaced by `REDACTED` and the values of signing query
/// parameters too, as OpenTelemetry asks of `url.full`.
pub(crate) fn redacted(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() {
        let _ = url.set_username("REDACTED");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    let secret = |k: &str| SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
    if url.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "REDACTED".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.into()
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn url_full_keeps_no_credentials_or_signatures() {
        for (url, want) in [
            (
                "https://alice:pw@api.example.com/a?id=7",
                "https://REDACTED:REDACTED@api.example.com/a?id=7",
            ),
            (
                "https://s3.example.com/o?X-Amz-Signature=abc&x=1",
                "https://s3.example.com/o?X-Amz-Signature=REDACTED&x=1",
            ),
            ("http://h:8080/p?q=1", "http://h:8080/p?q=1"),
        ] {
            assert_eq!(redacted(&url.parse().unwrap()), want);
        }
    }
}
