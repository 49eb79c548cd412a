//! [`RateLimiter`]: several limits, keyed by a request's descriptor, decided all-or-nothing
//! on one store (memory, Redis or Redis Cluster) with a failure policy.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::{Clock, StoreError, SystemClock};

use crate::algorithm::{Receipt, State, period_nanos};
use crate::keyed::{DEFAULT_MAX_KEYS, Table};
use crate::{Algorithm, Decision, InsufficientCapacity, Quota, QuotaResolver};

/// The most limits one [`RateLimiter`] holds.
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
    name: Arc<str>,
    algorithm: Algorithm,
    quota: Arc<dyn QuotaResolver>,
    keyed_by: Option<Arc<str>>,
    shadow: bool,
}

impl Limit {
    /// A global limit (until [`keyed_by`](Self::keyed_by) says otherwise). `quota` is a
    /// [`Quota`], a [`Tiers`](crate::Tiers) or any [`QuotaResolver`].
    pub fn new(name: &str, algorithm: Algorithm, quota: impl QuotaResolver) -> Limit {
        Limit {
            name: name.into(),
            algorithm,
            quota: Arc::new(quota),
            keyed_by: None,
            shadow: false,
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
    fn key<'a>(&self, descriptor: &[(&str, &'a str)]) -> Option<&'a str> {
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
    /// Reject every request: [`RateLimiter::check`] returns [`LimitError::Unavailable`] (an
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
    pub name: Arc<str>,
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
    pub shadow_denied: Option<Arc<str>>,
    /// Set when the store failed and the failure policy decided.
    pub degraded: Option<Degraded>,
}

impl Verdict {
    /// When denied: how long until the same request would be admitted.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            return None;
        }
        self.binding.as_ref().and_then(|b| b.decision.retry_after)
    }

    fn open(degraded: Option<Degraded>) -> Verdict {
        Verdict {
            allowed: true,
            binding: None,
            shadow_denied: None,
            degraded,
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
        limit: Arc<str>,
        /// The cost and capacity.
        source: InsufficientCapacity,
    },
    /// The store failed and the policy is [`FailurePolicy::FailClosed`].
    #[error("rate-limit store unavailable (failing closed): {0}")]
    Unavailable(#[source] StoreError),
}

pub(crate) type Descriptor<'a, 'b> = &'a [(&'a str, &'b str)];

/// A memory store for a set of limits: one bounded keyed table for all of them.
pub(crate) struct Memory {
    table: Table<(u32, Box<str>), (State, AtomicU64)>,
    clock: Arc<dyn Clock>,
}

impl Memory {
    pub(crate) fn new(max_keys: usize, clock: Arc<dyn Clock>) -> Memory {
        Memory {
            table: Table::new(max_keys, Default::default()),
            clock,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide(
        &self,
        idx: u32,
        algorithm: Algorithm,
        quota: &Quota,
        key: &str,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> (Decision, Receipt) {
        let hash = self.table.hash(&(idx, key));
        let period = period_nanos(quota);
        if !consume {
            return self
                .table
                .get(
                    hash,
                    |k| k.0 == idx && &*k.1 == key,
                    |(s, _)| s.decide(algorithm, quota, now, cost, false),
                )
                .unwrap_or_else(|| {
                    State::new(algorithm).decide(algorithm, quota, now, cost, false)
                });
        }
        self.table.with(
            hash,
            |k| k.0 == idx && &*k.1 == key,
            || {
                (
                    (idx, key.into()),
                    (State::new(algorithm), AtomicU64::new(period)),
                )
            },
            |(s, p)| s.idle_at(p.load(Ordering::Relaxed)),
            now,
            |(s, p)| {
                if p.load(Ordering::Relaxed) != period {
                    p.store(period, Ordering::Relaxed);
                }
                s.decide(algorithm, quota, now, cost, true)
            },
        )
    }

    pub(crate) fn refund(&self, idx: u32, quota: &Quota, key: &str, receipt: Receipt) {
        let hash = self.table.hash(&(idx, key));
        self.table.get(
            hash,
            |k| k.0 == idx && &*k.1 == key,
            |(s, _)| s.refund(quota, receipt),
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn approx_memory(&self) -> usize {
        self.table.approx_memory(|k| k.1.len())
    }

    pub(crate) fn memory_bound(&self, max_key_len: usize) -> usize {
        // A boxed key's allocation, rounded up the way malloc does (16-byte classes plus its
        // header).
        self.table
            .memory_bound(max_key_len.next_multiple_of(16) + 16)
    }
}

enum Store {
    Memory,
    #[cfg(feature = "redis")]
    Redis(crate::redis::RedisStore),
}

/// Several limits over one store, decided together. Cheap to clone; clones share the state.
///
/// # All or nothing
///
/// Every limit that applies to a request (a global one, and each keyed one whose entry the
/// descriptor has) decides it; if any non-shadow limit denies, whatever the others consumed is
/// given back, so a denied request consumes nothing. While a request is being decided, its
/// tentative consumption can make a concurrent request see less room — never more: limits are
/// never exceeded.
///
/// On Redis each limit's decision is one Lua script (one round trip); the scripts of a
/// request's limits run concurrently (their keys may live on different Cluster nodes), so an
/// admitted request costs one round trip of latency and a denied one at most two.
///
/// ```
/// use std::num::NonZeroU32;
/// use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let n = |v| NonZeroU32::new(v).unwrap();
/// let limiter = RateLimiter::builder()
///     .limit(Limit::new("user", Algorithm::Gcra, Quota::per_second(n(2))).keyed_by("user"))
///     .limit(Limit::new("ip", Algorithm::SlidingLog, Quota::per_minute(n(100))).keyed_by("ip"))
///     .build()
///     .unwrap();
/// let req = [("user", "42"), ("ip", "203.0.113.9")];
/// assert!(limiter.check(&req).await.unwrap().allowed);
/// assert!(limiter.check(&req).await.unwrap().allowed);
/// let third = limiter.check(&req).await.unwrap();
/// assert!(!third.allowed);
/// assert_eq!(third.binding.unwrap().name.as_ref(), "user");
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Vec<Limit>,
    memory: Memory,
    store: Store,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    policy: FailurePolicy,
    shadow_all: bool,
}

/// Builds a [`RateLimiter`].
pub struct RateLimiterBuilder {
    limits: Vec<Limit>,
    max_keys: usize,
    clock: Arc<dyn Clock>,
    policy: FailurePolicy,
    shadow_all: bool,
    #[cfg(feature = "redis")]
    redis: Option<floodwall_core::redis::StoreOptions>,
}

/// A [`RateLimiterBuilder`] setting was invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limiter configuration: {0}")]
pub struct ConfigError(pub String);

impl RateLimiter {
    /// Starts a builder (memory store, no limits yet).
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder {
            limits: Vec::new(),
            max_keys: DEFAULT_MAX_KEYS,
            clock: Arc::new(SystemClock::new()),
            policy: FailurePolicy::default(),
            shadow_all: false,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// The limits, in the order they were added.
    pub fn limits(&self) -> &[Limit] {
        &self.inner.limits
    }

    /// Decides a request of cost 1 described by `descriptor` (entries such as
    /// `("user", "42")`, `("ip", "203.0.113.9")`), consuming from every applicable limit if
    /// it is admitted.
    pub async fn check(&self, descriptor: &[(&str, &str)]) -> Result<Verdict, LimitError> {
        self.decide(descriptor, 1, true).await
    }

    /// Decides a request of cost `n`.
    pub async fn check_n(
        &self,
        descriptor: &[(&str, &str)],
        n: NonZeroU32,
    ) -> Result<Verdict, LimitError> {
        self.decide(descriptor, n.get(), true).await
    }

    /// What [`check`](Self::check) would answer, consuming nothing.
    pub async fn peek(&self, descriptor: &[(&str, &str)]) -> Result<Verdict, LimitError> {
        self.decide(descriptor, 1, false).await
    }

    /// Keys held by the in-memory store (the primary store without Redis, the insurance
    /// limiter with it).
    pub fn memory_keys(&self) -> usize {
        self.inner.memory.len()
    }

    /// Bytes the in-memory store holds now (see [`keyed`](crate::keyed) for the bound).
    pub fn memory_bytes(&self) -> usize {
        self.inner.memory.approx_memory()
    }

    /// The most bytes the in-memory store can hold when no key is longer than `max_key_len`
    /// bytes (see [`keyed`](crate::keyed)).
    pub fn memory_bound(&self, max_key_len: usize) -> usize {
        self.inner.memory.memory_bound(max_key_len)
    }

    async fn decide(
        &self,
        descriptor: Descriptor<'_, '_>,
        cost: u32,
        consume: bool,
    ) -> Result<Verdict, LimitError> {
        let inner = &*self.inner;
        // Which limits apply, with their keys and quotas (no allocation).
        let mut applicable: [Option<(u32, &str, Quota)>; MAX_LIMITS] = [None; MAX_LIMITS];
        let mut count = 0;
        for (i, limit) in inner.limits.iter().enumerate() {
            let Some(key) = limit.key(descriptor) else {
                continue;
            };
            let Some(quota) = limit.quota.quota(key) else {
                continue;
            };
            let capacity = match limit.algorithm {
                Algorithm::Gcra => quota.burst().get(),
                _ => quota.limit().get(),
            };
            if cost > capacity {
                return Err(LimitError::InsufficientCapacity {
                    limit: limit.name.clone(),
                    source: InsufficientCapacity { cost, capacity },
                });
            }
            applicable[count] = Some((i as u32, key, quota));
            count += 1;
        }
        if count == 0 {
            return Ok(Verdict::open(None));
        }
        let applicable = &applicable[..count];
        match &inner.store {
            Store::Memory => Ok(self.decide_memory(&inner.memory, applicable, cost, consume, None)),
            #[cfg(feature = "redis")]
            Store::Redis(redis) => {
                match redis.decide(&inner.limits, applicable, cost, consume).await {
                    Ok(results) => Ok(self
                        .combine_remote(redis, applicable, results, consume)
                        .await),
                    Err(e) => self.on_store_failure(e, applicable, cost, consume),
                }
            }
        }
    }

    pub(crate) fn is_enforced(&self, idx: u32) -> bool {
        !(self.inner.shadow_all || self.inner.limits[idx as usize].shadow)
    }

    fn decide_memory(
        &self,
        memory: &Memory,
        applicable: &[Option<(u32, &str, Quota)>],
        cost: u32,
        consume: bool,
        degraded: Option<Degraded>,
    ) -> Verdict {
        let inner = &*self.inner;
        let now = memory.now();
        let mut receipts = [Receipt::None; MAX_LIMITS];
        let mut acc = Accumulator::default();
        for (slot, entry) in applicable.iter().enumerate() {
            let (idx, key, quota) = entry.expect("filled above");
            let limit = &inner.limits[idx as usize];
            let quota = match degraded {
                Some(Degraded::Insurance) => insurance_share(quota, inner.policy),
                _ => quota,
            };
            let (decision, receipt) =
                memory.decide(idx, limit.algorithm, &quota, key, now, cost, consume);
            receipts[slot] = receipt;
            let enforced = self.is_enforced(idx);
            acc.add(idx, quota, decision, enforced, limit);
            if acc.denied && enforced {
                break;
            }
        }
        if acc.denied {
            for (slot, entry) in applicable.iter().enumerate() {
                let (idx, key, quota) = entry.expect("filled above");
                if receipts[slot] != Receipt::None {
                    let quota = match degraded {
                        Some(Degraded::Insurance) => insurance_share(quota, inner.policy),
                        _ => quota,
                    };
                    memory.refund(idx, &quota, key, receipts[slot]);
                }
            }
        }
        acc.finish(&inner.limits, degraded)
    }

    #[cfg(feature = "redis")]
    async fn combine_remote(
        &self,
        redis: &crate::redis::RedisStore,
        applicable: &[Option<(u32, &str, Quota)>],
        results: Vec<(Decision, crate::redis::RemoteReceipt)>,
        _consume: bool,
    ) -> Verdict {
        let inner = &*self.inner;
        let mut acc = Accumulator::default();
        for (entry, (decision, _)) in applicable.iter().zip(&results) {
            let (idx, _, quota) = entry.expect("filled above");
            acc.add(
                idx,
                quota,
                *decision,
                self.is_enforced(idx),
                &inner.limits[idx as usize],
            );
        }
        if acc.denied {
            redis.refund(&inner.limits, applicable, &results).await;
        }
        acc.finish(&inner.limits, None)
    }

    #[cfg(feature = "redis")]
    fn on_store_failure(
        &self,
        error: StoreError,
        applicable: &[Option<(u32, &str, Quota)>],
        cost: u32,
        consume: bool,
    ) -> Result<Verdict, LimitError> {
        let inner = &*self.inner;
        tracing::warn!(error = %error, policy = ?inner.policy, "rate-limit store failed");
        crate::metrics::store_failure(inner.policy);
        match inner.policy {
            FailurePolicy::FailOpen => Ok(Verdict::open(Some(Degraded::FailedOpen))),
            FailurePolicy::FailClosed => Err(LimitError::Unavailable(error)),
            FailurePolicy::Insurance { .. } => Ok(self.decide_memory(
                &inner.memory,
                applicable,
                cost,
                consume,
                Some(Degraded::Insurance),
            )),
        }
    }
}

/// `quota` divided among the instances of an insurance policy.
fn insurance_share(quota: Quota, policy: FailurePolicy) -> Quota {
    let FailurePolicy::Insurance { instances } = policy else {
        return quota;
    };
    let share = |v: NonZeroU32| {
        NonZeroU32::new(v.get().div_ceil(instances.get())).unwrap_or(NonZeroU32::MIN)
    };
    Quota::new(share(quota.limit()), quota.period()).allow_burst(share(quota.burst()))
}

#[derive(Default)]
struct Accumulator {
    denied: bool,
    binding: Option<(u32, Quota, Decision)>,
    shadow_denied: Option<u32>,
}

impl Accumulator {
    fn add(&mut self, idx: u32, quota: Quota, d: Decision, enforced: bool, limit: &Limit) {
        if !d.allowed {
            crate::metrics::denied(&limit.name, !enforced);
        }
        if !d.allowed && !enforced {
            if self.shadow_denied.is_none() {
                tracing::info!(limit = %limit.name, "shadow limit would have denied the request");
                self.shadow_denied = Some(idx);
            }
            return;
        }
        let better = match &self.binding {
            None => true,
            Some((_, _, b)) => {
                if !d.allowed {
                    // The denial with the longest wait binds.
                    b.allowed || d.retry_after > b.retry_after
                } else {
                    b.allowed && d.remaining < b.remaining
                }
            }
        };
        if better {
            self.binding = Some((idx, quota, d));
        }
        if !d.allowed {
            self.denied = true;
        }
    }

    fn finish(self, limits: &[Limit], degraded: Option<Degraded>) -> Verdict {
        Verdict {
            allowed: !self.denied,
            binding: self.binding.map(|(idx, quota, decision)| {
                let l = &limits[idx as usize];
                Binding {
                    name: l.name.clone(),
                    quota,
                    decision,
                    shadow: l.shadow,
                }
            }),
            shadow_denied: self.shadow_denied.map(|i| limits[i as usize].name.clone()),
            degraded,
        }
    }
}

impl RateLimiterBuilder {
    /// Adds a limit (at most [`MAX_LIMITS`]).
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// The most keys the in-memory store holds (see [`keyed`](crate::keyed)).
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// The clock of the in-memory store (a [`ManualClock`](floodwall_core::ManualClock) in
    /// tests). Redis stores use Redis's clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Shadow mode for every limit: decide, count and report, never reject.
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow_all = on;
        self
    }

    /// What to do when the store fails (default: an insurance limiter with the full quota).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Keeps the state on Redis, Redis Cluster or a Sentinel-monitored master, through the
    /// store path `options` describe (see the [`redis`](crate::redis) module).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, options: floodwall_core::redis::StoreOptions) -> Self {
        self.redis = Some(options);
        self
    }

    /// Builds the limiter.
    pub fn build(self) -> Result<RateLimiter, ConfigError> {
        if self.limits.len() > MAX_LIMITS {
            return Err(ConfigError(format!(
                "{} limits; at most {MAX_LIMITS}",
                self.limits.len()
            )));
        }
        for (i, a) in self.limits.iter().enumerate() {
            if self.limits[..i].iter().any(|b| b.name == a.name) {
                return Err(ConfigError(format!("two limits are named {:?}", a.name)));
            }
        }
        #[cfg(feature = "redis")]
        let store = match self.redis {
            Some(options) => Store::Redis(crate::redis::RedisStore::new(options)),
            None => Store::Memory,
        };
        #[cfg(not(feature = "redis"))]
        let store = Store::Memory;
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                limits: self.limits,
                memory: Memory::new(self.max_keys, self.clock),
                store,
                policy: self.policy,
                shadow_all: self.shadow_all,
            }),
        })
    }
}

impl fmt::Debug for RateLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiterBuilder")
            .field("limits", &self.limits)
            .field("max_keys", &self.max_keys)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = match &self.inner.store {
            Store::Memory => "memory",
            #[cfg(feature = "redis")]
            Store::Redis(_) => "redis",
        };
        f.debug_struct("RateLimiter")
            .field("limits", &self.inner.limits)
            .field("store", &store)
            .field("policy", &self.inner.policy)
            .finish()
    }
}
