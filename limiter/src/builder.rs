//! The [`RateLimiter`](crate::RateLimiter)'s builder.

use std::fmt;
use std::sync::Arc;

use floodwall_core::Clock;

use crate::lease::Leases;
use crate::limiter::{Inner, RateLimiter, Store};
use crate::memory::Memory;
use crate::{FailurePolicy, Limit, MAX_LIMITS};

/// Builds a [`RateLimiter`].
pub struct RateLimiterBuilder {
    pub(crate) limits: Vec<Limit>,
    pub(crate) max_keys: usize,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: FailurePolicy,
    pub(crate) shadow_all: bool,
    /// What `redis` and `redis_max_batch` set.
    pub(crate) redis: crate::redis::Settings,
}

/// A [`RateLimiterBuilder`] setting was invalid: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limiter `{field}`: {why}")]
pub struct ConfigError {
    /// The setting (`limits`, `limit.name`, `redis_max_batch`, `redis_shards`, `lease`).
    pub field: &'static str,
    /// What is wrong with it.
    pub why: String,
}

pub(crate) fn invalid(field: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        why: why.into(),
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
        self.redis.options = Some(options);
        self
    }

    /// The most decisions one Redis call carries (default
    /// [`DEFAULT_MAX_BATCH`](crate::redis::DEFAULT_MAX_BATCH), 128). Decisions that wait for a
    /// node while a call for it is in flight are sent together when it returns (see the
    /// [`redis`](crate::redis) module); `1` turns batching off: every decision is its own
    /// call, all in flight at once. `0` is refused by [`build`](Self::build).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_max_batch(mut self, max: usize) -> Self {
        self.redis.max_batch = max;
        self
    }

    /// Builds the limiter.
    pub fn build(mut self) -> Result<RateLimiter, ConfigError> {
        #[cfg(feature = "metrics")]
        {
            crate::describe_metrics();
            // Every limit's series exist from now on, at zero.
            for limit in &self.limits {
                limit.counters.register(limit.shadow);
            }
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(invalid(
                "limits",
                format!("{} limits; at most {MAX_LIMITS}", self.limits.len()),
            ));
        }
        for (i, a) in self.limits.iter().enumerate() {
            if self.limits[..i].iter().any(|b| b.name == a.name) {
                return Err(invalid(
                    "limit.name",
                    format!("two limits are named {:?}", a.name),
                ));
            }
        }
        let leases = self.leases()?;
        let redis = self.redis_store()?;
        let store = match redis {
            Some(redis) => Store::Redis(redis),
            None => Store::Memory,
        };
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                limits: self.limits,
                memory: Memory::new(self.max_keys, self.clock),
                store,
                policy: self.policy,
                shadow_all: self.shadow_all,
                leases,
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

impl RateLimiterBuilder {
    /// Each limit's lease table; leases need GCRA, a fixed quota, the Redis store and a
    /// lifetime the burst can pay for.
    fn leases(&self) -> Result<Vec<Option<Leases>>, ConfigError> {
        self.limits
            .iter()
            .map(|limit| {
                let Some(lease) = limit.lease else {
                    return Ok(None);
                };
                let name = &limit.name;
                if limit.algorithm != crate::Algorithm::Gcra {
                    return Err(invalid(
                        "lease",
                        format!("limit {name:?}: leases need GCRA"),
                    ));
                }
                if !self.redis.configured() {
                    return Err(invalid(
                        "lease",
                        format!("limit {name:?}: leases need the Redis store"),
                    ));
                }
                let Some(quota) = limit.quota.fixed() else {
                    return Err(invalid(
                        "lease",
                        format!("limit {name:?}: leases need a fixed quota, not tiers"),
                    ));
                };
                if lease.quota(quota).is_none() {
                    return Err(invalid(
                        "lease",
                        format!(
                            "limit {name:?}: lifetime {:?} earns the whole burst of {} \
                             (T = {:?}); shorten it or raise the burst",
                            lease.lifetime(),
                            quota.burst(),
                            quota.emission_interval()
                        ),
                    ));
                }
                Ok(Some(Leases::new(lease)))
            })
            .collect()
    }
}
