//! The second tier as the cache sees it: [`Tier2`], the boundary the cache's protocol
//! (coalescing, freshness, fail-safe, leases, tags) calls and the Redis tier implements, and
//! [`Found`], what a read answers. A leaf: it names nothing else of the crate.

use std::future::Future;
use std::time::Duration;

use floodwall_core::StoreError;

pub(crate) type BoxFut<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value found in the second tier, with its time left.
#[derive(Debug)]
pub(crate) struct Found<V> {
    pub(crate) value: Option<V>,
    /// Its cache tags and the version of each it was stored under.
    pub(crate) tags: Vec<(String, u64)>,
    pub(crate) soft_left: Duration,
    /// Zero once it may no longer be served stale (an entry with its own lifetimes is kept
    /// past that, for revalidation).
    pub(crate) hard_left: Duration,
    /// For an entry with its own lifetimes, how long it may still stand in for a failed load.
    pub(crate) keep_left: Option<Duration>,
}

/// When a written entry stops being fresh, stops being served stale, and leaves the tier.
#[derive(Debug, Clone, Copy)]
#[allow(
    dead_code,
    reason = "read by a second tier; the one built in is Redis's"
)]
pub(crate) struct Expiry {
    pub(crate) soft: Duration,
    pub(crate) hard: Duration,
    /// How long the tier keeps it (its `PX`).
    pub(crate) keep: Duration,
    /// For an entry with its own lifetimes (kept past `hard` for revalidation): how long it
    /// may stand in for a failed load.
    pub(crate) fail_safe: Option<Duration>,
}

/// The second tier, with the key and value types erased to what the cache needs.
pub(crate) trait Tier2<K, V>: Send + Sync {
    fn read<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<Option<Found<V>>, StoreError>>;
    fn write<'a>(
        &'a self,
        key: &'a K,
        value: &'a Option<V>,
        tags: &'a [(&'a str, u64)],
        expiry: Expiry,
    ) -> BoxFut<'a, Result<(), StoreError>>;
    fn remove<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<(), StoreError>>;
    fn lease_ttl(&self) -> Option<Duration>;
    /// The namespace generation this instance knows.
    fn generation(&self) -> u64;
    /// Whether L1 must not be used now (the invalidation subscription is down).
    fn bypass_l1(&self) -> bool;
    fn bump_namespace(&self) -> BoxFut<'_, Result<u64, StoreError>>;
    /// Whether writes and deletes publish invalidations.
    fn publishes(&self) -> bool;
    fn take_lease<'a>(&'a self, key: &'a K, ttl: Duration) -> BoxFut<'a, Result<bool, StoreError>>;
    fn release_lease<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<(), StoreError>>;
    /// A cache tag's version (`known`: this instance's), and whether it was just made.
    fn tag_version<'a>(
        &'a self,
        tag: &'a str,
        known: u64,
        ttl: Duration,
    ) -> BoxFut<'a, Result<(u64, bool), StoreError>>;
    /// Bumps a cache tag's version and announces it; the new version.
    fn bump_tag<'a>(
        &'a self,
        tag: &'a str,
        known: u64,
        ttl: Duration,
    ) -> BoxFut<'a, Result<u64, StoreError>>;
}
