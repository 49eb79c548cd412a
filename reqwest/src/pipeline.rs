//! [`HostPipeline`]: floodwall's whole client stack — retry, circuit breaker, bulkhead and
//! timeouts — per host, as one middleware.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use floodwall_resilience::Pipeline;
use floodwall_resilience::circuit_breaker::Outcome;
use floodwall_resilience::hedge::Hedge;
use floodwall_resilience::registry::Registry;
use floodwall_resilience::retry::Decision;

use reqwest::{Request, Response};

use crate::host::with_host_key;
use crate::rules::{ClassifyFn, RetryFn, Rule};
use crate::{HostRateLimit, HostThrottle};

mod attempts;

/// floodwall's [`Pipeline`] per host, as one middleware: the stages run in the recommended
/// order (overall timeout → retry → circuit breaker → bulkhead → adaptive limit → attempt
/// timeout → the request), with each host's own breaker and bulkhead from a bounded
/// [`Registry`], so a dead host is shed while the others answer.
///
/// It does what [`RetryMiddleware`](crate::RetryMiddleware), [`HostBreaker`](crate::HostBreaker),
/// [`HostBulkhead`](crate::HostBulkhead) and [`TimeoutMiddleware`](crate::TimeoutMiddleware) do stacked — same
/// retry decisions ([`is_retryable`](crate::is_retryable): `Retry-After` honoured;
/// idempotent or `Idempotency-Key`-carrying requests only, unless
/// [`all_methods`](Self::all_methods)), same breaker outcomes — as one middleware: one host
/// lookup and one boxed future per request instead of four, and one copy of the request per
/// attempt.
///
/// Each thread keeps its last host's pipeline, so a run of requests to one host skips the
/// registry; the cached pipeline is dropped as soon as any key is removed from the registry
/// or evicted, and a busy host is looked up in the registry every 64 requests, which keeps
/// it recent in the registry's least-recently-used order.
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
    pipelines: Registry<HostStages>,
    all_methods: bool,
    rules: Arc<Rules>,
    /// Tells this registry's entries apart in the per-thread cache (clones share it).
    id: u64,
}

/// Lookups a thread serves from its cache of the last host before asking the registry
/// again, which keeps a busy host recent in the registry's least-recently-used order.
const REFRESH_EVERY: u32 = 64;

/// A thread's last host and its pipeline: most clients send run after run to one host, and
/// this answers those without hashing the host or touching the registry's locks.
struct LastHost {
    owner: u64,
    generation: u64,
    uses: u32,
    /// Rewritten in place when the thread moves to another host, so alternating hosts
    /// allocate nothing once it has grown to the longest.
    host: String,
    port: Option<u16>,
    pipeline: HostStages,
}

/// One host's [`Pipeline`] in a [`HostPipeline`], with the host it serves; derefs to the
/// pipeline (its breaker's state, its bulkhead). Cheap to clone.
#[derive(Debug, Clone)]
pub struct HostStages(Arc<HostEntry>);

#[derive(Debug)]
struct HostEntry {
    host: Arc<str>,
    pipeline: Pipeline,
}

impl HostStages {
    /// The host key (`host:port`) these stages serve.
    pub fn host(&self) -> &str {
        &self.0.host
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.0.pipeline
    }
}

impl Deref for HostStages {
    type Target = Pipeline;

    fn deref(&self) -> &Pipeline {
        &self.0.pipeline
    }
}

thread_local! {
    static LAST_HOST: RefCell<Option<LastHost>> = const { RefCell::new(None) };
}

impl HostPipeline {
    /// At most `max_hosts` pipelines, each made by `make(host_key)` on the host's first
    /// request (the least recently used one is dropped beyond that).
    pub fn new(
        max_hosts: NonZeroUsize,
        make: impl Fn(&str) -> Pipeline + Send + Sync + 'static,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        HostPipeline {
            pipelines: Registry::new(max_hosts, move |host| {
                HostStages(Arc::new(HostEntry {
                    host: Arc::from(host),
                    pipeline: make(host),
                }))
            }),
            all_methods: false,
            rules: Arc::default(),
            id: IDS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// [`new`](Self::new) with a factory that can fail (building a breaker can): it is tried
    /// once now, for [`PROBE_HOST`](crate::PROBE_HOST), so a configuration error is a build
    /// error. A later host whose pipeline still cannot be built gets one whose breaker is
    /// forced open (`invalid:<host>`): its requests are refused, and the error is logged.
    pub fn try_new<E: std::fmt::Display>(
        max_hosts: NonZeroUsize,
        make: impl Fn(&str) -> Result<Pipeline, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        make(crate::PROBE_HOST)?;
        Ok(Self::new(max_hosts, move |host| {
            make(host).unwrap_or_else(|e| {
                Pipeline::builder()
                    .circuit_breaker(crate::host::refusing_breaker(host, &e))
                    .build()
            })
        }))
    }

    /// The pipeline of `req`'s host: from this thread's cache of the last host when it is
    /// this registry's, for this host and port, and no key has been removed or evicted since
    /// (see [`Registry::generation`]); else from the registry (the host key is built only
    /// then), refreshing the cache.
    fn stages_for(&self, req: &Request) -> HostStages {
        let url = req.url();
        let (host, port) = (url.host_str().unwrap_or(""), url.port_or_known_default());
        let generation = self.pipelines.generation();
        let lookup = || with_host_key(req, |key| self.pipelines.get(key));
        let cached = LAST_HOST.try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return lookup();
            };
            if let Some(l) = last.as_mut()
                && l.owner == self.id
                && l.generation == generation
                && l.port == port
                && *l.host == *host
                && l.uses < REFRESH_EVERY
            {
                l.uses += 1;
                return l.pipeline.clone();
            }
            let pipeline = lookup();
            match last.as_mut() {
                Some(l) => {
                    if *l.host != *host {
                        l.host.clear();
                        l.host.push_str(host);
                    }
                    (l.owner, l.generation, l.uses, l.port) = (self.id, generation, 0, port);
                    l.pipeline = pipeline.clone();
                }
                None => {
                    *last = Some(LastHost {
                        owner: self.id,
                        generation,
                        uses: 0,
                        host: host.to_owned(),
                        port,
                        pipeline: pipeline.clone(),
                    });
                }
            }
            pipeline
        });
        // A thread being torn down has no cache left: ask the registry.
        cached.unwrap_or_else(|_| lookup())
    }

    /// Retries every method, keyed or not — for APIs that deduplicate by other means.
    pub fn all_methods(mut self) -> Self {
        self.all_methods = true;
        self
    }

    /// Judges what each attempt's result says about the host by `rule` instead of
    /// [`host_outcome`](crate::host_outcome) (see [`HostBreaker::classify`](crate::HostBreaker::classify)).
    pub fn classify(
        mut self,
        rule: impl Fn(Result<&Response, &reqwest_middleware::Error>) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.rules).classify = Rule(Some(Arc::new(rule)));
        self
    }

    /// Takes one unit of `limit`'s quota for every attempt — each retry and each hedged copy
    /// of a request counts, as the host sees them — before the attempt passes the breaker;
    /// waits up to the limit's `max_wait`, else the attempt is refused
    /// ([`RefusalKind::RateLimited`](crate::RefusalKind::RateLimited)) and not retried. (A
    /// [`HostRateLimit`] middleware in front counts logical requests instead.)
    pub fn rate_limit(mut self, limit: HostRateLimit) -> Self {
        Arc::make_mut(&mut self.rules).limit = Some(Arc::new(limit));
        self
    }

    /// Throttles each attempt with `throttle`, the host's adaptive throttle (the SRE book's
    /// client-side throttling, see [`HostThrottle`]): an attempt it rejects locally is not
    /// sent and not retried ([`RefusalKind::Throttled`](crate::RefusalKind::Throttled)); an
    /// attempt counts as accepted unless the host answered `429` or `503` or did not answer
    /// (a transport error, the attempt timeout, a refusal by the host's breaker or bulkhead
    /// after the throttle let it through).
    pub fn throttle(mut self, throttle: HostThrottle) -> Self {
        Arc::make_mut(&mut self.rules).throttle = Some(throttle);
        self
    }

    /// Hedges each attempt of an idempotent request (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
    /// `DELETE`) with `hedge`: when the host has not answered within the hedge's delay (or an
    /// attempt failed: an error or a `5xx`), another copy is sent, and the first answer that
    /// is not such a failure wins; the others are dropped. A hedged attempt counts once for
    /// the breaker, the bulkhead and the retry. Other requests are sent once per attempt.
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        Arc::make_mut(&mut self.rules).hedge = Some(hedge);
        self
    }

    /// Answers a request that failed — an error (a refusal, a timeout, a transport error) or
    /// a `5xx` response, after every retry — with what `fallback` returns, when it returns
    /// `Some` (a cached copy, a default); `None` keeps the failure.
    pub fn fallback(
        mut self,
        fallback: impl Fn(Result<&Response, &reqwest_middleware::Error>) -> Option<Response>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.rules).fallback = Some(Arc::new(fallback));
        self
    }

    /// Decides by `rule` instead of [`is_retryable`](crate::is_retryable) whether an attempt's
    /// result is worth another (see [`RetryMiddleware::when`](crate::RetryMiddleware::when)); an attempt cut by
    /// the attempt timeout is retried and a refusal by the host's own stages is not, whatever
    /// the rule says.
    pub fn retry_when(
        mut self,
        rule: impl Fn(Result<&Response, &reqwest_middleware::Error>) -> Decision + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.rules).retry = Rule(Some(Arc::new(rule)));
        self
    }

    /// The per-host pipelines. A key removed here gets a fresh pipeline at its next request,
    /// on every thread.
    pub fn registry(&self) -> &Registry<HostStages> {
        &self.pipelines
    }

    /// The stages of `host` (`host:port`, see [`host_key`](crate::host_key)), made now if it
    /// has none — what its next request would use.
    pub fn get(&self, host: &str) -> HostStages {
        self.pipelines.get(host)
    }

    /// The stages of `host` if a request has made them, without making any: a look at a
    /// host's breaker state (`peek(h).and_then(|s| s.circuit_breaker().map(|b| b.state()))`)
    /// that adds no host to the registry.
    pub fn peek(&self, host: &str) -> Option<HostStages> {
        self.pipelines.peek(host)
    }
}

/// A `HostPipeline`'s own rules and stages beyond the host's `Pipeline` (clones share them).
#[derive(Clone, Default)]
struct Rules {
    classify: Rule<ClassifyFn>,
    retry: Rule<RetryFn>,
    /// Taken per attempt, before the breaker.
    limit: Option<Arc<HostRateLimit>>,
    /// Hedges each attempt of an idempotent request.
    hedge: Option<Hedge>,
    /// Answers a failed request.
    fallback: Option<Arc<FallbackFn>>,
    /// Throttles each attempt by how the host has been answering.
    throttle: Option<HostThrottle>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("classify", &self.classify)
            .field("retry", &self.retry)
            .field("rate_limit", &self.limit.is_some())
            .field("hedge", &self.hedge.is_some())
            .field("fallback", &self.fallback.is_some())
            .field("throttle", &self.throttle.is_some())
            .finish()
    }
}

/// A [`HostPipeline::fallback`]: the answer to a request that failed, or `None` to keep the
/// failure.
pub type FallbackFn =
    dyn Fn(Result<&Response, &reqwest_middleware::Error>) -> Option<Response> + Send + Sync;
