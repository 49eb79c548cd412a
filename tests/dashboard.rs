//! The Grafana dashboard (`dashboards/floodwall.json`) queries only metrics floodwall emits:
//! every primitive is driven here — the cache's Redis tier and a limiter whose Redis stops
//! included — under a recorder, and every metric name in the dashboard's queries must be
//! among the names recorded.

use std::collections::BTreeSet;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use floodwall::cache::TieredCache;
use floodwall::cache::redis::RedisTier;
use floodwall::core::StoreError;
use floodwall::core::redis::{RedisConnection, StoreOptions};
use floodwall::core::{Keyspace, ManualClock};
use floodwall::idempotency::{
    Abort, Begin, Fingerprint, Finish, Idempotency, MemoryStore, RunError, Store, Token,
};
use floodwall::limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};
use floodwall::resilience::bulkhead::Bulkhead;
use floodwall::resilience::circuit_breaker::CircuitBreaker;
use floodwall::resilience::retry::{Backoff, Retry};
use floodwall_testkit::RedisServer;
use metrics_util::debugging::DebuggingRecorder;

/// The metric names a PromQL expression reads (histogram suffixes folded to the metric).
fn queried(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("floodwall_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.push(name.to_owned());
        rest = &tail[end..];
    }
    names
}

async fn drive_every_primitive(server: &RedisServer) {
    let breaker = CircuitBreaker::builder().name("payments").build().unwrap();
    let _ = breaker.call(|| async { Ok::<_, ()>(()) }).await;
    breaker.force_open();
    let _ = breaker.call(|| async { Ok::<_, ()>(()) }).await;
    let retry = Retry::builder()
        .max_attempts(NonZeroU32::new(2).unwrap())
        .backoff(Backoff::Constant(Duration::from_millis(1)))
        .build();
    let _ = retry.call(|| async { Err::<(), _>("503") }).await;
    let bulkhead = Bulkhead::builder()
        .max_concurrent(NonZeroUsize::new(1).unwrap())
        .build();
    let held = bulkhead.try_acquire().unwrap();
    assert!(bulkhead.try_acquire().is_err());
    drop(held);

    let limiter = RateLimiter::builder()
        .limit(Limit::new(
            "api",
            Algorithm::Gcra,
            Quota::per_hour(NonZeroU32::new(1).unwrap()),
        ))
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = limiter.check(&[]).await.unwrap();
    }

    let conn = RedisConnection::standalone(server.url())
        .call_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let conn_for_errors = conn.clone();
    let cache = cache_on(&conn);
    let loads = (0..8).map(|_| {
        cache.get_or_load(1, || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, String>(Some(7))
        })
    });
    futures::future::join_all(loads).await;
    let _ = cache
        .get_or_load(1, || async { Ok::<_, String>(Some(7)) })
        .await;
    let clock = ManualClock::new();
    let stale: TieredCache<u32, u32> = TieredCache::builder()
        .ttl(Duration::from_secs(1))
        .fail_safe(Duration::from_secs(60), Duration::from_secs(1))
        .clock(clock.clone())
        .build();
    let _ = stale
        .get_or_load(1, || async { Ok::<_, String>(Some(7)) })
        .await;
    clock.advance(Duration::from_secs(2));
    let _ = stale
        .get_or_load(1, || async { Err::<Option<u32>, _>("down".to_string()) })
        .await;

    let idem = Idempotency::new(MemoryStore::new());
    for _ in 0..2 {
        idem.run("k", &Fingerprint::NONE, || async { Ok::<_, String>(1u8) })
            .await
            .unwrap();
    }
    let other = Fingerprint::of(b"other");
    let mismatch = idem
        .run("k", &other, || async { Ok::<_, String>(1u8) })
        .await;
    assert!(matches!(mismatch, Err(RunError::FingerprintMismatch)));
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, String>(2u8)
    };
    let (a, b) = tokio::join!(
        idem.run("busy", &Fingerprint::NONE, slow),
        idem.run("busy", &Fingerprint::NONE, slow)
    );
    let conflicted =
        |r: &Result<_, RunError<String>>| matches!(r, Err(RunError::InProgress { .. }));
    assert!(conflicted(&a) || conflicted(&b));
    // A store that claims but cannot finish: results unrecorded, claims unreleased.
    let broken = Idempotency::builder(Unfinishing(MemoryStore::new()))
        .lease(Duration::from_millis(30))
        .build()
        .unwrap();
    let kept = broken
        .run("u", &Fingerprint::NONE, || async { Ok::<_, String>(3u8) })
        .await;
    assert!(kept.unwrap().is_unrecorded());
    let failed = broken
        .run("v", &Fingerprint::NONE, || async { Err::<u8, _>("no") })
        .await;
    assert!(matches!(failed, Err(RunError::Unreleased { .. })));

    // A second instance finds the value in Redis.
    let second = cache_on(&conn);
    let found = second
        .get_or_load(1, || async { Ok::<_, String>(Some(8)) })
        .await;
    assert_eq!(found.unwrap(), Some(7));

    // A limiter on Redis whose server then stops: the failure policy decides, counted.
    let on_redis = RateLimiter::builder()
        .limit(Limit::new(
            "shared",
            Algorithm::Gcra,
            Quota::per_hour(NonZeroU32::new(9).unwrap()),
        ))
        .redis(StoreOptions::new(conn))
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap();
    let _ = on_redis.check(&[]).await.unwrap();
    server.command(&["SHUTDOWN", "NOSAVE"]).ok();
    let v = on_redis.check(&[]).await.unwrap();
    assert!(v.degraded.is_some());
    // And a cache whose Redis is gone answers from the loader, counting the error.
    let third = cache_on(&conn_for_errors);
    let _ = third
        .get_or_load(2, || async { Ok::<_, String>(Some(9)) })
        .await;
}

fn cache_on(conn: &RedisConnection) -> TieredCache<u32, u32> {
    TieredCache::builder()
        .ttl(Duration::from_secs(60))
        .redis(RedisTier::new(
            StoreOptions::new(conn.clone()).keyspace(Keyspace::new("dash", 1).unwrap()),
        ))
        .build()
}

/// Claims like a memory store; completing and releasing always fail.
struct Unfinishing(MemoryStore);

impl Store for Unfinishing {
    async fn begin(
        &self,
        key: &str,
        fp: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.0.begin(key, fp, lease).await
    }
    async fn complete(
        &self,
        _: &str,
        _: Token,
        _: &[u8],
        _: Duration,
    ) -> Result<Finish, StoreError> {
        Err(StoreError::unavailable("the store is down"))
    }
    async fn abort(&self, _: &str, _: Token, _: Abort<'_>) -> Result<Finish, StoreError> {
        Err(StoreError::unavailable("the store is down"))
    }
    async fn extend(&self, key: &str, token: Token, lease: Duration) -> Result<Finish, StoreError> {
        self.0.extend(key, token, lease).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_emitted_metrics() {
    let Some(server) = RedisServer::start_or_skip("the_dashboard_queries_only_emitted_metrics")
    else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");
    drive_every_primitive(&server).await;

    let emitted: BTreeSet<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, _)| key.key().name().to_owned())
        .collect();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/floodwall.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut wanted = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            wanted.extend(queried(target["expr"].as_str().unwrap()));
        }
    }
    let missing: Vec<&String> = wanted.iter().filter(|n| !emitted.contains(*n)).collect();
    println!(
        "dashboard: {} panels query {} metric names; {} emitted by this run; not emitted: {missing:?}",
        panels.len(),
        wanted.len(),
        emitted.len()
    );
    assert!(wanted.len() >= 20, "{wanted:?}");
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics floodwall never emitted: {missing:?}"
    );
}
