//! [`Retry`], [`Timeout`] and [`IdempotencyKey`].

use std::time::{Duration, SystemTime};

use floodwall_resilience::http::{is_idempotent, is_retryable_status, retry_after};
use floodwall_resilience::retry::Decision;
use http::{Extensions, HeaderValue, Method};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::FloodwallError;

/// The header [`IdempotencyKey`] sets and [`Retry`] looks for.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether `result` is worth another attempt, and when: `408`, `429` and `5xx` (after
/// `Retry-After` when the response gives one), a `409` that gives a `Retry-After` (an
/// `Idempotency-Key` server saying "the first request with this key is still running"),
/// connection errors, request timeouts and attempt [`Timeout`]s. A refusal by a breaker, a
/// bulkhead or a rate limit is not retried (it says when to come back).
pub fn is_retryable(result: &reqwest_middleware::Result<Response>) -> Decision {
    match result {
        Ok(resp) => response_decision(resp),
        Err(e) => error_decision(e),
    }
}

/// [`is_retryable`] for a response.
pub(crate) fn response_decision(resp: &Response) -> Decision {
    let status = resp.status();
    if status == http::StatusCode::CONFLICT {
        return match retry_after(resp.headers(), SystemTime::now()) {
            Some(d) => Decision::RetryAfter(d),
            None => Decision::Done,
        };
    }
    if !is_retryable_status(status) {
        return Decision::Done;
    }
    match retry_after(resp.headers(), SystemTime::now()) {
        Some(d) => Decision::RetryAfter(d),
        None => Decision::Retry,
    }
}

/// [`is_retryable`] for an error.
pub(crate) fn error_decision(e: &reqwest_middleware::Error) -> Decision {
    match e {
        reqwest_middleware::Error::Reqwest(e) if e.is_connect() || e.is_timeout() => {
            Decision::Retry
        }
        reqwest_middleware::Error::Middleware(e) => match e.downcast_ref::<FloodwallError>() {
            Some(FloodwallError::TimedOut(_)) => Decision::Retry,
            _ => Decision::Done,
        },
        _ => Decision::Done,
    }
}

/// Whether `req` may be sent more than once: its body can be copied (none, or in memory), and
/// it is idempotent, carries an `Idempotency-Key` (`POST`/`PATCH`), or `all_methods` says so.
pub(crate) fn may_repeat(req: &Request, all_methods: bool) -> bool {
    let copyable = req.body().is_none_or(|b| b.as_bytes().is_some());
    copyable
        && (all_methods
            || is_idempotent(req.method())
            || (matches!(*req.method(), Method::POST | Method::PATCH)
                && req.headers().contains_key(IDEMPOTENCY_KEY)))
}

/// Retries requests through floodwall's [`Retry`](floodwall_resilience::retry::Retry)
/// (backoff, jitter, budget, `max_elapsed`), deciding with [`is_retryable`].
///
/// Only requests safe to repeat are retried: idempotent methods (`GET`, `HEAD`, `OPTIONS`,
/// `TRACE`, `PUT`, `DELETE`), and a `POST` or `PATCH` only when it carries an
/// `Idempotency-Key` (see [`IdempotencyKey`]) — by that header's contract the server runs it
/// once. [`all_methods`](Self::all_methods) retries every method. A request whose body cannot
/// be copied (a stream) is sent once.
#[derive(Debug, Clone)]
pub struct Retry {
    retry: floodwall_resilience::retry::Retry,
    all_methods: bool,
}

impl Retry {
    /// Retries as `retry` says, idempotent (or keyed) requests only.
    pub fn new(retry: floodwall_resilience::retry::Retry) -> Self {
        Retry {
            retry,
            all_methods: false,
        }
    }

    /// Retries every method, keyed or not — for APIs that deduplicate by other means.
    pub fn all_methods(mut self) -> Self {
        self.all_methods = true;
        self
    }

    fn may_repeat(&self, req: &Request) -> bool {
        may_repeat(req, self.all_methods)
    }
}

#[async_trait::async_trait]
impl Middleware for Retry {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if !self.may_repeat(&req) {
            return next.run(req, extensions).await;
        }
        // Each attempt gets its own copy of the request and of the extensions.
        let base = extensions.clone();
        let attempt = || {
            let copy = req.try_clone().expect("checked: the body can be copied");
            let (next, mut ext) = (next.clone(), base.clone());
            async move { next.run(copy, &mut ext).await }
        };
        self.retry.call_with(&is_retryable, attempt).await
    }
}

/// Bounds the rest of the stack: each attempt when added after [`Retry`], the whole call
/// when added before it. Past the bound the request fails with
/// [`FloodwallError::TimedOut`] (which [`Retry`] retries).
///
/// Built from floodwall's [`Timeout`](floodwall_resilience::timeout::Timeout): name it
/// ([`name`](Self::name)) and its calls are measured (`floodwall_timeout_*{timeout}`).
#[derive(Debug, Clone)]
pub struct Timeout {
    timeout: floodwall_resilience::timeout::Timeout,
}

impl Timeout {
    /// Bounds what follows by `after`: zero cuts a request at its first wait (one answered
    /// without waiting passes), `Duration::MAX` waits without bound.
    pub fn new(after: Duration) -> Self {
        Timeout {
            timeout: floodwall_resilience::timeout::Timeout::new(after),
        }
    }

    /// Names this timeout, as the `timeout` label of its metrics.
    pub fn name(mut self, name: &str) -> Self {
        self.timeout = self.timeout.name(name);
        self
    }
}

#[async_trait::async_trait]
impl Middleware for Timeout {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        match self.timeout.call(|| next.run(req, extensions)).await {
            Ok(resp) => Ok(resp),
            Err(floodwall_resilience::Error::Inner(e)) => Err(e),
            Err(floodwall_resilience::Error::Timeout(e)) => {
                Err(FloodwallError::TimedOut(e.after).into_middleware())
            }
            Err(other) => Err(reqwest_middleware::Error::middleware(other)),
        }
    }
}

/// Gives each `POST` and `PATCH` without one an `Idempotency-Key` (a random 128-bit value,
/// as an RFC 8941 string: `"…"`), set once before [`Retry`] so every retry of the logical
/// request carries the same key. A request that already has the header keeps it.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdempotencyKey {
    _private: (),
}

impl IdempotencyKey {
    /// Keys `POST` and `PATCH` requests.
    pub fn new() -> Self {
        IdempotencyKey { _private: () }
    }
}

#[async_trait::async_trait]
impl Middleware for IdempotencyKey {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let keyed = matches!(*req.method(), Method::POST | Method::PATCH);
        if keyed && !req.headers().contains_key(IDEMPOTENCY_KEY) {
            let key: u128 = rand::random();
            let value = HeaderValue::try_from(format!("\"{key:032x}\""))
                .expect("hex digits and quotes are a valid header value");
            req.headers_mut().insert(IDEMPOTENCY_KEY, value);
        }
        next.run(req, extensions).await
    }
}
