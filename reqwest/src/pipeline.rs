//! [`HostPipeline`]: floodwall's whole client stack — retry, circuit breaker, bulkhead and
//! timeouts — per host, as one middleware.

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;

use floodwall_resilience::Pipeline;
use floodwall_resilience::registry::Registry;
use floodwall_resilience::retry::{Decision, RetryPolicy};
use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::FloodwallError;
use crate::host::{classify, with_host_key};
use crate::retry::{error_decision, may_repeat, response_decision};

/// floodwall's [`Pipeline`] per host, as one middleware: the stages run in the recommended
/// order (overall timeout → retry → circuit breaker → bulkhead → adaptive limit → attempt
/// timeout → the request), with each host's own breaker and bulkhead from a bounded
/// [`Registry`], so a dead host is shed while the others answer.
///
/// It does what [`Retry`](crate::Retry), [`HostBreaker`](crate::HostBreaker),
/// [`HostBulkhead`](crate::HostBulkhead) and [`Timeout`](crate::Timeout) do stacked — same
/// retry decisions ([`is_retryable`](crate::is_retryable): `Retry-After` honoured;
/// idempotent or `Idempotency-Key`-carrying requests only, unless
/// [`all_methods`](Self::all_methods)), same breaker outcomes — as one middleware: one host
/// lookup and one boxed future per request instead of four, and one copy of the request per
/// attempt.
///
/// ```no_run
/// use std::num::{NonZeroU32, NonZeroUsize};
/// use std::time::Duration;
/// use floodwall_reqwest::HostPipeline;
/// use floodwall_resilience::Pipeline;
/// use floodwall_resilience::bulkhead::Bulkhead;
/// use floodwall_resilience::circuit_breaker::CircuitBreaker;
/// use floodwall_resilience::retry::Retry;
///
/// let pipelines = HostPipeline::new(NonZeroUsize::new(1000).unwrap(), |host| {
///     Pipeline::builder()
///         .retry(Retry::builder().max_attempts(NonZeroU32::new(3).unwrap()).build())
///         .circuit_breaker(CircuitBreaker::builder().name(format!("api:{host}")).build().unwrap())
///         .bulkhead(Bulkhead::builder().max_concurrent(NonZeroUsize::new(32).unwrap()).build())
///         .attempt_timeout(Duration::from_secs(2))
///         .build()
/// });
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(pipelines)
///     .build();
/// ```
#[derive(Debug, Clone)]
pub struct HostPipeline {
    pipelines: Registry<Arc<Pipeline>>,
    all_methods: bool,
}

impl HostPipeline {
    /// At most `max_hosts` pipelines, each made by `make(host_key)` on the host's first
    /// request (the least recently used one is dropped beyond that).
    pub fn new(
        max_hosts: NonZeroUsize,
        make: impl Fn(&str) -> Pipeline + Send + Sync + 'static,
    ) -> Self {
        HostPipeline {
            pipelines: Registry::new(max_hosts, move |host| Arc::new(make(host))),
            all_methods: false,
        }
    }

    /// Retries every method, keyed or not — for APIs that deduplicate by other means.
    pub fn all_methods(mut self) -> Self {
        self.all_methods = true;
        self
    }

    /// The per-host pipelines, e.g. to look at a host's breaker.
    pub fn registry(&self) -> &Registry<Arc<Pipeline>> {
        &self.pipelines
    }
}

type AttemptResult = Result<Response, floodwall_resilience::Error<reqwest_middleware::Error>>;

/// The retry decision inside the pipeline: [`is_retryable`](crate::is_retryable) on the
/// request's own result, an attempt timeout retried, a rejection (breaker, bulkhead) not.
struct Retryable {
    repeatable: bool,
}

impl RetryPolicy<Response, floodwall_resilience::Error<reqwest_middleware::Error>> for Retryable {
    fn decide(&self, result: &AttemptResult) -> Decision {
        if !self.repeatable {
            return Decision::Done;
        }
        match result {
            Ok(resp) => response_decision(resp),
            Err(floodwall_resilience::Error::Inner(e)) => error_decision(e),
            Err(floodwall_resilience::Error::Timeout(_)) => Decision::Retry,
            Err(_) => Decision::Done,
        }
    }
}

/// The pipeline's attempts, driven here rather than through
/// [`Pipeline::call_with_classified`] so that each attempt's future is the next middleware's
/// own, borrowing this call's copy of the extensions. (A plain `fn` returning an `async`
/// block: an `async fn` would hold its arguments twice.)
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold its arguments twice"
)]
fn attempts<'a>(
    pipeline: &'a Pipeline,
    policy: &'a Retryable,
    mut owned: Option<Request>,
    extensions: &'a Extensions,
    next: Next<'a>,
) -> impl Future<Output = AttemptResult> + Send + 'a {
    async move {
        let mut copy = Extensions::new();
        let mut call = pipeline.start();
        loop {
            let result = 'attempt: {
                let admitted = match call.admit().await {
                    Ok(admitted) => admitted,
                    Err(rejected) => break 'attempt Err(rejected),
                };
                match send(policy, &mut owned, extensions, &mut copy, &next) {
                    Ok(fut) => admitted.run(fut, classify).await,
                    Err(e) => Err(floodwall_resilience::Error::Inner(e)),
                }
            };
            match call.next_delay(policy, &result) {
                Some(delay) => {
                    drop(result);
                    tokio::time::sleep(delay).await;
                }
                None => return result,
            }
        }
    }
}

/// Starts one attempt with its own copy of the request and of the extensions; a request that
/// may not be repeated is sent as it is, once (the policy stops after it).
fn send<'a>(
    policy: &Retryable,
    owned: &mut Option<Request>,
    extensions: &Extensions,
    copy: &'a mut Extensions,
    next: &Next<'a>,
) -> Result<
    Pin<Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'a>>,
    reqwest_middleware::Error,
> {
    let request = if policy.repeatable {
        owned.as_ref().and_then(Request::try_clone)
    } else {
        owned.take()
    };
    let request = request.ok_or_else(|| {
        reqwest_middleware::Error::middleware(std::io::Error::other(
            "the request could not be copied for another attempt",
        ))
    })?;
    *copy = extensions.clone();
    Ok(next.clone().run(request, copy))
}

#[async_trait::async_trait]
impl Middleware for HostPipeline {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let pipeline = with_host_key(&req, |host| self.pipelines.get(host));
        let policy = Retryable {
            repeatable: may_repeat(&req, self.all_methods),
        };
        // Each branch makes its own future: one held in a local would be held twice.
        let result = pipeline
            .bounded(attempts(&pipeline, &policy, Some(req), extensions, next))
            .await;
        use floodwall_resilience::Error as E;
        match result {
            Ok(resp) => Ok(resp),
            Err(E::Inner(e)) => Err(e),
            Err(E::Timeout(e)) => Err(FloodwallError::TimedOut(e.after).into_middleware()),
            Err(E::CircuitOpen(r)) => Err(FloodwallError::CircuitOpen(r).into_middleware()),
            Err(E::BulkheadFull(r)) => Err(FloodwallError::BulkheadFull(r).into_middleware()),
            Err(other) => Err(reqwest_middleware::Error::middleware(other)),
        }
    }
}
