//! The cross-instance load lease: one instance loads a missing key while the others wait for
//! its value in Redis.
//!
//! The lease is a key beside the value (`…:{key}:GENERATION:lease`, set with a `PX` by
//! `redis/take_lease.lua` to this instance's owner id, released only by its owner). A lease
//! that already holds this instance's id is this instance's: a take whose reply was lost (the
//! call timed out on the client and Redis applied it afterwards) leaves such a lease behind,
//! and the next load takes it again at once instead of waiting on itself (a cache coalesces
//! its own loads, so it runs at most one per key). An instance that finds the lease taken
//! polls Redis for the value every `lease / 20` (5–50 ms) and takes the lease itself once the
//! holder's lease has expired (the holder died or its load outlived the lease).
//!
//! The wait is bounded by this cache's own settings, whatever is in Redis: at most the lease
//! length it configured (a lease key left without a TTL, or a crashed holder's lease set
//! longer by another configuration, is not waited out), and at most what is left of the
//! load's `hard_timeout`. Past the lease length, this instance loads without the lease.

use std::hash::Hash;
use std::time::Duration;

use crate::TieredCache;

/// What waiting for the lease came to.
pub(crate) enum Lease<V> {
    /// This instance holds the lease: it loads, then releases it.
    Held,
    /// The holder's value appeared in Redis.
    Found(Option<V>),
    /// No lease is configured.
    NotUsed,
    /// Redis failed: load without it.
    Unavailable,
    /// Another instance held the lease for as long as this cache waits: load without it.
    WaitedOut,
}

/// Takes `key`'s lease, or waits for the value of the instance that holds it — until the
/// lease length this cache configured has passed, or `deadline` (the load's hard timeout).
pub(crate) async fn acquire<K, V>(
    cache: &TieredCache<K, V>,
    key: &K,
    deadline: Option<tokio::time::Instant>,
) -> Lease<V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let Some(l2) = &cache.inner.l2 else {
        return Lease::NotUsed;
    };
    let Some(ttl) = l2.lease_ttl() else {
        return Lease::NotUsed;
    };
    let poll = (ttl / 20).clamp(Duration::from_millis(5), Duration::from_millis(50));
    let waited_out = floodwall_core::clock::deadline_after(ttl);
    let until = deadline.map_or(waited_out, |d| d.min(waited_out));
    loop {
        match l2.take_lease(key, ttl).await {
            Ok(true) => return Lease::Held,
            Ok(false) => {
                if tokio::time::Instant::now() >= until {
                    return Lease::WaitedOut;
                }
                tokio::time::sleep_until(until.min(tokio::time::Instant::now() + poll)).await;
                match cache.read_l2(key, true).await {
                    Ok(Some(value)) => return Lease::Found(value),
                    Ok(None) => {}
                    Err(()) => return Lease::Unavailable,
                }
            }
            Err(_) => {
                cache.inner.stats.l2_error();
                return Lease::Unavailable;
            }
        }
    }
}

/// Releases `key`'s lease held by this instance; a failure is logged (the lease expires).
pub(crate) async fn release<K, V>(cache: &TieredCache<K, V>, key: &K)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    if let Some(l2) = &cache.inner.l2
        && let Err(e) = l2.release_lease(key).await
    {
        tracing::debug!(error = %e, "could not release a cache load lease (it expires)");
    }
}
