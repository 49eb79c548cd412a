//! What the limiter's Redis tests share: connecting to a server (or a `FaultProxy` in front
//! of one) the test started, and checking that a limiter decides on Redis before a fault.
#![allow(dead_code)] // each test file uses some of these

use floodwall_core::redis::RedisConnection;
use floodwall_limiter::RateLimiter;

/// A connection to the standalone server (or proxy) at `url`.
pub(crate) async fn standalone(url: impl Into<String>) -> RedisConnection {
    RedisConnection::standalone(url).connect().await.unwrap()
}

/// A connection to the Cluster at `urls`, or to the standalone server at `urls[0]`.
pub(crate) async fn connect(urls: &[String], cluster: bool) -> RedisConnection {
    if cluster {
        RedisConnection::cluster(urls.iter().cloned())
            .connect()
            .await
            .unwrap()
    } else {
        standalone(urls[0].clone()).await
    }
}

/// Asserts that `limiter` decides `user` on Redis, not degraded: the warm-up before a test
/// breaks the connection.
pub(crate) async fn assert_on_redis(limiter: &RateLimiter, user: &str) {
    let verdict = limiter.check(&[("user", user)]).await.unwrap();
    assert!(
        verdict.degraded.is_none(),
        "{user} not decided on Redis: {verdict:?}"
    );
}
