//! The cross-instance load lease: one instance loads a missing key while the others wait for
//! its value in Redis.
//!
//! The lease is a key beside the value (`…:{key}:GENERATION:lease`, `SET NX PX` with this
//! instance's owner id, released only by its owner). An instance that finds the lease taken
//! polls Redis for the value every `lease / 20` (5–50 ms) and takes the lease itself once the
//! holder's lease has expired (the holder died or its load outlived the lease).

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
}

/// Takes `key`'s lease, or waits for the value of the instance that holds it.
pub(crate) async fn acquire<K, V>(cache: &TieredCache<K, V>, key: &K) -> Lease<V>
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
    loop {
        match l2.take_lease(key, ttl).await {
            Ok(true) => return Lease::Held,
            Ok(false) => {
                tokio::time::sleep(poll).await;
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
