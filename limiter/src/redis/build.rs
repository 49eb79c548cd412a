//! What the builder does when it is given Redis: the store, and each limit's lease table.

use floodwall_core::redis::StoreOptions;

use super::{DEFAULT_MAX_BATCH, Leases, RedisStore};
use crate::RateLimiterBuilder;
use crate::builder::{ConfigError, invalid};

/// The builder's Redis settings.
pub(crate) struct Settings {
    pub(crate) options: Option<StoreOptions>,
    pub(crate) max_batch: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            options: None,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

impl RateLimiterBuilder {
    /// The Redis store and each limit's lease table, when the builder was given Redis.
    pub(crate) fn redis_store(
        &mut self,
    ) -> Result<(Option<RedisStore>, Vec<Option<Leases>>), ConfigError> {
        if self.redis.max_batch == 0 {
            return Err(invalid(
                "redis_max_batch",
                "is 0; at least 1 (1: no batching)",
            ));
        }
        let leases = self.leases()?;
        let store = self.redis.options.take().map(|options| {
            // The failure policy's series exists from now on, at zero.
            crate::metrics::store_failures(self.policy, 0);
            RedisStore::new(options, self.redis.max_batch)
        });
        Ok((store, leases))
    }

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
                if self.redis.options.is_none() {
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
