//! What a [`RateLimiter`](crate::RateLimiter)(crate::RateLimiter) is configured with and answers: limits,
//! failure policies, verdicts and errors.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::StoreError;

use crate::{Algorithm, Decision, InsufficientCapacity, LimitName, Quota, QuotaResolver};

/// The most limits one [`RateLimiter`](crate::RateLimiter) holds.
pub const MAX_LIMITS: usize = 16;

/// One limit: a name, an algorithm, a quota (fixed or per key) and the descriptor entry it is
/// keyed by (none: one global counter).
///
/// ```
/// use std::num::NonZeroU32;
/// use floodwall_limiter::{Algorithm, Limit, Quota};
///
/// let n = |v| NonZeroU32::new(v).unwrap();
/// let per_user = Limit::new("user-per-second", Algorithm::Gcra, Quota::per_second(n(10)))
///     .keyed_by("user");
/// let global = Limit::new("global-per-day", Algorithm::FixedWindow, Quota::per_day(n(1_000_000)));
/// assert_eq!(per_user.name(), "user-per-second");
/// assert_eq!(global.key_name(), None);
/// ```
#[derive(Clone)]
pub struct Limit {
    pub(crate) name: LimitName,
    pub(crate) algorithm: Algorithm,
    pub(crate) quota: Arc<dyn QuotaResolver>,
    pub(crate) keyed_by: Option<Arc<str>>,
    pub(crate) shadow: bool,
    /// GCRA's constants, worked out once when the quota is fixed.
    pub(crate) params: Option<crate::gcra::Params>,
    /// Token leases on Redis, if asked for.
    pub(crate) lease: Option<crate::lease::Lease>,
    /// The limit's metric keys, built once: counting a decision allocates nothing.
    #[cfg(feature = "metrics")]
    pub(crate) counters: Arc<crate::metrics::LimitCounters>,
}

impl Limit {
    /// A global limit (until [`keyed_by`](Self::keyed_by) says otherwise). `quota` is a
    /// [`Quota`], a [`Tiers`](crate::Tiers) or any [`QuotaResolver`].
    pub fn new(name: &str, algorithm: Algorithm, quota: impl QuotaResolver) -> Limit {
        let params = match (algorithm, quota.fixed()) {
            (Algorithm::Gcra, Some(q)) => Some(crate::gcra::Params::new(&q)),
            _ => None,
        };
        Limit {
            name: name.into(),
            algorithm,
            quota: Arc::new(quota),
            keyed_by: None,
            shadow: false,
            params,
            lease: None,
            #[cfg(feature = "metrics")]
            counters: Arc::new(crate::metrics::LimitCounters::new(name)),
        }
    }

    /// Keys this limit by the descriptor entry named `entry` ("user", "ip", "token"). A
    /// request whose descriptor lacks the entry is not subject to this limit.
    pub fn keyed_by(mut self, entry: &str) -> Limit {
        self.keyed_by = Some(entry.into());
        self
    }

    /// Shadow mode for this limit: it decides, counts and reports, but never rejects. For
    /// rolling out a new limit and watching what it would do.
    pub fn shadow(mut self, on: bool) -> Limit {
        self.shadow = on;
        self
    }

    /// Token leases for this limit's hot keys on the shared store (GCRA with a fixed quota
    /// and a Redis store only — [`build`](crate::RateLimiterBuilder::build) refuses a lease
    /// otherwise; see [`Lease`](crate::Lease)): an instance takes a block of a key's tokens at
    /// once and admits from it locally. Every decision on the limit then uses the burst
    /// `b − ⌈lifetime / T⌉`, so no window ever admits more than the limit.
    pub fn lease(mut self, lease: crate::Lease) -> Limit {
        self.lease = Some(lease);
        self
    }

    /// The limit's name (used in keys, metrics and the `RateLimit` header).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor entry it is keyed by.
    pub fn key_name(&self) -> Option<&str> {
        self.keyed_by.as_deref()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether it is in shadow mode.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// The key this limit uses for `descriptor`, if it applies.
    pub(crate) fn key<'a>(&self, descriptor: &[(&str, &'a str)]) -> Option<&'a str> {
        match &self.keyed_by {
            None => Some(""),
            Some(entry) => descriptor
                .iter()
                .find(|(k, _)| *k == &**entry)
                .map(|&(_, v)| v),
        }
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("keyed_by", &self.keyed_by)
            .field("shadow", &self.shadow)
            .finish_non_exhaustive()
    }
}

/// What to do when the store (Redis) is slow or unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Admit every request (availability over limits). The verdict says it was degraded.
    FailOpen,
    /// Reject every request: [`RateLimiter::check`](crate::RateLimiter::check) returns [`LimitError::Unavailable`] (an
    /// HTTP layer answers 503).
    FailClosed,
    /// Decide in memory with each limit's quota divided by `instances` (rounded up, at least
    /// one): together the instances admit about the full quota, as rate-limiter-flexible's
    /// insurance limiter does. The default, with `instances: 1`.
    Insurance {
        /// How many instances share the quota.
        instances: NonZeroU32,
    },
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy::Insurance {
            instances: NonZeroU32::MIN,
        }
    }
}

/// How a verdict was reached when the store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degraded {
    /// The store failed and the request was admitted under [`FailurePolicy::FailOpen`].
    FailedOpen,
    /// The store failed and the in-memory insurance limiter decided.
    Insurance,
}

/// The limit that bound a verdict: the one that denied it, or the one with the least room.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The limit's name.
    pub name: LimitName,
    /// The quota that applied to this key.
    pub quota: Quota,
    /// Its decision.
    pub decision: Decision,
    /// Whether the limit is in shadow mode.
    pub shadow: bool,
}

/// The answer for one request across all the limits that apply to it.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Whether the request may go ahead. `true` when only shadow limits denied it.
    pub allowed: bool,
    /// The binding limit (none if no limit applied).
    pub binding: Option<Binding>,
    /// The first shadow limit that would have denied the request.
    pub shadow_denied: Option<LimitName>,
    /// Set when the store failed and the failure policy decided.
    pub degraded: Option<Degraded>,
    /// Whether the request was admitted from this instance's token lease, without a round
    /// trip (see [`Limit::lease`]).
    pub leased: bool,
}

impl Verdict {
    /// When denied: how long until the same request would be admitted.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        self.binding.as_ref().and_then(|b| b.decision.retry_after)
    }

    pub(crate) fn open(degraded: Option<Degraded>) -> Verdict {
        Verdict {
            allowed: true,
            binding: None,
            shadow_denied: None,
            degraded,
            leased: false,
        }
    }
}

/// Why a decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The request costs more than a limit could ever admit.
    #[error("limit {limit}: {source}")]
    InsufficientCapacity {
        /// The limit.
        limit: LimitName,
        /// The cost and capacity.
        source: InsufficientCapacity,
    },
    /// The store failed and the policy is [`FailurePolicy::FailClosed`].
    #[error("rate-limit store unavailable (failing closed): {0}")]
    Unavailable(#[source] StoreError),
}
