//! What the cache's Redis tests share: a connection to the server or Cluster the test started,
//! and waiting until a cache's invalidation subscription is up.
#![allow(dead_code)] // each test file uses some of these

use std::time::{Duration, Instant};

use floodwall_cache::TieredCache;
use floodwall_core::redis::RedisConnection;

/// A connection to the Cluster at `urls`, or to the standalone server at `urls[0]`.
pub(crate) async fn connect(urls: &[String], cluster: bool) -> RedisConnection {
    let c = if cluster {
        RedisConnection::cluster(urls.iter().cloned())
    } else {
        RedisConnection::standalone(urls[0].clone())
    };
    c.connect().await.unwrap()
}

/// Waits for `c`'s subscription: its first `Drop::All` marks it up.
pub(crate) async fn wait_subscribed<K, V>(c: &TieredCache<K, V>)
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let started = Instant::now();
    while c.stats().invalidations_received == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
