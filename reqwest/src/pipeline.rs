//! [`HostPipeline`]: floodwall's whole client stack — retry, circuit breaker, bulkhead and
//! timeouts — per host, as one middleware.

use std::cell::RefCell;
use std::future::Future;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use floodwall_resilience::Pipeline;
use floodwall_resilience::circuit_breaker::Outcome;
use floodwall_resilience::pipeline::Bounded;
use floodwall_resilience::registry::Registry;
use floodwall_resilience::retry::{Decision, RetryPolicy};
use http::Extensions;
use pin_project_lite::pin_project;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::error::set_attempts;
use crate::host::with_host_key;
use crate::retry::may_repeat;
use crate::rules::{ClassifyFn, RetryFn, Rule};
use crate::span::{attempt_span, record_attempts, record_result, request_span};
use crate::{FloodwallError, RequestSettings};
use tracing::{Instrument, Span};

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
    rules: Rules,
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
            rules: Rules::default(),
            id: IDS.fetch_add(1, Ordering::Relaxed),
        }
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
        self.rules.classify = Rule(Some(Arc::new(rule)));
        self
    }

    /// Decides by `rule` instead of [`is_retryable`](crate::is_retryable) whether an attempt's
    /// result is worth another (see [`Retry::when`](crate::Retry::when)); an attempt cut by
    /// the attempt timeout is retried and a refusal by the host's own stages is not, whatever
    /// the rule says.
    pub fn retry_when(
        mut self,
        rule: impl Fn(Result<&Response, &reqwest_middleware::Error>) -> Decision + Send + Sync + 'static,
    ) -> Self {
        self.rules.retry = Rule(Some(Arc::new(rule)));
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

/// What the attempts report outside: how many were made (only when an overall timeout may
/// cut them), into the logical request's span.
struct Progress {
    counter: Option<Arc<AtomicU32>>,
    span: Span,
}

/// A `HostPipeline`'s own rules (clones share them).
#[derive(Debug, Clone, Default)]
struct Rules {
    classify: Rule<ClassifyFn>,
    retry: Rule<RetryFn>,
}

type AttemptResult = Result<Response, floodwall_resilience::Error<reqwest_middleware::Error>>;

/// The retry decision inside the pipeline: [`is_retryable`](crate::is_retryable) on the
/// request's own result, an attempt timeout retried, a rejection (breaker, bulkhead) not.
struct Retryable<'r> {
    repeatable: bool,
    rule: &'r Rule<RetryFn>,
}

impl RetryPolicy<Response, floodwall_resilience::Error<reqwest_middleware::Error>>
    for Retryable<'_>
{
    fn decide(&self, result: &AttemptResult) -> Decision {
        if !self.repeatable {
            return Decision::Done;
        }
        match result {
            Ok(resp) => self.rule.decide(Ok(resp)),
            Err(floodwall_resilience::Error::Inner(e)) => self.rule.decide(Err(e)),
            Err(floodwall_resilience::Error::Timeout(_)) => Decision::Retry,
            Err(_) => Decision::Done,
        }
    }
}

/// The pipeline's attempts, driven here rather than through
/// [`Pipeline::call_with_classified`] so that each attempt's future is the next middleware's
/// own, borrowing this call's copy of the extensions. It owns everything it uses — the
/// request moved in once, the host's pipeline — so the middleware boxes this one state
/// machine and nothing nested. (A plain `fn` returning an `async` block: an `async fn` would
/// hold its arguments twice.)
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` would hold its arguments twice"
)]
fn attempts<'a>(
    stages: HostStages,
    repeatable: bool,
    mut owned: Option<Request>,
    extensions: &'a Extensions,
    next: Next<'a>,
    progress: Progress,
    rules: Rules,
) -> impl Future<Output = AttemptResult> + Send + 'a {
    async move {
        let settings = RequestSettings::of(extensions);
        let max = settings
            .and_then(RequestSettings::max_attempts_value)
            .map_or(u32::MAX, NonZeroU32::get);
        let attempt_timeout = settings.and_then(RequestSettings::attempt_timeout_value);
        let mut copy = Extensions::new();
        let mut call = stages.start();
        let mut tries = 0u32;
        loop {
            tries += 1;
            // The caller's attempt limit: the last allowed attempt's result is final.
            let policy = Retryable {
                repeatable: repeatable && tries < max,
                rule: &rules.retry,
            };
            if let Some(counter) = &progress.counter {
                counter.store(tries, Ordering::Relaxed);
            }
            // The result lives in this block only, so the backoff's wait does not hold it.
            let delay = {
                let result = 'attempt: {
                    let admitted = match call.admit().await {
                        Ok(admitted) => admitted.attempt_timeout(attempt_timeout),
                        Err(rejected) => break 'attempt Err(rejected),
                    };
                    let span = match &owned {
                        Some(req) => attempt_span(req, tries),
                        None => Span::none(),
                    };
                    let fut = match send(&policy, &mut owned, extensions, &mut copy, &next) {
                        Ok(fut) => fut,
                        Err(e) => break 'attempt Err(floodwall_resilience::Error::Inner(e)),
                    };
                    // Wrapped in its span only when one is recorded.
                    let fut: Boxed<'_> = match span.is_none() {
                        true => fut,
                        false => Box::pin(fut.instrument(span.clone())),
                    };
                    let result = admitted
                        .run(fut, |r| rules.classify.outcome(r.as_ref()))
                        .await;
                    record_attempt(&span, &result);
                    result
                };
                match call.next_delay(&policy, &result) {
                    Some(delay) => delay,
                    None => {
                        record_attempts(&progress.span, tries);
                        return refusal(result, &stages, tries)
                            .map_err(floodwall_resilience::Error::Inner);
                    }
                }
            };
            tokio::time::sleep(delay).await;
        }
    }
}

/// The pipeline's last result with every refusal made a [`FloodwallError`] naming the host,
/// the instance that refused and the attempts made.
fn refusal(
    result: AttemptResult,
    stages: &HostStages,
    tries: u32,
) -> reqwest_middleware::Result<Response> {
    use floodwall_resilience::Error as E;
    let refusal = match result {
        Ok(resp) => return Ok(resp),
        Err(E::Inner(mut e)) => {
            set_attempts(&mut e, tries);
            return Err(e);
        }
        Err(E::Timeout(e)) => FloodwallError::timed_out(e.after),
        Err(E::CircuitOpen(r)) => {
            let refusal = FloodwallError::circuit_open(r);
            match stages.circuit_breaker() {
                Some(b) => refusal.instance(b.name()),
                None => refusal,
            }
        }
        Err(E::BulkheadFull(r)) => {
            let refusal = FloodwallError::bulkhead_full(r);
            match stages.bulkhead() {
                Some(b) => refusal.instance(b.name()),
                None => refusal,
            }
        }
        Err(other) => return Err(reqwest_middleware::Error::middleware(other)),
    };
    let mut e = refusal.host(stages.host()).into_middleware();
    set_attempts(&mut e, tries);
    Err(e)
}

/// Starts one attempt with its own copy of the request and of the extensions; a request that
/// may not be repeated is sent as it is, once (the policy stops after it).
fn send<'a>(
    policy: &Retryable<'_>,
    owned: &mut Option<Request>,
    extensions: &Extensions,
    copy: &'a mut Extensions,
    next: &Next<'a>,
) -> Result<Boxed<'a>, reqwest_middleware::Error> {
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

type Boxed<'a> = Pin<Box<dyn Future<Output = reqwest_middleware::Result<Response>> + Send + 'a>>;

/// `Middleware::handle` written out (the trait is an `async_trait`): the host's pipeline is
/// looked up before the future is made, and the future boxed is the attempts' own, bounded
/// by the overall timeout — one state machine, not the three an `async fn` here would nest.
impl Middleware for HostPipeline {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        req: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Boxed<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let stages = self.stages_for(&req);
        let span = request_span(&req);
        let repeatable = may_repeat(&req, self.all_methods);
        let bound = RequestSettings::of(extensions)
            .and_then(RequestSettings::timeout_value)
            .or_else(|| stages.overall_timeout());
        // Counted outside the attempts only when an overall timeout may cut them.
        let counter = bound.map(|_| Arc::new(AtomicU32::new(0)));
        let run = attempts(
            stages.clone(),
            repeatable,
            Some(req),
            extensions,
            next,
            Progress {
                counter: counter.clone(),
                span: span.clone(),
            },
            self.rules.clone(),
        );
        Box::pin(ToMiddleware {
            inner: Bounded::new(run, bound),
            stages,
            counter,
            span,
        })
    }
}

pin_project! {
    /// A pipeline's result as reqwest-middleware's; an overall timeout named with the host
    /// and the attempts it cut short.
    struct ToMiddleware<F> {
        #[pin]
        inner: F,
        stages: HostStages,
        counter: Option<Arc<AtomicU32>>,
        span: Span,
    }
}

impl<F: Future<Output = AttemptResult>> Future for ToMiddleware<F> {
    type Output = reqwest_middleware::Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        use floodwall_resilience::Error as E;
        let this = self.project();
        let result = {
            let _inside = (!this.span.is_none()).then(|| this.span.enter());
            ready!(this.inner.poll(cx))
        };
        let result = match result {
            Ok(resp) => Ok(resp),
            Err(E::Inner(e)) => Err(e),
            Err(E::Timeout(e)) => {
                let tries = this
                    .counter
                    .as_ref()
                    .map_or(1, |c| c.load(Ordering::Relaxed));
                let mut e = FloodwallError::timed_out(e.after)
                    .host(this.stages.host())
                    .into_middleware();
                set_attempts(&mut e, tries);
                Err(e)
            }
            Err(other) => Err(reqwest_middleware::Error::middleware(other)),
        };
        record_result(this.span, result.as_ref());
        Poll::Ready(result)
    }
}

/// Records an attempt's result in its span (an attempt timeout as `timeout`).
fn record_attempt(span: &Span, result: &AttemptResult) {
    use floodwall_resilience::Error as E;
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(resp) => record_result(span, Ok(resp)),
        Err(E::Inner(e)) => record_result(span, Err(e)),
        Err(E::Timeout(_)) => {
            span.record("error.type", "timeout");
        }
        Err(_) => {}
    }
}
