//! [`RateLimiter`]: several limits, keyed by a request's descriptor, decided all-or-nothing
//! on one store (memory, Redis or Redis Cluster) with a failure policy.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use floodwall_core::SystemClock;

use crate::algorithm::Receipt;
use crate::keyed::DEFAULT_MAX_KEYS;
use crate::memory::Memory;
use crate::{
    Algorithm, Binding, Decision, Degraded, FailurePolicy, InsufficientCapacity, Limit, LimitError,
    LimitName, MAX_LIMITS, Quota, RateLimiterBuilder, Verdict,
};

pub(crate) type Descriptor<'a, 'b> = &'a [(&'a str, &'b str)];

pub(crate) enum Store {
    Memory,
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
/// On Redis each limit's decision is one Lua script call (one round trip; under load, one
/// call decides a batch of waiting decisions, see [`redis`](crate::redis)). A request's limits
/// whose keys share a slot (always off Cluster; on Cluster, limits keyed by the same value)
/// are decided all or nothing in one call, and a denial takes nothing; otherwise the calls
/// of a request's limits run concurrently (their keys may live on different Cluster nodes), so an
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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) limits: Vec<Limit>,
    pub(crate) memory: Memory,
    pub(crate) store: Store,
    pub(crate) policy: FailurePolicy,
    pub(crate) shadow_all: bool,
    /// Per limit, its token leases (leased limits on Redis only).
    pub(crate) leases: Vec<Option<crate::lease::Leases>>,
}

impl RateLimiter {
    /// Starts a builder (memory store, no limits yet).
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder {
            limits: Vec::new(),
            max_keys: DEFAULT_MAX_KEYS,
            clock: Arc::new(SystemClock::new()),
            policy: FailurePolicy::default(),
            shadow_all: false,
            redis: crate::redis::Settings::default(),
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
    /// bytes (see [`keyed`](crate::keyed)). Keys of up to 22 bytes sit in the table's
    /// entries; keys up to 46 bytes take one allocation; longer keys are kept as their
    /// SHA-256 (32 bytes), so the bound stops growing with key length:
    /// `memory_bound(usize::MAX)` holds whatever keys clients send.
    pub fn memory_bound(&self, max_key_len: usize) -> usize {
        self.inner.memory.memory_bound(max_key_len)
    }

    /// Decides a request of cost 1 at once, without awaiting, when the limits live in memory;
    /// `None` when they live on Redis (use [`check`](Self::check)). The tower layers use it
    /// so that an in-memory decision allocates nothing.
    pub fn try_check_now(
        &self,
        descriptor: &[(&str, &str)],
    ) -> Option<Result<Verdict, LimitError>> {
        match &self.inner.store {
            Store::Memory => Some(self.decide_in_memory(descriptor, 1, true)),
            Store::Redis(_) => None,
        }
    }

    /// The limits that apply to `descriptor`, with their keys and quotas (no allocation).
    #[allow(clippy::type_complexity)]
    pub(crate) fn select<'d>(
        &self,
        descriptor: Descriptor<'d, '_>,
        cost: u32,
    ) -> Result<([Option<(u32, &'d str, Quota)>; MAX_LIMITS], usize), LimitError> {
        let mut applicable: [Option<(u32, &str, Quota)>; MAX_LIMITS] = [None; MAX_LIMITS];
        let mut count = 0;
        for (i, limit) in self.inner.limits.iter().enumerate() {
            let Some(key) = limit.key(descriptor) else {
                continue;
            };
            let Some(quota) = limit.quota.quota(key) else {
                continue;
            };
            // A leased limit decides every request with its reduced burst (checked at build).
            let quota = match &limit.lease {
                Some(lease) => lease.quota(quota).unwrap_or(quota),
                None => quota,
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
        Ok((applicable, count))
    }

    /// Decides on the store. The memory store answers at once; a Redis decision (a future of
    /// under a kilobyte for one limit, whose rarer paths are boxed further down) is boxed,
    /// so the future `check` returns stays small — moving it costs nothing on the memory
    /// path.
    async fn decide(
        &self,
        descriptor: Descriptor<'_, '_>,
        cost: u32,
        consume: bool,
    ) -> Result<Verdict, LimitError> {
        let started = crate::metrics::start();
        let (verdict, on_redis) = match &self.inner.store {
            Store::Memory => (self.decide_in_memory(descriptor, cost, consume), false),
            Store::Redis(redis) => (
                Box::pin(self.decide_on_shared(redis, descriptor, cost, consume)).await,
                true,
            ),
        };
        crate::metrics::decision_time(on_redis, started);
        verdict
    }

    #[inline]
    fn decide_in_memory(
        &self,
        descriptor: Descriptor<'_, '_>,
        cost: u32,
        consume: bool,
    ) -> Result<Verdict, LimitError> {
        if cost == 1 {
            return Ok(self.check_one_in_memory(descriptor, consume));
        }
        let (applicable, count) = self.select(descriptor, cost)?;
        if count == 0 {
            return Ok(Verdict::open(None));
        }
        let memory = &self.inner.memory;
        Ok(self.decide_memory(memory, &applicable[..count], cost, consume, None))
    }

    /// A cost-1 decision on the memory store, in one pass over the limits: a cost of 1 fits
    /// every quota, so nothing needs checking before the first limit consumes, and the
    /// receipts to give back are kept only for limits that consumed. Decides as
    /// [`decide_memory`](Self::decide_memory) does.
    #[inline(never)]
    fn check_one_in_memory(&self, descriptor: Descriptor<'_, '_>, consume: bool) -> Verdict {
        let inner = &*self.inner;
        let memory = &inner.memory;
        if let [limit] = &inner.limits[..] {
            // One limit: a denial consumed nothing, so nothing is ever given back.
            let mut acc = Accumulator::default();
            if let Some(key) = limit.key(descriptor)
                && let Some(quota) = limit.quota.quota(key)
            {
                let params = limit.params.as_ref();
                let now = memory.now();
                let (decision, _) =
                    memory.decide(0, limit.algorithm, &quota, params, key, now, 1, consume);
                acc.add(quota, decision, self.is_enforced(0), limit);
            }
            return acc.finish(None);
        }
        let mut now = None;
        let mut taken = [(0u32, Receipt::None); MAX_LIMITS];
        let mut count = 0;
        let mut acc = Accumulator::default();
        for (i, limit) in inner.limits.iter().enumerate() {
            let Some(key) = limit.key(descriptor) else {
                continue;
            };
            let Some(quota) = limit.quota.quota(key) else {
                continue;
            };
            let idx = i as u32;
            let at = *now.get_or_insert_with(|| memory.now());
            let params = limit.params.as_ref();
            let (decision, receipt) =
                memory.decide(idx, limit.algorithm, &quota, params, key, at, 1, consume);
            if receipt != Receipt::None {
                taken[count] = (idx, receipt);
                count += 1;
            }
            let enforced = self.is_enforced(idx);
            acc.add(quota, decision, enforced, limit);
            if acc.denied && enforced {
                break;
            }
        }
        if acc.denied {
            for &(idx, receipt) in &taken[..count] {
                let limit = &inner.limits[idx as usize];
                if let Some(key) = limit.key(descriptor)
                    && let Some(quota) = limit.quota.quota(key)
                {
                    memory.refund(idx, &quota, key, receipt);
                }
            }
        }
        acc.finish(None)
    }

    pub(crate) fn is_enforced(&self, idx: u32) -> bool {
        !(self.inner.shadow_all || self.inner.limits[idx as usize].shadow)
    }

    pub(crate) fn decide_memory(
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
            // The prepared constants fit the limit's own quota, not an insurance share.
            let params = limit.params.as_ref().filter(|_| degraded.is_none());
            let (decision, receipt) = memory.decide(
                idx,
                limit.algorithm,
                &quota,
                params,
                key,
                now,
                cost,
                consume,
            );
            receipts[slot] = receipt;
            let enforced = self.is_enforced(idx);
            acc.add(quota, decision, enforced, limit);
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
        acc.finish(degraded)
    }
}

/// `quota` divided among the instances of an insurance policy.
pub(crate) fn insurance_share(quota: Quota, policy: FailurePolicy) -> Quota {
    let FailurePolicy::Insurance { instances } = policy else {
        return quota;
    };
    let share = |v: NonZeroU32| {
        NonZeroU32::new(v.get().div_ceil(instances.get())).unwrap_or(NonZeroU32::MIN)
    };
    Quota::new(share(quota.limit()), quota.period()).allow_burst(share(quota.burst()))
}

/// Folds the limits' decisions into a verdict, building the binding in its final form (so
/// nothing is reshaped at the end).
#[derive(Default)]
pub(crate) struct Accumulator {
    pub(crate) denied: bool,
    binding: Option<Binding>,
    shadow_denied: Option<LimitName>,
}

impl Accumulator {
    pub(crate) fn add(&mut self, quota: Quota, d: Decision, enforced: bool, limit: &Limit) {
        crate::metrics::decided(limit, d.allowed, !enforced);
        if !d.allowed && !enforced {
            if self.shadow_denied.is_none() {
                tracing::info!(limit = %limit.name, "shadow limit would have denied the request");
                self.shadow_denied = Some(limit.name.clone());
            }
            return;
        }
        let better = match &self.binding {
            None => true,
            Some(Binding { decision: b, .. }) => {
                if !d.allowed {
                    // The denial with the longest wait binds.
                    b.allowed || d.retry_after > b.retry_after
                } else {
                    b.allowed && d.remaining < b.remaining
                }
            }
        };
        if better {
            self.binding = Some(Binding {
                name: limit.name.clone(),
                quota,
                decision: d,
                shadow: limit.shadow,
            });
        }
        if !d.allowed {
            self.denied = true;
        }
    }

    pub(crate) fn finish(self, degraded: Option<Degraded>) -> Verdict {
        Verdict {
            allowed: !self.denied,
            binding: self.binding,
            shadow_denied: self.shadow_denied,
            degraded,
            leased: false,
        }
    }
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let store = match &self.inner.store {
            Store::Memory => "memory",
            Store::Redis(_) => "redis",
        };
        f.debug_struct("RateLimiter")
            .field("limits", &self.inner.limits)
            .field("store", &store)
            .field(
                "leased_limits",
                &self.inner.leases.iter().filter(|l| l.is_some()).count(),
            )
            .field("policy", &self.inner.policy)
            .finish()
    }
}
