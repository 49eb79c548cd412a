//! What the builder does when it is given Redis: the store, and each limit's lease table.

use floodwall_core::redis::StoreOptions;

use super::{DEFAULT_MAX_BATCH, MAX_SHARDS, RedisStore};
use crate::RateLimiterBuilder;
use crate::builder::{ConfigError, invalid};

/// The builder's Redis settings.
pub(crate) struct Settings {
    pub(crate) options: Option<StoreOptions>,
    pub(crate) max_batch: usize,
    /// `None`: the topology's default (1 on one server, 16 on Cluster).
    pub(crate) shards: Option<u16>,
    /// Whether decisions try the native command (`FLOODWALL.GCRA`) where the server has it.
    pub(crate) native: bool,
}

impl Settings {
    /// Whether the builder was given a Redis store.
    pub(crate) fn configured(&self) -> bool {
        self.options.is_some()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            options: None,
            max_batch: DEFAULT_MAX_BATCH,
            shards: None,
            native: true,
        }
    }
}

impl RateLimiterBuilder {
    /// How many shards a limit's states are spread over on Redis (1 to
    /// [`MAX_SHARDS`](crate::redis::MAX_SHARDS); default: 1 on a standalone or Sentinel
    /// server, [`DEFAULT_CLUSTER_SHARDS`](crate::redis::DEFAULT_CLUSTER_SHARDS) on Cluster).
    ///
    /// A shard is one hash tag: a batch decides a shard's GCRA states with one read and one
    /// write, so fewer shards cost Redis less per decision; more shards spread a limit over
    /// more Cluster masters and keep each hash smaller (see the [`redis`](crate::redis)
    /// module). A state takes about 74 bytes, so a shard of a million live keys is a hash of
    /// about 74 MB, which a Cluster slot migration moves as one key: choose enough shards to
    /// keep each one a size your resharding can move. On a 3-master Cluster with
    /// floodwall-redis-module, 3 shards cost Redis 0.21–0.22× a per-decision script's CPU on
    /// spread keys, the default 16 0.27× (0.56–0.57× with the Lua script;
    /// `benches/limiter_redis.rs`, two runs of this release). **Every instance of a fleet must
    /// use the same count**:
    /// instances with different counts keep separate states, each admitting up to the limit.
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_shards(mut self, shards: u16) -> Self {
        self.redis.shards = Some(shards);
        self
    }

    /// Whether GCRA decisions that consume use the native command `FLOODWALL.GCRA` where the
    /// server has it (default: `true`).
    ///
    /// A server that loaded floodwall-redis-module decides a batch of them with one command
    /// per shard hash, the same states and verdicts as the Lua script for a fraction of the
    /// server's CPU (`benches/limiter_redis.rs`). A server without the module refuses the
    /// command, which decides nothing: the limiter remembers that, uses the script, and tries
    /// the command again every 30 s. Instances with and without the command share states
    /// exactly. `false` always uses the script.
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_native_command(mut self, enabled: bool) -> Self {
        self.redis.native = enabled;
        self
    }

    /// The Redis store, when the builder was given Redis.
    pub(crate) fn redis_store(&mut self) -> Result<Option<RedisStore>, ConfigError> {
        if self.redis.max_batch == 0 {
            return Err(invalid(
                "redis_max_batch",
                "is 0; at least 1 (1: no batching)",
            ));
        }
        if let Some(n) = self.redis.shards
            && !(1..=MAX_SHARDS).contains(&n)
        {
            return Err(invalid(
                "redis_shards",
                format!("is {n}; 1 to {MAX_SHARDS}"),
            ));
        }
        Ok(self.redis.options.take().map(|options| {
            // The failure policy's series exists from now on, at zero.
            crate::metrics::store_failures(self.policy, 0);
            RedisStore::new(options, &self.redis, &self.limits)
        }))
    }
}
