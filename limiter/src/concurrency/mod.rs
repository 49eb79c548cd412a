//! A concurrency limit shared by the fleet (Stripe's concurrent-requests limiter): at most
//! `N` requests in flight per key — a user, a tenant, an expensive endpoint — across every
//! instance, on Redis (standalone, Sentinel, Cluster) through floodwall-core's store path, or
//! in memory for one instance.
//!
//! # How it holds
//!
//! On Redis, a key's holders are one sorted set: each permit is a member whose score is the
//! end of its lease (Redis `TIME`). Acquiring is one script — drop the holders whose lease
//! ended, admit while fewer than `N` remain — so two instances can never both take the last
//! slot. A permit renews its lease every third of it while the request runs (a heartbeat) and
//! frees its slot when dropped. **Invariant:** at most `N` unexpired leases per key; a slot
//! held by an instance that crashed (or lost Redis) is free at most one lease after its last
//! renewal.
//!
//! **When Redis loses data** (a restart without persistence, `FLUSHALL`, a failover to a
//! replica that had not yet received the holders): the holders it forgot no longer count, so
//! up to `N` more requests per key may be admitted while the forgotten ones still run — at
//! most `2N` in flight, for as long as the longest of them. Their heartbeats find their slots
//! gone and stop (logged); nothing is re-added.
//!
//! A permit gives its slot back when dropped, in the background and past the node's health
//! gate; if that call fails, the lease frees the slot.
//!
//! When Redis fails, the [`FailurePolicy`] decides, as for the rate limits: admit everyone
//! ([`FailOpen`](FailurePolicy::FailOpen)), refuse everyone
//! ([`FailClosed`](FailurePolicy::FailClosed)), or hold each key to its share `⌈N /
//! instances⌉` in this instance's memory ([`Insurance`](FailurePolicy::Insurance), the
//! default) — within the store's call bound.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use floodwall_limiter::concurrency::ConcurrencyLimit;
//!
//! let limit = ConcurrencyLimit::builder(2).build().unwrap(); // in memory
//! let a = limit.acquire("tenant-7").await.unwrap();
//! let b = limit.acquire("tenant-7").await.unwrap();
//! assert!(limit.acquire("tenant-7").await.is_err(), "two in flight: the limit");
//! assert!(limit.acquire("tenant-8").await.is_ok(), "another key has its own");
//! drop(a);
//! assert!(limit.acquire("tenant-7").await.is_ok(), "a slot came back");
//! # drop(b); }
//! ```

#[cfg(feature = "http")]
mod http;
mod memory;
// The holders on Redis (`crate::redis::concurrency`; without the `redis` feature, types with
// no values: the Redis paths below compile to nothing, with no gate of their own).
use crate::redis::concurrency as redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::StoreError;

pub use crate::limit::FailurePolicy;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use http::{ConcurrencyLimitLayer, ConcurrencyLimitService};

/// Why a request was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum ConcurrencyError {
    /// The key has `limit` requests in flight.
    #[error("concurrency limit `{name}` reached for this key: {in_flight} of {limit} in flight; retry after {}s", whole_seconds(*.retry_after))]
    Full {
        /// The limit's name.
        name: Arc<str>,
        /// The most in flight per key.
        limit: u32,
        /// In flight when the request was refused.
        in_flight: u32,
        /// When to try again (the answer's `Retry-After`).
        retry_after: Duration,
    },
    /// The store failed and the policy is [`FailurePolicy::FailClosed`].
    #[error("concurrency limit `{name}` unavailable: {source}")]
    Unavailable {
        /// The limit's name.
        name: Arc<str>,
        /// What failed.
        #[source]
        source: StoreError,
    },
}

/// `d` in whole seconds, rounded up, at least 1 (the unit of `Retry-After`).
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// A refused [`ConcurrencyLimitBuilder`] setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid ConcurrencyLimit `{field}`: {why}")]
pub struct ConcurrencyConfigError {
    /// The setting.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Builds a [`ConcurrencyLimit`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConcurrencyLimitBuilder {
    name: Arc<str>,
    limit: u32,
    lease: Duration,
    retry_after: Duration,
    policy: FailurePolicy,
    redis: Option<redis::Holders>,
}

impl fmt::Debug for ConcurrencyLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitBuilder")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimitBuilder {
    /// A name, for errors, logs and metrics. Default: `"concurrency"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// How long a slot stays held without a renewal: the longest a crashed instance's slot
    /// stays taken. Renewed every third of it while the request runs. Default: 10 s; at least
    /// 30 ms.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The `Retry-After` a refused request is given. Default: 1 s.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// What to do when the store fails. Default: [`FailurePolicy::Insurance`] with one
    /// instance (the whole limit, in this instance's memory).
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Keeps the holders in Redis (keyspace `fw-conc` v1 unless `options` name another),
    /// shared by every instance that uses the same keyspace.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, options: floodwall_core::redis::StoreOptions) -> Self {
        self.redis = Some(redis::Holders::new(options));
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<ConcurrencyLimit, ConcurrencyConfigError> {
        if self.limit == 0 {
            return Err(ConcurrencyConfigError {
                field: "limit",
                why: "must be at least 1",
            });
        }
        if self.lease < Duration::from_millis(30) {
            return Err(ConcurrencyConfigError {
                field: "lease",
                why: "must be at least 30 ms",
            });
        }
        let share = match self.policy {
            FailurePolicy::Insurance { instances } => self.limit.div_ceil(instances.get()),
            _ => self.limit,
        };
        Ok(ConcurrencyLimit {
            inner: Arc::new(Inner {
                local: memory::Slots::default(),
                fallback: memory::Slots::default(),
                share,
                redis: self.redis,
                name: self.name,
                limit: self.limit,
                lease: self.lease,
                retry_after: self.retry_after,
                policy: self.policy,
            }),
        })
    }
}

struct Inner {
    name: Arc<str>,
    limit: u32,
    lease: Duration,
    retry_after: Duration,
    policy: FailurePolicy,
    /// The slots when there is no Redis.
    local: memory::Slots,
    /// The insurance slots while Redis fails.
    fallback: memory::Slots,
    /// The insurance share per key.
    share: u32,
    redis: Option<redis::Holders>,
}

/// At most `N` requests in flight per key, across the fleet. See the [module docs](self).
/// Cheap to clone.
#[derive(Clone)]
pub struct ConcurrencyLimit {
    inner: Arc<Inner>,
}

impl fmt::Debug for ConcurrencyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("name", &self.inner.name)
            .field("limit", &self.inner.limit)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

/// How a permit was granted, and so how it is given back.
enum Grant {
    /// A slot in this instance's memory: without Redis, or (`fallback`) the insurance share
    /// while Redis fails.
    Local { fallback: bool, key: String },
    /// A slot in Redis, renewed by `heartbeat`.
    Redis(redis::Held),
    /// Admitted without a slot (fail-open while Redis fails).
    Unlimited,
}

/// A request in flight; dropping it frees its slot.
#[must_use = "hold the permit while the request runs"]
pub struct ConcurrencyPermit {
    inner: Arc<Inner>,
    grant: Grant,
}

impl fmt::Debug for ConcurrencyPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match &self.grant {
            Grant::Local { .. } => "local",
            Grant::Redis(_) => "redis",
            Grant::Unlimited => "unlimited",
        };
        f.debug_struct("ConcurrencyPermit")
            .field("slot", &how)
            .finish()
    }
}

impl ConcurrencyPermit {
    /// Whether the store failed and the permit was granted by the failure policy (a local
    /// share, or no limit at all).
    pub fn is_degraded(&self) -> bool {
        match &self.grant {
            Grant::Local { fallback, .. } => *fallback,
            Grant::Redis(_) => false,
            Grant::Unlimited => true,
        }
    }
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.grant, Grant::Unlimited) {
            Grant::Local { fallback, key } => {
                let slots = match fallback {
                    true => &self.inner.fallback,
                    false => &self.inner.local,
                };
                slots.release(&key);
            }
            Grant::Redis(held) => held.release(),
            Grant::Unlimited => {}
        }
    }
}

impl ConcurrencyLimit {
    /// A builder for at most `limit` requests in flight per key: in memory, 10 s leases,
    /// insurance while the store fails.
    pub fn builder(limit: u32) -> ConcurrencyLimitBuilder {
        ConcurrencyLimitBuilder {
            name: Arc::from("concurrency"),
            limit,
            lease: Duration::from_secs(10),
            retry_after: Duration::from_secs(1),
            policy: FailurePolicy::default(),
            redis: None,
        }
    }

    /// The most in flight per key.
    pub fn limit(&self) -> u32 {
        self.inner.limit
    }

    /// Takes a slot for `key`, or says why not. On Redis, one script (bounded by the store's
    /// call timeout); the slot is renewed while the permit is held and freed when it drops.
    pub async fn acquire(&self, key: &str) -> Result<ConcurrencyPermit, ConcurrencyError> {
        if let Some(redis) = &self.inner.redis {
            return match redis.acquire(key, self.inner.limit, self.inner.lease).await {
                Ok(Ok(held)) => Ok(self.permit(Grant::Redis(held))),
                Ok(Err(in_flight)) => Err(self.full(in_flight)),
                Err(e) => self.degraded(key, e),
            };
        }
        match self.inner.local.try_take(key, self.inner.limit) {
            Ok(()) => Ok(self.permit(Grant::Local {
                fallback: false,
                key: key.to_owned(),
            })),
            Err(in_flight) => Err(self.full(in_flight)),
        }
    }

    fn permit(&self, grant: Grant) -> ConcurrencyPermit {
        ConcurrencyPermit {
            inner: self.inner.clone(),
            grant,
        }
    }

    fn full(&self, in_flight: u32) -> ConcurrencyError {
        ConcurrencyError::Full {
            name: self.inner.name.clone(),
            limit: self.inner.limit,
            in_flight,
            retry_after: self.inner.retry_after,
        }
    }

    /// The failure policy's answer while the store fails.
    fn degraded(&self, key: &str, e: StoreError) -> Result<ConcurrencyPermit, ConcurrencyError> {
        tracing::warn!(limit = &*self.inner.name, error = %e, policy = ?self.inner.policy, "concurrency store failed");
        match self.inner.policy {
            FailurePolicy::FailOpen => Ok(self.permit(Grant::Unlimited)),
            FailurePolicy::FailClosed => Err(ConcurrencyError::Unavailable {
                name: self.inner.name.clone(),
                source: e,
            }),
            FailurePolicy::Insurance { .. } => {
                match self.inner.fallback.try_take(key, self.inner.share) {
                    Ok(()) => Ok(self.permit(Grant::Local {
                        fallback: true,
                        key: key.to_owned(),
                    })),
                    Err(in_flight) => Err(self.full(in_flight)),
                }
            }
        }
    }
}
