//! Per-host middleware: [`HostBreaker`], [`HostBulkhead`], [`HostRateLimit`].

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use floodwall_limiter::RateLimiter;
use floodwall_resilience::bulkhead::Bulkhead;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, Outcome};
use floodwall_resilience::registry::Registry;
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::FloodwallError;
use crate::rules::{ClassifyFn, Rule};
use std::sync::Arc;

/// The key a request's host is known by: `host:port` (the port the scheme implies when the URL
/// names none).
pub fn host_key(req: &Request) -> String {
    with_host_key(req, str::to_owned)
}

/// [`host_key`] of a URL.
pub(crate) fn url_host_key(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// Runs `f` with `req`'s [`host_key`], built on the stack (a heap string only for a host
/// longer than 250 bytes).
pub(crate) fn with_host_key<R>(req: &Request, f: impl FnOnce(&str) -> R) -> R {
    let url = req.url();
    let host = url.host_str().unwrap_or("");
    let Some(port) = url.port_or_known_default() else {
        return f(host);
    };
    let mut buf = [0u8; 256];
    let Some(digits_at) = host.len().checked_add(1).filter(|&at| at + 5 <= buf.len()) else {
        return f(&format!("{host}:{port}"));
    };
    buf[..host.len()].copy_from_slice(host.as_bytes());
    buf[host.len()] = b':';
    // The port's decimal digits, most significant first.
    let mut digits = [0u8; 5];
    let (mut n, mut len) = (port, 0);
    loop {
        digits[4 - len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let end = digits_at + len;
    buf[digits_at..end].copy_from_slice(&digits[5 - len..]);
    match std::str::from_utf8(&buf[..end]) {
        Ok(key) => f(key),
        Err(_) => f(&format!("{host}:{port}")),
    }
}

/// A circuit breaker per host, from a bounded registry: a host answering `5xx` or `408`, or
/// not answering, opens its own breaker, and its requests fail fast
/// ([`RefusalKind::CircuitOpen`](crate::RefusalKind::CircuitOpen)) while other hosts are
/// untouched. Results are judged by [`host_outcome`](crate::host_outcome) (a full bulkhead or
/// a `429` is not the host's fault), or by the caller's own [`classify`](Self::classify).
#[derive(Debug, Clone)]
pub struct HostBreaker {
    breakers: Registry<CircuitBreaker>,
    rule: Rule<ClassifyFn>,
}

impl HostBreaker {
    /// At most `max_hosts` breakers, each made by `make(host_key)` on the host's first request.
    pub fn new(
        max_hosts: NonZeroUsize,
        make: impl Fn(&str) -> CircuitBreaker + Send + Sync + 'static,
    ) -> Self {
        HostBreaker {
            breakers: Registry::new(max_hosts, make),
            rule: Rule::default(),
        }
    }

    /// Judges each result by `rule` instead of [`host_outcome`](crate::host_outcome) — e.g. to
    /// count a `404` from an API that answers it only when broken, or to ignore a `503` that
    /// means "this tenant is suspended".
    pub fn classify(
        mut self,
        rule: impl Fn(Result<&Response, &reqwest_middleware::Error>) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        self.rule = Rule(Some(Arc::new(rule)));
        self
    }

    /// [`new`](Self::new) with a factory that can fail. It is tried once now, for
    /// [`PROBE_HOST`], so a configuration error is a build error, not a panic at a host's
    /// first request. A later host whose breaker still cannot be built gets a forced-open
    /// breaker named `invalid:<host>`: its requests are refused with that name, and the
    /// factory's error is logged.
    pub fn try_new<E: fmt::Display>(
        max_hosts: NonZeroUsize,
        make: impl Fn(&str) -> Result<CircuitBreaker, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        make(PROBE_HOST)?;
        Ok(Self::new(max_hosts, move |host| {
            make(host).unwrap_or_else(|e| refusing_breaker(host, &e))
        }))
    }

    /// The registry, to look at a host's breaker (`registry().get("host:443").state()`).
    pub fn registry(&self) -> &Registry<CircuitBreaker> {
        &self.breakers
    }
}

/// The host a fallible per-host factory is tried with when the middleware is built.
pub const PROBE_HOST: &str = "example.invalid:443";

/// A breaker for `host` whose factory failed with `e`: forced open, so its requests are
/// refused (naming it `invalid:<host>`) instead of a panic; the error is logged.
pub(crate) fn refusing_breaker(host: &str, e: &dyn fmt::Display) -> CircuitBreaker {
    tracing::error!(
        host,
        error = %e,
        "the host's circuit breaker could not be built; its requests are refused"
    );
    let breaker = CircuitBreaker::builder()
        .name(format!("invalid:{host}"))
        .build()
        .expect("the defaults are a valid breaker");
    breaker.force_open();
    breaker
}

#[async_trait::async_trait]
impl Middleware for HostBreaker {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let breaker = with_host_key(&req, |host| self.breakers.get(host));
        let permit = breaker.try_acquire().map_err(|r| {
            FloodwallError::circuit_open(r)
                .host(host_key(&req))
                .instance(breaker.name())
                .into_middleware()
        })?;
        let result = next.run(req, extensions).await;
        permit.record(self.rule.outcome(result.as_ref()));
        result
    }
}

/// A bulkhead per host, from a bounded registry: at most so many requests in flight to one
/// host; beyond that a request waits (up to the bulkhead's `max_wait`) or fails
/// ([`RefusalKind::BulkheadFull`](crate::RefusalKind::BulkheadFull)). A slow host cannot take every connection.
#[derive(Debug, Clone)]
pub struct HostBulkhead {
    bulkheads: Registry<Bulkhead>,
}

impl HostBulkhead {
    /// At most `max_hosts` bulkheads, each made by `make(host_key)`.
    pub fn new(
        max_hosts: NonZeroUsize,
        make: impl Fn(&str) -> Bulkhead + Send + Sync + 'static,
    ) -> Self {
        HostBulkhead {
            bulkheads: Registry::new(max_hosts, make),
        }
    }

    /// At most `max_hosts` bulkheads of `per_host` concurrent requests, refusing at once when
    /// full.
    pub fn per_host(max_hosts: NonZeroUsize, per_host: NonZeroUsize) -> Self {
        Self::new(max_hosts, move |host| {
            Bulkhead::builder()
                .name(format!("host:{host}"))
                .max_concurrent(per_host)
                .build()
        })
    }

    /// At most `max_hosts` bulkheads of `per_host` concurrent requests; beyond that up to
    /// `max_waiting` requests per host wait, each at most `max_wait`, for a slot (then
    /// [`RefusalKind::BulkheadFull`](crate::RefusalKind::BulkheadFull)).
    pub fn per_host_waiting(
        max_hosts: NonZeroUsize,
        per_host: NonZeroUsize,
        max_waiting: usize,
        max_wait: Duration,
    ) -> Self {
        Self::new(max_hosts, move |host| {
            Bulkhead::builder()
                .name(format!("host:{host}"))
                .max_concurrent(per_host)
                .max_waiting(max_waiting)
                .max_wait(max_wait)
                .build()
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Registry<Bulkhead> {
        &self.bulkheads
    }
}

#[async_trait::async_trait]
impl Middleware for HostBulkhead {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let bulkhead = with_host_key(&req, |host| self.bulkheads.get(host));
        let _permit = bulkhead.acquire().await.map_err(|r| {
            FloodwallError::bulkhead_full(r)
                .host(host_key(&req))
                .instance(bulkhead.name())
                .into_middleware()
        })?;
        next.run(req, extensions).await
    }
}

/// A client-side rate limit toward each host: before sending, the request takes one unit of
/// the host's quota from `limiter` (its limits keyed by `"host"`), waiting until the quota
/// allows it — up to `max_wait`, else [`RefusalKind::RateLimited`](crate::RefusalKind::RateLimited). With a Redis-backed
/// limiter every instance of the client shares the quota.
#[derive(Debug, Clone)]
pub struct HostRateLimit {
    limiter: RateLimiter,
    max_wait: Duration,
}

/// A [`HostRateLimit`] whose limiter has a limit the client's requests could never reach: one
/// keyed by another descriptor entry than `host` (a typo would otherwise mean no limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid HostRateLimit: limit `{limit}` is keyed by `{key}`, but a client's requests carry only \
     `host`; key it by \"host\" (or by nothing, for one quota across every host)"
)]
pub struct RateLimitConfigError {
    /// The limit's name.
    pub limit: String,
    /// The descriptor entry it is keyed by.
    pub key: String,
}

impl HostRateLimit {
    /// Waits up to `max_wait` for `limiter`'s quota; the descriptor is `[("host", host_key)]`.
    /// Every limit of `limiter` must be keyed by `"host"` (a quota per host) or by nothing (one
    /// quota for every host): a limit keyed by anything else would never apply, and is refused.
    pub fn new(limiter: RateLimiter, max_wait: Duration) -> Result<Self, RateLimitConfigError> {
        if let Some(limit) = limiter
            .limits()
            .iter()
            .find(|l| l.key_name().is_some_and(|k| k != "host"))
        {
            return Err(RateLimitConfigError {
                limit: limit.name().to_owned(),
                key: limit.key_name().unwrap_or_default().to_owned(),
            });
        }
        Ok(HostRateLimit { limiter, max_wait })
    }
}

impl HostRateLimit {
    /// Takes one unit of `host`'s quota, waiting for it up to `max_wait`.
    pub(crate) async fn take(&self, host: &str) -> Result<(), FloodwallError> {
        let started = tokio::time::Instant::now();
        loop {
            let verdict = self
                .limiter
                .check(&[("host", host)])
                .await
                .map_err(|e| FloodwallError::limiter_unavailable(e.to_string()).host(host))?;
            if verdict.allowed {
                return Ok(());
            }
            let wait = verdict.retry_after().unwrap_or(Duration::from_millis(1));
            if started.elapsed() + wait > self.max_wait {
                return Err(FloodwallError::rate_limited(wait, self.max_wait).host(host));
            }
            tokio::time::sleep(wait).await;
        }
    }
}

#[async_trait::async_trait]
impl Middleware for HostRateLimit {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let host = host_key(&req);
        self.take(&host)
            .await
            .map_err(FloodwallError::into_middleware)?;
        next.run(req, extensions).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_name_host_and_port() {
        for (url, key) in [
            ("http://127.0.0.1:8080/a", "127.0.0.1:8080"),
            ("https://api.example.com/x", "api.example.com:443"),
            ("http://example.com/", "example.com:80"),
            ("http://h:1/", "h:1"),
            ("http://h:65535/", "h:65535"),
            ("http://[::1]:9/", "[::1]:9"),
        ] {
            let req = Request::new(http::Method::GET, url.parse().unwrap());
            assert_eq!(host_key(&req), key);
        }
        let long = format!("http://{}.example:81/", "a".repeat(250));
        let req = Request::new(http::Method::GET, long.parse().unwrap());
        assert_eq!(host_key(&req), format!("{}.example:81", "a".repeat(250)));
    }
}
