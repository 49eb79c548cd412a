//! A [`HostPipeline`](super::HostPipeline) request: its attempts through the host's stages
//! (rate limit, breaker, bulkhead, adaptive limit, attempt timeout, hedging), driven as one
//! boxed state machine, and its result as reqwest-middleware's (refusals named, the
//! fallback applied, the spans recorded).

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use floodwall_resilience::hedge::Hedge;
use floodwall_resilience::http::is_idempotent;
use floodwall_resilience::pipeline::Bounded;
use floodwall_resilience::retry::{Decision, RetryPolicy};
use floodwall_resilience::throttle::ThrottlePermit;
use http::Extensions;
use pin_project_lite::pin_project;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tracing::{Instrument, Span};

use super::{FallbackFn, HostPipeline, HostStages, Rules};
use crate::error::set_attempts;
use crate::retry::may_repeat;
use crate::rules::{RetryFn, Rule};
use crate::span::{attempt_span, record_attempts, record_result, request_span};
use crate::{FloodwallError, RequestSettings};

/// What the attempts report outside: how many were made (only when an overall timeout may
/// cut them), into the logical request's span.
struct Progress {
    counter: Option<Arc<AtomicU32>>,
    span: Option<Box<Span>>,
}

impl Progress {
    /// Attempt `tries` begins.
    fn count(&self, tries: u32) {
        if let Some(counter) = &self.counter {
            counter.store(tries, Ordering::Relaxed);
        }
    }
}

type Gate<'a> = Pin<
    Box<dyn Future<Output = Result<Option<ThrottlePermit>, reqwest_middleware::Error>> + Send + 'a>,
>;

/// What an attempt passes before the host's stages: the per-attempt rate limit, then the
/// adaptive throttle (whose permit says how the host answered). Boxed, and only when the
/// pipeline has either: a limiter's wait is large, and most pipelines have neither.
fn gate<'a>(rules: &'a Rules, host: &'a str) -> Option<Gate<'a>> {
    if rules.limit.is_none() && rules.throttle.is_none() {
        return None;
    }
    Some(Box::pin(async move {
        if let Some(limit) = &rules.limit {
            limit
                .take(host)
                .await
                .map_err(FloodwallError::into_middleware)?;
        }
        match &rules.throttle {
            Some(throttle) => throttle.permit(host).map(Some),
            None => Ok(None),
        }
    }))
}

/// Tells the throttle how the host answered the attempt.
fn report(permit: ThrottlePermit, result: &AttemptResult) {
    let accepted = match result {
        Ok(resp) => crate::throttle::accepted_status(resp.status()),
        Err(_) => false,
    };
    if accepted {
        permit.accepted();
    } else {
        permit.rejected();
    }
}

/// A span held by a request's future only when one is recorded: eight bytes otherwise, where
/// a `Span` is forty, and every byte of the boxed future is copied as it moves.
fn held(span: Span) -> Option<Box<Span>> {
    (!span.is_none()).then(|| Box::new(span))
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
    rules: Arc<Rules>,
) -> impl Future<Output = AttemptResult> + Send + 'a {
    async move {
        let settings = RequestSettings::of(extensions);
        let max = settings
            .and_then(RequestSettings::max_attempts_value)
            .map_or(u32::MAX, NonZeroU32::get);
        let attempt_timeout = settings.and_then(RequestSettings::attempt_timeout_value);
        let mut copy = Extensions::new();
        let mut call = stages.start();
        let hedgeable = repeatable && owned.as_ref().is_some_and(|r| is_idempotent(r.method()));
        let mut tries = 0u32;
        loop {
            tries += 1;
            // The caller's attempt limit: the last allowed attempt's result is final.
            let policy = Retryable {
                repeatable: repeatable && tries < max,
                rule: &rules.retry,
            };
            progress.count(tries);
            // The result lives in this block only, so the backoff's wait does not hold it.
            let delay = {
                let result = 'attempt: {
                    let throttle = match gate(&rules, stages.host()) {
                        Some(gate) => match gate.await {
                            Ok(permit) => permit,
                            Err(e) => break 'attempt Err(floodwall_resilience::Error::Inner(e)),
                        },
                        None => None,
                    };
                    let admitted = match call.admit().await {
                        Ok(admitted) => admitted.attempt_timeout(attempt_timeout),
                        Err(rejected) => break 'attempt Err(rejected),
                    };
                    let span = owned
                        .as_ref()
                        .and_then(|req| held(attempt_span(req, tries)));
                    let sent = match (&rules.hedge, hedgeable) {
                        (Some(hedge), true) => hedged(hedge, &owned, extensions, &next),
                        _ => send(&policy, &mut owned, extensions, &mut copy, &next),
                    };
                    let fut = match sent {
                        Ok(fut) => fut,
                        Err(e) => break 'attempt Err(floodwall_resilience::Error::Inner(e)),
                    };
                    let fut = traced(fut, span.as_deref());
                    let result = admitted
                        .run(fut, |r| rules.classify.outcome(r.as_ref()))
                        .await;
                    record_attempt(span.as_deref(), &result);
                    if let Some(permit) = throttle {
                        report(permit, &result);
                    }
                    result
                };
                match call.next_delay(&policy, &result) {
                    Some(delay) => delay,
                    None => {
                        if let Some(span) = &progress.span {
                            record_attempts(span, tries);
                        }
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

/// One attempt sent through `hedge`: copies of the request, each with its own copy of the
/// extensions, until one answers with neither an error nor a `5xx`.
fn hedged<'a>(
    hedge: &Hedge,
    owned: &Option<Request>,
    extensions: &Extensions,
    next: &Next<'a>,
) -> Result<Boxed<'a>, reqwest_middleware::Error> {
    let template = owned.as_ref().and_then(Request::try_clone).ok_or_else(|| {
        reqwest_middleware::Error::middleware(std::io::Error::other(
            "the request could not be copied for a hedged attempt",
        ))
    })?;
    let (hedge, next, base) = (hedge.clone(), next.clone(), extensions.clone());
    Ok(Box::pin(async move {
        let copy = || {
            let (request, next, mut ext) = (template.try_clone(), next.clone(), base.clone());
            async move {
                let request = request.expect("copied once: it can be copied again");
                next.run(request, &mut ext).await
            }
        };
        let failed = |r: &reqwest_middleware::Result<Response>| match r {
            Ok(resp) => resp.status().is_server_error(),
            Err(_) => true,
        };
        hedge.call_with(&failed, copy).await
    }))
}

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
        let span = held(request_span(&req));
        let repeatable = may_repeat(&req, self.all_methods);
        let bound = RequestSettings::of(extensions)
            .and_then(RequestSettings::timeout_value)
            .or_else(|| stages.overall_timeout());
        // What an overall timeout's error names — the host, the attempts made — kept outside
        // the attempts only when such a timeout may cut them.
        let cut = bound.map(|_| (stages.clone(), Arc::new(AtomicU32::new(0))));
        let progress = Progress {
            counter: cut.as_ref().map(|(_, counter)| counter.clone()),
            span: span.clone(),
        };
        let rules = self.rules.clone();
        let fallback = rules.fallback.clone();
        let run = attempts(
            stages,
            repeatable,
            Some(req),
            extensions,
            next,
            progress,
            rules,
        );
        Box::pin(ToMiddleware {
            inner: Bounded::new(run, bound),
            cut,
            span,
            fallback,
        })
    }
}

pin_project! {
    /// A pipeline's result as reqwest-middleware's; an overall timeout named with the host
    /// and the attempts it cut short.
    struct ToMiddleware<F> {
        #[pin]
        inner: F,
        cut: Option<(HostStages, Arc<AtomicU32>)>,
        span: Option<Box<Span>>,
        fallback: Option<Arc<FallbackFn>>,
    }
}

impl<F: Future<Output = AttemptResult>> Future for ToMiddleware<F> {
    type Output = reqwest_middleware::Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        use floodwall_resilience::Error as E;
        let this = self.project();
        let result = {
            let _inside = this.span.as_ref().map(|span| span.enter());
            ready!(this.inner.poll(cx))
        };
        let result = match result {
            Ok(resp) => Ok(resp),
            Err(E::Inner(e)) => Err(e),
            Err(E::Timeout(e)) => {
                let mut refusal = FloodwallError::timed_out(e.after);
                let mut tries = 1;
                if let Some((stages, counter)) = this.cut {
                    refusal = refusal.host(stages.host());
                    tries = counter.load(Ordering::Relaxed);
                }
                let mut e = refusal.into_middleware();
                set_attempts(&mut e, tries);
                Err(e)
            }
            Err(other) => Err(reqwest_middleware::Error::middleware(other)),
        };
        let failed = match &result {
            Ok(resp) => resp.status().is_server_error(),
            Err(_) => true,
        };
        let result = match this.fallback {
            Some(fallback) if failed => fallback(result.as_ref()).map_or(result, Ok),
            _ => result,
        };
        if let Some(span) = this.span {
            record_result(span, result.as_ref());
        }
        Poll::Ready(result)
    }
}

/// `fut` in `span`, when one is recorded.
fn traced<'a>(fut: Boxed<'a>, span: Option<&Span>) -> Boxed<'a> {
    match span {
        None => fut,
        Some(span) => Box::pin(fut.instrument(span.clone())),
    }
}

/// Records an attempt's result in its span, if it has one (an attempt timeout as `timeout`).
fn record_attempt(span: Option<&Span>, result: &AttemptResult) {
    use floodwall_resilience::Error as E;
    let Some(span) = span.filter(|s| !s.is_disabled()) else {
        return;
    };
    match result {
        Ok(resp) => record_result(span, Ok(resp)),
        Err(E::Inner(e)) => record_result(span, Err(e)),
        Err(E::Timeout(_)) => {
            span.record("error.type", "timeout");
        }
        Err(_) => {}
    }
}
