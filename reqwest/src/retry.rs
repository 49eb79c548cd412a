//! [`RetryMiddleware`], [`TimeoutMiddleware`] and [`IdempotencyKey`].

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_resilience::http::is_idempotent;
use floodwall_resilience::retry::Decision;
use http::{Extensions, HeaderValue, Method};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::error::{set_attempts, set_host};
use crate::host::{host_key, url_host_key};
use crate::rules::{RetryFn, Rule};
use crate::span::{attempt_span, record_attempts, record_result, request_span};
use crate::{FloodwallError, RequestSettings};
use tracing::{Instrument, Span};

/// The header [`IdempotencyKey`] sets and [`RetryMiddleware`] looks for.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

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
/// (backoff, jitter, budget, `max_elapsed`), deciding with [`is_retryable`](crate::is_retryable).
///
/// Only requests safe to repeat are retried: idempotent methods (`GET`, `HEAD`, `OPTIONS`,
/// `TRACE`, `PUT`, `DELETE`), and a `POST` or `PATCH` only when it carries an
/// `Idempotency-Key` (see [`IdempotencyKey`]) — by that header's contract the server runs it
/// once. [`all_methods`](Self::all_methods) retries every method. A request whose body cannot
/// be copied (a stream) is sent once.
#[derive(Debug, Clone)]
pub struct RetryMiddleware {
    retry: floodwall_resilience::retry::Retry,
    all_methods: bool,
    rule: Rule<RetryFn>,
}

impl RetryMiddleware {
    /// Retries as `retry` says, idempotent (or keyed) requests only.
    pub fn new(retry: floodwall_resilience::retry::Retry) -> Self {
        RetryMiddleware {
            retry,
            all_methods: false,
            rule: Rule::default(),
        }
    }

    /// Decides by `rule` instead of [`is_retryable`](crate::is_retryable) whether a result is worth another
    /// attempt (which requests may be repeated at all is still decided by their method and
    /// key). Call [`is_retryable_response`](crate::is_retryable_response) and [`is_retryable_error`](crate::is_retryable_error) inside it to extend the
    /// default:
    ///
    /// ```
    /// use floodwall_reqwest::{RetryMiddleware, is_retryable_error, is_retryable_response};
    /// use floodwall_resilience::retry::Decision;
    ///
    /// // Also retry this API's "425 Too Early".
    /// let retry = RetryMiddleware::new(floodwall_resilience::retry::Retry::builder().build()).when(|r| {
    ///     match r {
    ///         Ok(resp) if resp.status().as_u16() == 425 => Decision::Retry,
    ///         Ok(resp) => is_retryable_response(resp),
    ///         Err(e) => is_retryable_error(e),
    ///     }
    /// });
    /// # let _ = retry;
    /// ```
    pub fn when(
        mut self,
        rule: impl Fn(Result<&Response, &reqwest_middleware::Error>) -> Decision + Send + Sync + 'static,
    ) -> Self {
        self.rule = Rule(Some(std::sync::Arc::new(rule)));
        self
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

/// `Middleware::handle` written out (the trait is an `async_trait`): the attempts' own future
/// is the one boxed, not nested in another that would hold the request a second time — every
/// byte of it is copied into the box on every request
/// (`reqwest/tests/future_sizes.rs::the_retry_middlewares_future_stays_small`).
impl Middleware for RetryMiddleware {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        req: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'async_trait>,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let span = request_span(&req);
        Box::pin(self.attempts(req, extensions, next, span))
    }
}

impl RetryMiddleware {
    /// The logical request's attempts, inside its span `span`, whose result it records.
    async fn attempts(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        span: Span,
    ) -> reqwest_middleware::Result<Response> {
        let settings = RequestSettings::of(extensions);
        let max = settings
            .and_then(RequestSettings::max_attempts_value)
            .map_or(u32::MAX, NonZeroU32::get);
        let overall = settings.and_then(RequestSettings::timeout_value);
        if !self.may_repeat(&req) || max == 1 {
            let host = req.url().clone();
            let attempt = attempt_span(&req, 1);
            let run = next.run(req, extensions).instrument(attempt.clone());
            // Boxed: an overall bound's timer is most of a future's size, and most requests
            // have none.
            let result = match overall {
                Some(after) => Box::pin(bounded(after, run)).instrument(span.clone()).await,
                None => run.instrument(span.clone()).await,
            };
            record_result(&attempt, result.as_ref());
            record_attempts(&span, 1);
            record_result(&span, result.as_ref());
            return result.map_err(|mut e| {
                set_host(&mut e, || url_host_key(&host));
                e
            });
        }
        // Attempts begun (an overall bound may cut one short).
        let begun = std::sync::atomic::AtomicU32::new(0);
        let run = self.retry_loop(&req, extensions, next, max, &begun);
        // Boxed unless plain: a bound's timer or a span is room most requests do not need.
        let result = match (overall, span.is_none()) {
            (Some(after), _) => Box::pin(bounded(after, run)).instrument(span.clone()).await,
            (None, true) => run.await,
            (None, false) => Box::pin(run).instrument(span.clone()).await,
        };
        let made = begun.load(std::sync::atomic::Ordering::Relaxed);
        record_attempts(&span, made);
        record_result(&span, result.as_ref());
        result.map_err(|mut e| {
            set_attempts(&mut e, made);
            set_host(&mut e, || host_key(&req));
            e
        })
    }
}

impl RetryMiddleware {
    /// The attempts, each on its own copy of the request and of the extensions, until the
    /// rule, the caller's limit `max` or the schedule ends them (each one's number stored in
    /// `begun` as it starts); the last result.
    async fn retry_loop(
        &self,
        req: &Request,
        extensions: &Extensions,
        next: Next<'_>,
        max: u32,
        begun: &std::sync::atomic::AtomicU32,
    ) -> reqwest_middleware::Result<Response> {
        let mut run = self.retry.begin();
        loop {
            // The attempt's state lives in this block only, so the backoff's wait holds none
            // of it: every byte of this future is copied when the middleware boxes it.
            let delay = {
                let n = run.made() + 1;
                begun.store(n, std::sync::atomic::Ordering::Relaxed);
                let attempt = attempt_span(req, n);
                let mut ext = extensions.clone();
                // The copy is a temporary moved into the call: a named one would keep its
                // room in this future across the wait.
                let sent = next.clone().run(
                    req.try_clone().expect("checked: the body can be copied"),
                    &mut ext,
                );
                let result = match attempt.is_none() {
                    true => sent.await,
                    false => sent.instrument(attempt.clone()).await,
                };
                record_result(&attempt, result.as_ref());
                // The caller's attempt limit: after `max` attempts, the result is final.
                let decision = if n >= max {
                    Decision::Done
                } else {
                    self.rule.decide(result.as_ref())
                };
                match run.next_delay(decision) {
                    Some(delay) => delay,
                    None => return result,
                }
            };
            // Boxed: a timer is most of a future's size, and only a retry waits.
            Box::pin(tokio::time::sleep(delay)).await;
        }
    }
}

/// Bounds the rest of the stack: each attempt when added after [`RetryMiddleware`], the whole call
/// when added before it. Past the bound the request fails with
/// [`RefusalKind::TimedOut`](crate::RefusalKind::TimedOut) (which [`RetryMiddleware`] retries).
///
/// Built from floodwall's [`Timeout`](floodwall_resilience::timeout::Timeout): name it
/// ([`name`](Self::name)) and its calls are measured (`floodwall_timeout_*{timeout}`).
#[derive(Debug, Clone)]
pub struct TimeoutMiddleware {
    timeout: floodwall_resilience::timeout::Timeout,
    name: Option<std::sync::Arc<str>>,
}

impl TimeoutMiddleware {
    /// Bounds what follows by `after`: zero cuts a request at its first wait (one answered
    /// without waiting passes), `Duration::MAX` waits without bound.
    pub fn new(after: Duration) -> Self {
        TimeoutMiddleware {
            timeout: floodwall_resilience::timeout::Timeout::new(after),
            name: None,
        }
    }

    /// Names this timeout, as the `timeout` label of its metrics and the
    /// [`instance_name`](crate::FloodwallError::instance_name) of the requests it cuts.
    pub fn name(mut self, name: &str) -> Self {
        self.timeout = self.timeout.name(name);
        self.name = Some(std::sync::Arc::from(name));
        self
    }
}

#[async_trait::async_trait]
impl Middleware for TimeoutMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        // The request's own bound, if it has one: floodwall's setting, else reqwest's.
        let own = RequestSettings::of(extensions)
            .and_then(RequestSettings::attempt_timeout_value)
            .or_else(|| req.timeout().copied());
        let timeout = match own {
            Some(after) => std::borrow::Cow::Owned(self.timeout.with_duration(after)),
            None => std::borrow::Cow::Borrowed(&self.timeout),
        };
        match timeout.call(|| next.run(req, extensions)).await {
            Ok(resp) => Ok(resp),
            Err(floodwall_resilience::Error::Inner(e)) => Err(e),
            Err(floodwall_resilience::Error::Timeout(e)) => {
                let refusal = FloodwallError::timed_out(e.after);
                Err(match &self.name {
                    Some(name) => refusal.instance(name.clone()),
                    None => refusal,
                }
                .into_middleware())
            }
            Err(other) => Err(reqwest_middleware::Error::middleware(other)),
        }
    }
}

/// Gives each `POST` and `PATCH` without one an `Idempotency-Key`, set once before [`RetryMiddleware`]
/// so every retry of the logical request carries the same key: the caller's own
/// ([`RequestSettings::idempotency_key`]) when the request carries one, else a random 128-bit
/// value, as an RFC 8941 string (`"…"`). A request that already has the header keeps it.
///
/// When to turn it on: only against a server that honours the header (runs a keyed request
/// once and answers its repeats from the first result, as floodwall's `IdempotencyLayer`,
/// Stripe and Adyen do). Against a server that ignores it, a keyed `POST` is retried like any
/// other and can run twice. A generated key protects one logical request's retries; the
/// caller's own key also protects the caller's own repeats (after a `504`, a crash).
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
            let own =
                RequestSettings::of(extensions).and_then(RequestSettings::idempotency_key_value);
            let value = match own {
                Some(key) => key_header(key)?,
                None => {
                    let key: u128 = rand::random();
                    HeaderValue::try_from(format!("\"{key:032x}\""))
                        .expect("hex digits and quotes are a valid header value")
                }
            };
            req.headers_mut().insert(IDEMPOTENCY_KEY, value);
        }
        next.run(req, extensions).await
    }
}

/// `fut` bounded by `after`; past it, [`RefusalKind::TimedOut`].
async fn bounded(
    after: Duration,
    fut: impl Future<Output = reqwest_middleware::Result<Response>>,
) -> reqwest_middleware::Result<Response> {
    let timeout = floodwall_resilience::timeout::Timeout::new(after);
    match timeout.call(|| fut).await {
        Ok(resp) => Ok(resp),
        Err(floodwall_resilience::Error::Inner(e)) => Err(e),
        Err(floodwall_resilience::Error::Timeout(e)) => {
            Err(FloodwallError::timed_out(e.after).into_middleware())
        }
        Err(other) => Err(reqwest_middleware::Error::middleware(other)),
    }
}

/// The caller's key as a header value: quoted as an RFC 8941 string unless it is already.
fn key_header(key: &str) -> reqwest_middleware::Result<HeaderValue> {
    let quoted = if key.len() >= 2 && key.starts_with('"') && key.ends_with('"') {
        key.to_owned()
    } else {
        format!("\"{key}\"")
    };
    HeaderValue::try_from(quoted).map_err(|_| {
        reqwest_middleware::Error::middleware(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the idempotency key is not a valid header value (visible ASCII only)",
        ))
    })
}
