//! Cache tags on Redis: one key per tag holding its version (`…:{~tag:<tag>}`, on the tag's
//! own slot, with a TTL refreshed on every read), read by `tag_version.lua` and bumped by
//! `bump_generation.lua`; a bump is announced on the bus as `t <version> <tag>`.

use std::time::Duration;

use floodwall_core::redis::Script;
use floodwall_core::{Key, StoreError};

use super::{BUMP_GENERATION, RedisStoreInner};

/// Reads a tag's version, making it (at Redis's time in ms) if Redis holds none.
static TAG_VERSION: Script = Script::new(include_str!("tag_version.lua"));

impl RedisStoreInner {
    fn tag_key(&self, tag: &str) -> Key {
        self.path.keyspace().key(format!("~tag:{tag}")).build()
    }

    /// `tag`'s version in Redis (`known`: this instance's), and whether it was just made.
    pub(crate) async fn tag_version(
        &self,
        tag: &str,
        known: u64,
        ttl: Duration,
    ) -> Result<(u64, bool), StoreError> {
        let call = TAG_VERSION
            .call()
            .key(self.tag_key(tag))
            .arg(known)
            .arg(floodwall_core::redis::ttl_millis(ttl));
        let (v, made): (u64, i64) = self.path.invoke(call).await?;
        Ok((v, made == 1))
    }

    /// Bumps `tag`'s version past the stored one, `known` and Redis's time in ms, and
    /// announces it on the bus.
    pub(crate) async fn bump_tag(
        &self,
        tag: &str,
        known: u64,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        let call = BUMP_GENERATION
            .call()
            .key(self.tag_key(tag))
            .arg(known)
            .arg(floodwall_core::redis::ttl_millis(ttl));
        let v: u64 = self.path.invoke(call).await?;
        self.publish(&format!("t {v} {tag}")).await;
        Ok(v)
    }
}
