//! Where a limit's states live on Redis: the shards of layout 2.
//!
//! A limit's states are spread over `S` shards (1 on a standalone or Sentinel server, by
//! default 16 on Cluster; [`redis_shards`](crate::RateLimiterBuilder::redis_shards)). A shard
//! is a hash tag of the store's own, `{#2.<S>.<j>.<n>}`: the layout version, the shard count,
//! the shard, and the first `n` that puts the tag's slot in the shard's `1/S`-th of the slot
//! space. A limited key's shard is the one whose part of the slot space holds the slot its own
//! hash tag would have: `j = slot(key) · S / 16384`. So shards spread over a Cluster's masters
//! as evenly as slots do, every limit keyed by the same value is in the same shard (their
//! states share a slot, and a request's limits are decided in one script), and a key's shard
//! is a pure function of the key and `S`.
//!
//! In a shard, each GCRA limit keeps every key's state as a field of one hash (`…:<limit>`,
//! field: the key's encoded routing part), so a batch reads a shard's states with one `HMGET`
//! and writes them with one `HSET`. Window counters and logs stay one key per limited key,
//! under the shard's tag (`…:<limit>:<key>`).

use std::sync::Arc;

use floodwall_core::Key;
use floodwall_core::key::{Keyspace, encode_part};
use floodwall_core::redis::slot::key_slot;

use super::RedisStore;
use crate::{Algorithm, Limit};

/// The layout of the limiter's keys on Redis (the first part of every shard's tag).
pub(crate) const LAYOUT: u32 = 2;

/// Redis Cluster's slot count.
const SLOTS: usize = 16_384;

/// The most shards a limiter may spread its states over.
pub const MAX_SHARDS: u16 = 1_024;

/// The shards of one store: each shard's tag, in shard order.
#[derive(Debug)]
pub(crate) struct Shards {
    tags: Box<[Box<str>]>,
}

impl Shards {
    /// `count` shards (1 to [`MAX_SHARDS`]; the caller validates).
    pub(crate) fn new(count: u16) -> Shards {
        let count = usize::from(count.clamp(1, MAX_SHARDS));
        let tags = (0..count)
            .map(|j| {
                (0u32..)
                    .map(|n| format!("{LAYOUT}.{count}.{j}.{n}"))
                    .find(|tag| {
                        // The slot Redis gives `{#<tag>}`.
                        let hashed = format!("#{tag}");
                        usize::from(key_slot(hashed.as_bytes())) * count / SLOTS == j
                    })
                    .expect("every part of the slot space has a tag")
                    .into_boxed_str()
            })
            .collect();
        Shards { tags }
    }

    /// The shard of the limited key `routing` (its index and tag) and the key's encoded form
    /// (its field in a shard's hash, and the last part of its own keys).
    pub(crate) fn locate(&self, routing: &str) -> (usize, &str, String) {
        let encoded = encode_part(routing);
        // The encoding holds no brace, so its slot is the one `{<encoded>}` would have.
        let slot = usize::from(key_slot(encoded.as_bytes()));
        let j = slot * self.tags.len() / SLOTS;
        (j, &self.tags[j], encoded)
    }
}

/// Each GCRA limit's shard hashes (`…{#<tag>}:<limit>`), built once when the store is: a
/// decision takes its hash's name by a reference count, not by building it again.
#[derive(Debug, Default)]
pub(crate) struct ShardHashes {
    limits: Vec<LimitHashes>,
}

/// A limit's name and its hash in each shard, in shard order.
type LimitHashes = (Box<str>, Box<[Arc<Key>]>);

impl ShardHashes {
    /// The hashes of `limits`' GCRA limits in every shard of `shards`.
    pub(crate) fn new(keyspace: &Keyspace, shards: &Shards, limits: &[Limit]) -> ShardHashes {
        let limits = limits
            .iter()
            .filter(|l| l.algorithm() == Algorithm::Gcra)
            .map(|l| {
                let hashes = shards
                    .tags
                    .iter()
                    .map(|tag| Arc::new(keyspace.store_key(tag).part(l.name()).build()))
                    .collect();
                (Box::from(l.name()), hashes)
            })
            .collect();
        ShardHashes { limits }
    }

    /// `limit`'s hash in the shard of `tag` (index `j`), when it was built.
    fn get(&self, limit: &str, j: usize) -> Option<&Arc<Key>> {
        let (_, hashes) = self.limits.iter().find(|(name, _)| &**name == limit)?;
        hashes.get(j)
    }
}

/// The Redis key of a decision's state: a GCRA limit's shard hash, shared by every decision in
/// that shard, or a key of the decision's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateKey {
    Shared(Arc<Key>),
    Own(Key),
}

impl std::ops::Deref for StateKey {
    type Target = Key;

    fn deref(&self) -> &Key {
        match self {
            StateKey::Shared(k) => k,
            StateKey::Own(k) => k,
        }
    }
}

/// Where one key's state for one limit lives on Redis: see
/// [`RateLimiter::redis_location`](crate::RateLimiter::redis_location).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Location {
    /// The Redis key: for GCRA, the hash of the key's shard; for the others, the key's own
    /// state (a hash of `w`, `c`, `p` for the window counters, a sorted set for the log).
    pub key: String,
    /// GCRA: the key's field in that hash (its TAT in µs on Redis time, as an 8-byte
    /// little-endian IEEE 754 double).
    pub field: Option<String>,
    /// The sliding log: the key counting its members.
    pub sequence: Option<String>,
}

impl crate::RateLimiter {
    /// Where `key`'s state for the limit named `limit` lives on Redis, for inspecting it
    /// (`HGET <key> <field>`) or resetting one user (`HDEL <key> <field>`, or `DEL <key>`
    /// for the other algorithms); `key` is ignored for a global limit. `None` when the
    /// limiter has no Redis store or no limit of that name.
    pub fn redis_location(&self, limit: &str, key: &str) -> Option<Location> {
        let crate::limiter::Store::Redis(store) = &self.inner.store else {
            return None;
        };
        let limit = self.inner.limits.iter().find(|l| l.name() == limit)?;
        let (state, field, seq) = store.keys(limit, key);
        Some(Location {
            key: state.as_str().to_owned(),
            field,
            sequence: seq.map(Key::into_string),
        })
    }
}

impl RedisStore {
    /// Where `key`'s state for `limit` lives (see the [module docs](self)): GCRA, the shard's hash and the
    /// key's field in it; the others, the key's own state and (sliding log) its sequence.
    pub(super) fn keys(&self, limit: &Limit, key: &str) -> (StateKey, Option<String>, Option<Key>) {
        let routing = if limit.key_name().is_some() {
            key
        } else {
            limit.name()
        };
        let (j, tag, field) = self.shards.locate(routing);
        if limit.algorithm() == Algorithm::Gcra
            && let Some(hash) = self.hashes.get(limit.name(), j)
        {
            return (StateKey::Shared(hash.clone()), Some(field), None);
        }
        let shard = self.path.keyspace().store_key(tag).part(limit.name());
        match limit.algorithm() {
            Algorithm::Gcra => (StateKey::Own(shard.build()), Some(field), None),
            Algorithm::SlidingLog => {
                let base = shard.part(routing);
                let seq = base.clone().part("seq").build();
                (StateKey::Own(base.build()), None, Some(seq))
            }
            _ => (StateKey::Own(shard.part(routing).build()), None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shards_tag_hashes_into_its_part_of_the_slot_space() {
        for count in [1u16, 3, 16, 1024] {
            let shards = Shards::new(count);
            assert_eq!(shards.tags.len(), usize::from(count));
            for (j, tag) in shards.tags.iter().enumerate() {
                let slot = usize::from(key_slot(format!("x{{#{tag}}}y").as_bytes()));
                assert_eq!(slot * usize::from(count) / SLOTS, j, "{tag}");
            }
        }
    }

    #[test]
    fn a_key_lands_in_the_shard_of_its_own_slot() {
        let shards = Shards::new(16);
        for user in ["a", "user:42", "", "{x}", &"z".repeat(500)] {
            let (_, tag, field) = shards.locate(user);
            let own = usize::from(key_slot(format!("{{{field}}}").as_bytes()));
            let theirs = usize::from(key_slot(format!("{{#{tag}}}").as_bytes()));
            assert_eq!(own * 16 / SLOTS, theirs * 16 / SLOTS, "{user:?}");
        }
    }
}
