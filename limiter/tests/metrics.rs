//! With the `metrics` feature, denials (enforced and shadow) are counted under the documented
//! name.

use std::num::NonZeroU32;

use floodwall_core::ManualClock;
use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test]
async fn denials_are_counted_by_limit_and_shadow() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");

    let one = Quota::per_minute(NonZeroU32::new(1).unwrap());
    let limiter = RateLimiter::builder()
        .limit(Limit::new("enforced", Algorithm::FixedWindow, one).keyed_by("user"))
        .limit(Limit::new("trial", Algorithm::Gcra, one).shadow(true))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    assert!(limiter.check(&[("user", "a")]).await.unwrap().allowed);
    // Denied by "enforced"; "trial" (shadow, global) would also deny.
    assert!(!limiter.check(&[("user", "a")]).await.unwrap().allowed);
    // Admitted ("b" has room), but "trial" would deny it.
    let v = limiter.check(&[("user", "b")]).await.unwrap();
    assert!(v.allowed && v.shadow_denied.is_some());

    // A store that fails, under each policy that decides without it.
    #[cfg(feature = "redis")]
    let failures = store_failures().await;

    let snap = snapshotter.snapshot().into_vec();
    let count = |limit: &str, shadow: &str| {
        snap.iter()
            .find_map(|(key, _, _, v)| {
                let k = key.key();
                let ok = k.name() == "floodwall_limiter_denied_total"
                    && k.labels().any(|l| l.key() == "limit" && l.value() == limit)
                    && k.labels()
                        .any(|l| l.key() == "shadow" && l.value() == shadow);
                match v {
                    DebugValue::Counter(c) if ok => Some(*c),
                    _ => None,
                }
            })
            .unwrap_or(0)
    };
    #[cfg(feature = "redis")]
    {
        let failed = |policy: &str| {
            snap.iter()
                .find_map(|(key, _, _, v)| {
                    let k = key.key();
                    let ok = k.name() == "floodwall_limiter_store_failures_total"
                        && k.labels()
                            .any(|l| l.key() == "policy" && l.value() == policy);
                    match v {
                        DebugValue::Counter(c) if ok => Some(*c),
                        _ => None,
                    }
                })
                .unwrap_or(0)
        };
        if let Some((open, insurance)) = failures {
            assert_eq!(failed("fail_open"), open);
            assert_eq!(failed("insurance"), insurance);
        }
    }
    assert_eq!(count("enforced", "false"), 1);
    assert_eq!(
        count("trial", "true"),
        1,
        "the shadow denial of b (a's stopped at enforced)"
    );
}

/// Decisions against a blackholed Redis under fail-open (2) and insurance (3); `None` when
/// no `redis-server` is available (the SKIPPED line says so).
#[cfg(feature = "redis")]
async fn store_failures() -> Option<(u64, u64)> {
    use std::time::Duration;

    use floodwall_core::redis::RedisConnection;
    use floodwall_core::redis::StoreOptions;
    use floodwall_limiter::FailurePolicy;
    use floodwall_testkit::{FaultProxy, RedisServer};

    let server =
        RedisServer::start_or_skip("denials_are_counted_by_limit_and_shadow (store failures)")?;
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let mut counts = Vec::new();
    for (policy, calls) in [
        (FailurePolicy::FailOpen, 2u64),
        (FailurePolicy::default(), 3),
    ] {
        let conn = RedisConnection::standalone(proxy.redis_url())
            .connect()
            .await
            .unwrap();
        let limiter = RateLimiter::builder()
            .limit(Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::per_minute(NonZeroU32::new(9).unwrap()),
            ))
            .redis(StoreOptions::new(conn).call_timeout(Duration::from_millis(30)))
            .failure_policy(policy)
            .build()
            .unwrap();
        proxy.blackhole();
        for _ in 0..calls {
            assert!(limiter.check(&[]).await.unwrap().degraded.is_some());
        }
        proxy.heal();
        counts.push(calls);
    }
    Some((counts[0], counts[1]))
}
