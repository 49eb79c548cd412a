//! The invalidation bus's tasks are supervised. Killed (each panics at its next wake, as a bug
//! would), the subscriber takes L1 for down at once (nothing it might have missed is served
//! from L1) and is started again, subscribes, and invalidations reach L1 again; the heartbeat
//! is started again and keeps the subscriptions up. Alone in its binary: a kill reaches every
//! cache of the process.

use std::time::{Duration, Instant};

use floodwall_cache::TieredCache;
use floodwall_cache::redis::RedisTier;
use floodwall_core::Keyspace;
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_core::task::{self, Task};
use floodwall_testkit::RedisServer;

type Cache = TieredCache<String, String>;

async fn instance(url: &str, heartbeat: Duration) -> Cache {
    let conn = RedisConnection::standalone(url)
        .call_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    TieredCache::builder()
        .ttl(Duration::from_secs(600))
        .redis(
            RedisTier::new(
                StoreOptions::new(conn).keyspace(Keyspace::new("supervised-bus", 1).unwrap()),
            )
            .invalidation(true)
            .bus_heartbeat(heartbeat),
        )
        .build()
}

/// Waits until `c`'s L1 answers a hit for `key` again (its subscription is up), returning how
/// long that took.
async fn until_l1_hit(c: &Cache, key: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let hits = c.stats().hits;
        c.get(&key.to_string()).await;
        if c.stats().hits > hits {
            return started.elapsed();
        }
        assert!(started.elapsed() < bound, "L1 never trusted again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn until_restarted(kind: Task, from: u64, n: u64) -> u64 {
    let started = Instant::now();
    while task::restarts(kind) < from + n {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{kind:?} never restarted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task::restarts(kind) - from
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_bus_tasks_are_restarted_and_the_bus_recovers() {
    let Some(server) =
        RedisServer::start_or_skip("killed_bus_tasks_are_restarted_and_the_bus_recovers")
    else {
        return;
    };
    let heartbeat = Duration::from_millis(200);
    let a = instance(&server.url(), heartbeat).await;
    let b = instance(&server.url(), heartbeat).await;
    a.set("k".into(), "v1".into()).await;
    until_l1_hit(&a, "k", Duration::from_secs(5)).await;
    until_l1_hit(&b, "k", Duration::from_secs(5)).await;

    // The subscribers die at their next message (a heartbeat within 200 ms).
    let before = task::restarts(Task::CacheBus);
    task::kill(Task::CacheBus);
    let killed = Instant::now();
    let restarted = until_restarted(Task::CacheBus, before, 2).await;
    until_l1_hit(&a, "k", Duration::from_secs(5)).await;
    let trusted_after = killed.elapsed();
    // Invalidations flow again: b's write reaches a's L1.
    b.set("k".into(), "v2".into()).await;
    let started = Instant::now();
    while a.get(&"k".to_string()).await.as_deref() != Some("v2") {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no invalidation after the restart"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "bus subscribers killed: {restarted} restarted; L1 trusted again {:?} after the kill; \
         an invalidation reached the other instance in {:?}",
        trusted_after,
        started.elapsed()
    );

    // The heartbeats die at their next beat; restarted, they keep both subscriptions up:
    // over 5 heartbeats (silence is 3) L1 keeps answering hits.
    let before = task::restarts(Task::CacheHeartbeat);
    task::kill(Task::CacheHeartbeat);
    let restarted = until_restarted(Task::CacheHeartbeat, before, 2).await;
    let watched = Instant::now();
    let mut misses = 0;
    while watched.elapsed() < heartbeat * 5 {
        let hits = a.stats().hits;
        a.get(&"k".to_string()).await;
        if a.stats().hits == hits {
            misses += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "heartbeats killed: {restarted} restarted; over {:?} L1 missed {misses} time(s)",
        heartbeat * 5
    );
    assert_eq!(misses, 0, "the subscriptions stayed up");
}
