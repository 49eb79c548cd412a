//! [`FloodwallError`]: why a middleware refused or cut a request, carried as
//! `reqwest_middleware::Error::Middleware` and found with [`ErrorExt::floodwall`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodwall_resilience::{bulkhead, circuit_breaker};
use http::{HeaderValue, StatusCode};

/// What refused or cut a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The host's circuit breaker is open (or half-open with every probe taken): nothing sent.
    CircuitOpen,
    /// The host's bulkhead is full: nothing sent.
    BulkheadFull,
    /// The client-side rate limit would have made the request wait longer than allowed.
    RateLimited,
    /// The rate limiter could not decide (its store failed and its policy refused).
    LimiterUnavailable,
    /// An attempt (or the whole call) took longer than its bound.
    TimedOut,
    /// Client-side adaptive throttling rejected the request locally: the host accepted too
    /// few recent requests ([`HostThrottle`](crate::HostThrottle)). Not sent, not retried.
    Throttled,
}

impl RefusalKind {
    /// The status a server proxying this request answers its own caller: `504` for a timeout,
    /// `503` for every refusal (the upstream is not available to this service now).
    pub fn status(self) -> StatusCode {
        match self {
            RefusalKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn words(self) -> &'static str {
        match self {
            RefusalKind::CircuitOpen => "circuit breaker open",
            RefusalKind::BulkheadFull => "bulkhead full",
            RefusalKind::RateLimited => "client-side rate limit",
            RefusalKind::LimiterUnavailable => "rate limiter unavailable",
            RefusalKind::TimedOut => "timed out",
            RefusalKind::Throttled => "throttled locally",
        }
    }

    /// The kind's stable name, as spans' `error.type` and the problem+json `type` carry it:
    /// `circuit-open`, `bulkhead-full`, `rate-limited`, `limiter-unavailable`, `timed-out`,
    /// `throttled`. Also its `Display`.
    pub fn as_str(self) -> &'static str {
        self.slug()
    }

    pub(crate) fn slug(self) -> &'static str {
        match self {
            RefusalKind::CircuitOpen => "circuit-open",
            RefusalKind::BulkheadFull => "bulkhead-full",
            RefusalKind::RateLimited => "rate-limited",
            RefusalKind::LimiterUnavailable => "limiter-unavailable",
            RefusalKind::TimedOut => "timed-out",
            RefusalKind::Throttled => "throttled",
        }
    }
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// Why a floodwall middleware refused or cut a request: [`kind`](Self::kind), for which
/// [`host_key`](Self::host_key) and which named [`instance_name`](Self::instance_name), after how many
/// [`attempts`](Self::attempts), and when to come back ([`retry_after`](Self::retry_after)).
/// Get it from a `reqwest_middleware::Error` with [`ErrorExt::floodwall`]; a server proxying
/// the upstream answers its own caller with [`to_response`](Self::to_response).
///
/// ```
/// use floodwall_reqwest::{ErrorExt, RefusalKind};
///
/// fn status_for(e: &floodwall_reqwest::reqwest_middleware::Error) -> u16 {
///     match e.floodwall() {
///         Some(refusal) if refusal.kind() == RefusalKind::TimedOut => 504,
///         Some(refusal) => refusal.status().as_u16(),
///         None => 502,
///     }
/// }
/// # let _ = status_for;
/// ```
#[derive(Debug)]
pub struct FloodwallError {
    kind: RefusalKind,
    host: Option<String>,
    instance: Option<Arc<str>>,
    attempts: u32,
    retry_after: Option<Duration>,
    detail: Detail,
}

#[derive(Debug)]
enum Detail {
    Breaker(circuit_breaker::Rejected),
    Bulkhead(bulkhead::Rejected),
    Limited { max_wait: Duration },
    Unavailable(String),
    TimedOut(Duration),
    Throttled(f64),
}

impl FloodwallError {
    fn new(kind: RefusalKind, retry_after: Option<Duration>, detail: Detail) -> Self {
        FloodwallError {
            kind,
            host: None,
            instance: None,
            attempts: 1,
            retry_after,
            detail,
        }
    }

    /// An open breaker's refusal.
    pub(crate) fn circuit_open(r: circuit_breaker::Rejected) -> Self {
        Self::new(RefusalKind::CircuitOpen, r.retry_after, Detail::Breaker(r))
    }

    /// A full bulkhead's refusal.
    pub(crate) fn bulkhead_full(r: bulkhead::Rejected) -> Self {
        Self::new(RefusalKind::BulkheadFull, None, Detail::Bulkhead(r))
    }

    /// A rate limit that would wait `retry_after`, more than `max_wait`.
    pub(crate) fn rate_limited(retry_after: Duration, max_wait: Duration) -> Self {
        Self::new(
            RefusalKind::RateLimited,
            Some(retry_after),
            Detail::Limited { max_wait },
        )
    }

    /// A limiter that could not decide.
    pub(crate) fn limiter_unavailable(why: String) -> Self {
        Self::new(
            RefusalKind::LimiterUnavailable,
            None,
            Detail::Unavailable(why),
        )
    }

    /// A call client-side throttling rejected locally.
    pub(crate) fn throttled(t: floodwall_resilience::throttle::Throttled) -> Self {
        Self::new(
            RefusalKind::Throttled,
            None,
            Detail::Throttled(t.probability),
        )
    }

    /// A bound of `after` that ran out.
    pub(crate) fn timed_out(after: Duration) -> Self {
        Self::new(RefusalKind::TimedOut, None, Detail::TimedOut(after))
    }

    pub(crate) fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    pub(crate) fn instance(mut self, name: impl Into<Arc<str>>) -> Self {
        self.instance = Some(name.into());
        self
    }

    pub(crate) fn into_middleware(self) -> reqwest_middleware::Error {
        reqwest_middleware::Error::middleware(self)
    }

    /// What refused or cut the request.
    pub fn kind(&self) -> RefusalKind {
        self.kind
    }

    /// The host (`host:port`) the request was for, when the refusing middleware knew it.
    pub fn host_key(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The name of the breaker, bulkhead or timeout that refused or cut the request, when it
    /// has one.
    pub fn instance_name(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// Attempts made for the logical request, the refused or cut one included: 1 without a
    /// retry in front, more when a [`RetryMiddleware`](crate::RetryMiddleware) or [`HostPipeline`](crate::HostPipeline)
    /// tried again first.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the refusing primitive expects to admit the request again: the rest of a
    /// breaker's open wait, or when the rate limit's quota allows it. `None` when unknown.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The breaker's own rejection, for [`RefusalKind::CircuitOpen`].
    pub fn breaker_rejection(&self) -> Option<&circuit_breaker::Rejected> {
        match &self.detail {
            Detail::Breaker(r) => Some(r),
            _ => None,
        }
    }

    /// The bulkhead's own rejection, for [`RefusalKind::BulkheadFull`].
    pub fn bulkhead_rejection(&self) -> Option<&bulkhead::Rejected> {
        match &self.detail {
            Detail::Bulkhead(r) => Some(r),
            _ => None,
        }
    }

    /// The bound that ran out, for [`RefusalKind::TimedOut`].
    pub fn timed_out_after(&self) -> Option<Duration> {
        match self.detail {
            Detail::TimedOut(after) => Some(after),
            _ => None,
        }
    }

    /// The status a server proxying this request answers its own caller (see
    /// [`RefusalKind::status`]).
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The answer a server proxying this request gives its own caller: [`status`](Self::status),
    /// `Retry-After` in whole seconds rounded up when known, and an `application/problem+json`
    /// body (RFC 9457) whose `type` is `urn:floodwall:client:<kind>` and whose `detail` is
    /// this error's text. Works as an axum `IntoResponse` through `Response<String>`.
    pub fn to_response(&self) -> http::Response<String> {
        let status = self.status();
        let body = floodwall_core::problem::body(
            &format!("client:{}", self.kind.slug()),
            status.canonical_reason().unwrap_or("Error"),
            status.as_u16(),
            &self.to_string(),
            "",
        );
        let mut r = http::Response::new(body);
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(floodwall_core::problem::CONTENT_TYPE),
        );
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        r
    }
}

/// `d` rounded up to the millisecond, as a person reads it.
fn millis(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.3}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

impl fmt::Display for FloodwallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.words())?;
        match (&self.host, &self.instance) {
            (Some(host), Some(name)) => write!(f, " for {host} (`{name}`)")?,
            (Some(host), None) => write!(f, " for {host}")?,
            (None, Some(name)) => write!(f, " (`{name}`)")?,
            (None, None) => {}
        }
        match &self.detail {
            Detail::Breaker(_) => f.write_str(": request not sent")?,
            Detail::Bulkhead(r) => write!(
                f,
                ": request not sent, {} already in flight",
                r.max_concurrent
            )?,
            Detail::Limited { max_wait } => write!(
                f,
                ": the quota allows the request in {}, more than the {} this client waits",
                millis(self.retry_after.unwrap_or_default()),
                millis(*max_wait)
            )?,
            Detail::Unavailable(why) => write!(f, ": {why}")?,
            Detail::TimedOut(after) => write!(f, ": no answer within {}", millis(*after))?,
            Detail::Throttled(p) => write!(
                f,
                ": request not sent, the host accepted too few recent requests (rejecting {:.0} % now)",
                p * 100.0
            )?,
        }
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        match (self.kind, self.retry_after) {
            (RefusalKind::RateLimited, _) | (_, None) => Ok(()),
            (_, Some(after)) => write!(f, "; retry after {}", millis(after)),
        }
    }
}

impl std::error::Error for FloodwallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.detail {
            Detail::Breaker(r) => Some(r),
            Detail::Bulkhead(r) => Some(r),
            _ => None,
        }
    }
}

/// Finds floodwall's refusal in a `reqwest_middleware::Error` — no downcast by hand.
pub trait ErrorExt {
    /// The [`FloodwallError`] this error carries, if a floodwall middleware refused or cut
    /// the request; `None` for an error of reqwest itself or of another middleware.
    fn floodwall(&self) -> Option<&FloodwallError>;
}

impl ErrorExt for reqwest_middleware::Error {
    fn floodwall(&self) -> Option<&FloodwallError> {
        match self {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<FloodwallError>(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

/// Sets the attempt count on the refusal `e` carries, if any (a retry's last result).
pub(crate) fn set_attempts(e: &mut reqwest_middleware::Error, attempts: u32) {
    if let reqwest_middleware::Error::Middleware(e) = e
        && let Some(refusal) = e.downcast_mut::<FloodwallError>()
    {
        refusal.attempts = attempts.max(1);
    }
}

/// Sets the host on the refusal `e` carries, if it has none yet.
pub(crate) fn set_host(e: &mut reqwest_middleware::Error, host: impl FnOnce() -> String) {
    if let reqwest_middleware::Error::Middleware(e) = e
        && let Some(refusal) = e.downcast_mut::<FloodwallError>()
        && refusal.host.is_none()
    {
        refusal.host = Some(host());
    }
}
