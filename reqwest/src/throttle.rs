//! [`HostThrottle`]: client-side adaptive throttling per host.

use std::num::NonZeroUsize;

use floodwall_resilience::registry::Registry;
use floodwall_resilience::throttle::AdaptiveThrottle;
use http::{Extensions, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use crate::FloodwallError;
use crate::host::with_host_key;

/// Client-side adaptive throttling per host (the Google SRE book's, see
/// [`floodwall_resilience::throttle`]): each host's [`AdaptiveThrottle`] counts the requests
/// for it and the ones it accepted, and rejects new ones locally — not sent, not retried,
/// [`RefusalKind::Throttled`](crate::RefusalKind::Throttled) — with probability `max(0, (requests − K·accepts) /
/// (requests + 1))`, so a host that turns requests away receives about `K` times what it
/// accepts, not every retry of every client.
///
/// A request counts as accepted unless the host answered `429` or `503`, or did not answer
/// (a transport error, an attempt timeout). Put it after [`RetryMiddleware`](crate::RetryMiddleware),
/// so each attempt is counted and a throttled attempt ends the retries.
#[derive(Debug, Clone)]
pub struct HostThrottle {
    throttles: Registry<AdaptiveThrottle>,
}

impl HostThrottle {
    /// At most `max_hosts` throttles, each made by `make(host_key)` on the host's first
    /// request.
    pub fn new(
        max_hosts: NonZeroUsize,
        make: impl Fn(&str) -> AdaptiveThrottle + Send + Sync + 'static,
    ) -> Self {
        HostThrottle {
            throttles: Registry::new(max_hosts, make),
        }
    }

    /// At most `max_hosts` throttles with the SRE book's defaults (`K` = 2, a 2-minute window).
    pub fn per_host(max_hosts: NonZeroUsize) -> Self {
        Self::new(max_hosts, |_| {
            AdaptiveThrottle::builder()
                .build()
                .expect("the defaults are a valid throttle")
        })
    }

    /// The registry, to look at a host's throttle (`registry().get("host:443").counts()`).
    pub fn registry(&self) -> &Registry<AdaptiveThrottle> {
        &self.throttles
    }

    /// Permission to send one attempt to `host` (its key), or the local rejection.
    pub(crate) fn permit(
        &self,
        host: &str,
    ) -> Result<floodwall_resilience::throttle::ThrottlePermit, reqwest_middleware::Error> {
        self.throttles
            .get(host)
            .try_acquire()
            .map_err(|t| FloodwallError::throttled(t).host(host).into_middleware())
    }
}

/// Whether the host took a request it answered with `status`: not a `429` or `503`.
pub(crate) fn accepted_status(status: StatusCode) -> bool {
    !matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// Whether the host took the request: not a `429` or `503`, and an answer at all.
fn accepted(result: &reqwest_middleware::Result<Response>) -> bool {
    match result {
        Ok(resp) => accepted_status(resp.status()),
        // No answer (a transport error, a timeout), or refused further down the stack.
        Err(_) => false,
    }
}

#[async_trait::async_trait]
impl Middleware for HostThrottle {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let permit = with_host_key(&req, |host| self.permit(host))?;
        let result = next.run(req, extensions).await;
        match accepted(&result) {
            true => permit.accepted(),
            false => permit.rejected(),
        }
        result
    }
}
