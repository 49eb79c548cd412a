//! The Redis tier on servers these tests start: one L2 read and one load for a stampede
//! (standalone and 3-master Cluster), one load across 4 instances with the lease and a
//! takeover when the leaseholder dies, garbage bytes as misses, write-through sharing, and
//! a blackholed Redis answered from the loader within the bound — for revalidating loads too,
//! with `FLUSHALL`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use floodwall_cache::TieredCache;
use floodwall_cache::redis::RedisTier;
use floodwall_core::Keyspace;
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_testkit::{FaultProxy, RedisServer, on_each_topology};
use proptest::prelude::*;

type Cache = TieredCache<String, String>;

mod common;
use common::{connect, wait_subscribed};

fn cache(conn: RedisConnection, lease: Option<Duration>) -> Cache {
    let mut tier = RedisTier::new(
        StoreOptions::new(conn)
            .keyspace(Keyspace::new("cachetest", 1).unwrap())
            .call_timeout(Duration::from_secs(5)),
    );
    if let Some(l) = lease {
        tier = tier.lease(l);
    }
    TieredCache::builder()
        .ttl(Duration::from_secs(60))
        .redis(tier)
        .build()
}

async fn stampede(urls: Vec<String>, cluster: bool) {
    let c = cache(connect(&urls, cluster).await, None);
    let loads = Arc::new(AtomicU32::new(0));
    let key = format!("stampede-{cluster}");
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (c, loads, key) = (c.clone(), loads.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_load(key, move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::io::Error>(Some("v1".to_string()))
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some("v1"));
    }
    let s = c.stats();
    println!(
        "{}: 1000 callers -> {} load(s), {} L2 read(s)",
        if cluster { "cluster" } else { "standalone" },
        loads.load(Ordering::SeqCst),
        s.l2_reads
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(s.l2_reads, 1);
    // Another instance finds it in Redis without loading.
    let other = cache(connect(&urls, cluster).await, None);
    let v = other
        .get_or_load(key, || async {
            Ok::<_, std::io::Error>(Some("not me".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("v1"));
    assert_eq!(other.stats().l2_hits, 1);
}

/// On a standalone server and on a 3-master Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_loads_once_and_reads_redis_once() {
    on_each_topology("a_stampede_loads_once_and_reads_redis_once", |t| {
        stampede(t.urls, t.cluster)
    })
    .await;
}

/// On a standalone server and on a 3-master Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lease_four_instances_load_once_and_a_dead_holder_is_taken_over() {
    on_each_topology(
        "with_the_lease_four_instances_load_once_and_a_dead_holder_is_taken_over",
        |t| lease(t.urls, t.cluster),
    )
    .await;
}

async fn lease(urls: Vec<String>, cluster: bool) {
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(cache(
            connect(&urls, cluster).await,
            Some(Duration::from_secs(5)),
        ));
    }
    let loads = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (c, loads) = (instances[i % 4].clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_load("leased".to_string(), move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, std::io::Error>(Some("once".to_string()))
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some("once"));
    }
    println!(
        "{}: 4 instances x 50 callers with the lease -> {} load(s) in total",
        if cluster { "cluster" } else { "standalone" },
        loads.load(Ordering::SeqCst)
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // A leaseholder that dies mid-load (its loader never finishes): after the lease ends,
    // another instance takes it over and loads.
    let lease = Duration::from_millis(400);
    let a = cache(connect(&urls, cluster).await, Some(lease));
    let b = cache(connect(&urls, cluster).await, Some(lease));
    let stuck = tokio::spawn({
        let a = a.clone();
        async move {
            a.get_or_load("orphan".to_string(), || async {
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(None)
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // A holds the lease now
    let started = Instant::now();
    let v = b
        .get_or_load("orphan".to_string(), || async {
            Ok::<_, std::io::Error>(Some("from b".to_string()))
        })
        .await
        .unwrap();
    let waited = started.elapsed();
    println!("leaseholder dead: the other instance loaded after {waited:?} (lease {lease:?})");
    assert_eq!(v.as_deref(), Some("from b"));
    assert!(waited >= lease - Duration::from_millis(100), "{waited:?}");
    assert!(waited < lease + Duration::from_secs(2), "{waited:?}");
    stuck.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_writes_through_and_invalidate_deletes_in_redis() {
    let Some(server) =
        RedisServer::start_or_skip("set_writes_through_and_invalidate_deletes_in_redis")
    else {
        return;
    };
    let urls = vec![server.url()];
    let a = cache(connect(&urls, false).await, None);
    let b = cache(connect(&urls, false).await, None);
    a.set("shared".to_string(), "from a".to_string()).await;
    let never = || async { Ok::<_, std::io::Error>(Some("loader".to_string())) };
    assert_eq!(
        b.get_or_load("shared".to_string(), never)
            .await
            .unwrap()
            .as_deref(),
        Some("from a")
    );
    a.invalidate(&"shared".to_string()).await;
    b.invalidate_local(&"shared".to_string()).await;
    assert_eq!(
        b.get_or_load("shared".to_string(), never)
            .await
            .unwrap()
            .as_deref(),
        Some("loader")
    );
}

#[test]
fn garbage_bytes_in_redis_are_a_miss_never_a_panic() {
    let Some(server) =
        RedisServer::start_or_skip("garbage_bytes_in_redis_are_a_miss_never_a_panic")
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let conn = rt.block_on(connect(&[server.url()], false));
    let key = Keyspace::new("cachetest", 1)
        .unwrap()
        .key("garbage")
        .build();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                // Well-formed headers with garbage after them.
                prop::collection::vec(any::<u8>(), 0..40).prop_map(|tail| {
                    // Format 1, codec 2 (binary, the default): the payload decoder sees garbage.
                    let mut b = b"FWC\x01\x02".to_vec();
                    b.extend_from_slice(&u64::MAX.to_be_bytes());
                    b.extend_from_slice(&u64::MAX.to_be_bytes());
                    b.extend_from_slice(&u64::MAX.to_be_bytes());
                    b.extend(tail);
                    b
                }),
            ],
            |bytes| {
                rt.block_on(async {
                    let _: () = conn
                        .query(redis::cmd("SET").arg(&key).arg(&bytes))
                        .await
                        .unwrap();
                    let c = cache(conn.clone(), None);
                    let v = c
                        .get_or_load("garbage".to_string(), || async {
                            Ok::<_, std::io::Error>(Some("loaded".to_string()))
                        })
                        .await
                        .unwrap();
                    // Garbage is a miss: the loader answers (unless the bytes happen to be a valid
                    // envelope of a JSON string, which random bytes are not).
                    prop_assert_eq!(v.as_deref(), Some("loaded"));
                    prop_assert!(c.stats().l2_decode_errors + c.stats().l2_hits <= 1);
                    Ok(())
                })
            },
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_is_answered_from_the_loader_within_the_bound() {
    let Some(server) = RedisServer::start_or_skip(
        "a_blackholed_redis_is_answered_from_the_loader_within_the_bound",
    ) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = RedisConnection::standalone(proxy.redis_url())
        .connect()
        .await
        .unwrap();
    let bound = Duration::from_millis(50);
    let c: Cache = TieredCache::builder()
        .redis(RedisTier::new(
            StoreOptions::new(conn)
                .keyspace(Keyspace::new("cachetest", 1).unwrap())
                .call_timeout(bound),
        ))
        .build();
    c.get_or_load("warm".to_string(), || async {
        Ok::<_, std::io::Error>(Some("w".to_string()))
    })
    .await
    .unwrap();
    proxy.blackhole();
    let mut slowest_late = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        let v = c
            .get_or_load(format!("k{i}"), move || async move {
                Ok::<_, std::io::Error>(Some(format!("v{i}")))
            })
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(v, Some(format!("v{i}")));
        // One bounded read (the write is skipped once the read failed).
        assert!(took <= bound + Duration::from_millis(50), "took {took:?}");
        if i >= 6 {
            slowest_late = slowest_late.max(took);
        }
    }
    println!(
        "blackholed Redis: every get_or_load within {bound:?} + 50 ms; with the breaker open at most {slowest_late:?}"
    );
    assert!(slowest_late < Duration::from_millis(5), "{slowest_late:?}");
    assert!(c.stats().l2_errors >= 5);
}

/// Revalidating loads (`get_or_revalidate`, the HTTP cache's engine) on Redis's failures:
/// an entry one instance stored is another's to revalidate; after `FLUSHALL` it is simply
/// gone (the loader sees no entry, nothing old is served); with Redis blackholed, every call
/// is answered by its loader within one call bound (no write after a failed read), and in
/// microseconds once the node's gate is open; a stored entry still stands in for a failed load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidating_loads_survive_flushall_and_a_blackholed_redis() {
    use floodwall_cache::{Lifetimes, Revalidated, Revalidation, Served};
    let Some(server) =
        RedisServer::start_or_skip("revalidating_loads_survive_flushall_and_a_blackholed_redis")
    else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let bound = Duration::from_millis(50);
    let instance = |url: String| async move {
        let conn = RedisConnection::standalone(url).connect().await.unwrap();
        let c: Cache = TieredCache::builder()
            .ttl(Duration::from_secs(600))
            .redis(RedisTier::new(
                StoreOptions::new(conn)
                    .keyspace(Keyspace::new("cachetest-reval", 1).unwrap())
                    .call_timeout(bound),
            ))
            .build();
        c
    };
    let life = Lifetimes {
        fresh: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::from_secs(60),
    };
    let any = |_: &String| true;
    let asked = Revalidation::default();
    let (a, b) = (
        instance(proxy.redis_url()).await,
        instance(server.url()).await,
    );
    let stored = a
        .get_or_revalidate("k".to_string(), any, asked, |old| async move {
            assert_eq!(old, None);
            Revalidated::Stored("v1".to_string(), life, ())
        })
        .await;
    assert!(matches!(stored, Served::Loaded(())));
    let seen = b
        .get_or_revalidate("k".to_string(), any, asked, |old| async move {
            assert_eq!(
                old.as_deref(),
                Some("v1"),
                "B revalidates A's entry from Redis"
            );
            Revalidated::Unchanged(old.unwrap(), life, ())
        })
        .await;
    assert!(matches!(seen, Served::Loaded(())));

    server.command(&["FLUSHALL"]).unwrap();
    let c = instance(server.url()).await;
    let after = c
        .get_or_revalidate("k".to_string(), any, asked, |old| async move {
            assert_eq!(old, None, "after FLUSHALL no entry is left to revalidate");
            Revalidated::Failed(())
        })
        .await;
    assert!(
        matches!(after, Served::Loaded(())),
        "nothing old stands in after FLUSHALL: {after:?}"
    );

    proxy.blackhole();
    let mut slowest_late = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        let served = a
            .get_or_revalidate(format!("b{i}"), any, asked, move |old| async move {
                assert_eq!(old, None);
                Revalidated::Stored(format!("x{i}"), life, i)
            })
            .await;
        let took = started.elapsed();
        assert!(matches!(served, Served::Loaded(n) if n == i));
        // One bounded read; the write is skipped once the read failed.
        assert!(took <= bound + Duration::from_millis(50), "took {took:?}");
        if i >= 6 {
            slowest_late = slowest_late.max(took);
        }
    }
    // A's own entry, in its L1, stands in for a failed load while Redis is gone.
    let stand_in = a
        .get_or_revalidate("k".to_string(), any, asked, |old| async move {
            assert_eq!(old.as_deref(), Some("v1"));
            Revalidated::Failed(())
        })
        .await;
    println!(
        "revalidating loads, blackholed Redis: every call within {bound:?} + 50 ms; with the gate open at most {slowest_late:?}; a failed load answered by {stand_in:?}"
    );
    assert!(slowest_late < Duration::from_millis(5), "{slowest_late:?}");
    assert!(matches!(stand_in, Served::StaleIfError(ref v, ()) if v == "v1"));
}

async fn subscribed(conn: RedisConnection, pubsub: String) -> Cache {
    let tier = RedisTier::new(
        StoreOptions::new(conn)
            .keyspace(Keyspace::new("cachetest-inval", 1).unwrap())
            .call_timeout(Duration::from_secs(5)),
    )
    .invalidation_through(connect(&[pubsub], false).await);
    TieredCache::builder()
        .ttl(Duration::from_secs(600))
        .redis(tier)
        .build()
}

/// Polls `b.get(key)` until it answers `want`; returns how long that took.
async fn until(b: &Cache, key: &str, want: Option<&str>, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if b.get(&key.to_string()).await.as_deref() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{key}: still not {want:?} after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn invalidation(urls: Vec<String>, cluster: bool) {
    let a = subscribed(connect(&urls, cluster).await, urls[0].clone()).await;
    let b = subscribed(connect(&urls, cluster).await, urls[urls.len() - 1].clone()).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    let key = format!("profile-{cluster}");
    a.set(key.clone(), "v1".into()).await;
    assert_eq!(b.get(&key).await.as_deref(), Some("v1"));
    let before = b.stats().hits;
    assert_eq!(b.get(&key).await.as_deref(), Some("v1"));
    assert_eq!(b.stats().hits, before + 1, "B serves it from its L1");

    let bound = Duration::from_millis(500);
    a.set(key.clone(), "v2".into()).await;
    let took = until(&b, &key, Some("v2"), bound).await;
    println!(
        "{}: B stopped serving the old value {took:?} after A's set (bound {bound:?})",
        if cluster { "cluster" } else { "standalone" }
    );
    a.invalidate(&key).await;
    let took = until(&b, &key, None, bound).await;
    println!(
        "{}: B dropped the key {took:?} after A's invalidate",
        if cluster { "cluster" } else { "standalone" }
    );
    assert!(a.stats().invalidations_sent >= 3);
}

/// On a standalone server and on a 3-master Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_and_invalidate_reach_other_instances() {
    on_each_topology("set_and_invalidate_reach_other_instances", |t| {
        invalidation(t.urls, t.cluster)
    })
    .await;
}

/// B's subscription is cut (and cannot come back for a while): B stops using its L1, so an
/// invalidation it misses meanwhile never lets it serve the old value; back up, it starts L1
/// afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_never_serves_a_value_it_may_have_missed() {
    let Some(server) =
        RedisServer::start_or_skip("a_lost_subscription_never_serves_a_value_it_may_have_missed")
    else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let a = subscribed(connect(&[server.url()], false).await, server.url()).await;
    let b = subscribed(connect(&[server.url()], false).await, proxy.redis_url()).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    a.set("k".into(), "old".into()).await;
    assert_eq!(b.get(&"k".to_string()).await.as_deref(), Some("old"));

    let drops = b.stats().invalidations_received;
    proxy.refuse_new();
    proxy.reset_all();
    assert!(proxy.wait_closed(Duration::from_secs(2)).await);
    // B notices the loss (its Drop::All) ...
    let started = Instant::now();
    while b.stats().invalidations_received == drops {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // ... and A's change, whose message B cannot receive, is still what B answers.
    a.set("k".into(), "new".into()).await;
    assert_eq!(
        b.get(&"k".to_string()).await.as_deref(),
        Some("new"),
        "no stale L1 while unsubscribed"
    );
    a.invalidate(&"k".to_string()).await;
    assert_eq!(b.get(&"k".to_string()).await, None);

    // Back up: B resubscribes, clears L1, and uses it again.
    proxy.heal();
    let received = b.stats().invalidations_received;
    let started = Instant::now();
    while b.stats().invalidations_received == received {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never resubscribed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.set("k".into(), "newest".into()).await;
    until(&b, "k", Some("newest"), Duration::from_millis(500)).await;
    let hits = b.stats().hits;
    b.get(&"k".to_string()).await;
    assert_eq!(b.stats().hits, hits + 1, "L1 in use again");
}

/// A namespace bump drops every key of the namespace on every instance, and no old-version
/// value is ever returned afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_bump_invalidates_every_key_everywhere() {
    let Some(server) =
        RedisServer::start_or_skip("a_namespace_bump_invalidates_every_key_everywhere")
    else {
        return;
    };
    let a = subscribed(connect(&[server.url()], false).await, server.url()).await;
    let b = subscribed(connect(&[server.url()], false).await, server.url()).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    for i in 0..20 {
        a.set(format!("n{i}"), format!("old{i}")).await;
        assert_eq!(b.get(&format!("n{i}")).await, Some(format!("old{i}")));
    }
    a.invalidate_namespace().await.unwrap();
    for i in 0..20 {
        until(&b, &format!("n{i}"), None, Duration::from_millis(500)).await;
        let v = a
            .get_or_load(format!("n{i}"), move || async move {
                Ok::<_, std::io::Error>(Some(format!("new{i}")))
            })
            .await
            .unwrap();
        assert_eq!(v, Some(format!("new{i}")));
        assert_eq!(b.get(&format!("n{i}")).await, Some(format!("new{i}")));
    }
    // An instance without pub/sub sees the bump within its generation check interval.
    let c: Cache = TieredCache::builder()
        .redis(
            RedisTier::new(
                StoreOptions::new(connect(&[server.url()], false).await)
                    .keyspace(Keyspace::new("cachetest-inval", 1).unwrap()),
            )
            .generation_check(Duration::from_millis(100)),
        )
        .build();
    assert_eq!(c.get(&"n0".to_string()).await, Some("new0".to_string()));
    a.invalidate_namespace().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        c.get_or_load("n0".to_string(), || async { Ok::<_, std::io::Error>(None) })
            .await
            .unwrap(),
        None
    );
}

/// A deploy with a new value layout bumps the schema version: it never reads the old bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_schema_version_never_reads_old_bytes() {
    let Some(server) = RedisServer::start_or_skip("a_new_schema_version_never_reads_old_bytes")
    else {
        return;
    };
    let v1: TieredCache<String, String> = TieredCache::builder()
        .redis(RedisTier::new(
            StoreOptions::new(connect(&[server.url()], false).await)
                .keyspace(Keyspace::new("schema", 1).unwrap()),
        ))
        .build();
    v1.set("u1".into(), "name only".into()).await;
    // Version 2 stores a different type under the same logical key.
    let v2: TieredCache<String, (String, u32)> = TieredCache::builder()
        .redis(RedisTier::new(
            StoreOptions::new(connect(&[server.url()], false).await)
                .keyspace(Keyspace::new("schema", 2).unwrap()),
        ))
        .build();
    let got = v2
        .get_or_load("u1".into(), || async {
            Ok::<_, std::io::Error>(Some(("name".to_string(), 42)))
        })
        .await
        .unwrap();
    assert_eq!(got, Some(("name".to_string(), 42)));
    assert_eq!(
        v2.stats().l2_decode_errors,
        0,
        "the old bytes were never even read"
    );
    assert_eq!(
        v1.get(&"u1".to_string()).await.as_deref(),
        Some("name only")
    );
}

/// A node gate that the test opens by hand (other keys' failures, in production).
/// The node's gate opens while this instance holds a key's load lease: releasing the lease it
/// holds is never refused, so other instances need not wait out the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_is_released_even_with_the_gate_open() {
    let Some(server) =
        RedisServer::start_or_skip("a_held_lease_is_released_even_with_the_gate_open")
    else {
        return;
    };
    let gate = Arc::new(floodwall_core::health::ManualGate::default());
    let g = gate.clone();
    let c: Cache = TieredCache::builder()
        .redis(
            RedisTier::new(
                StoreOptions::new(connect(&[server.url()], false).await)
                    .keyspace(Keyspace::new("cachetest-lease", 1).unwrap())
                    .health_gate(move |_: &str| {
                        g.clone() as Arc<dyn floodwall_core::health::HealthGate>
                    }),
            )
            .lease(Duration::from_secs(30)),
        )
        .build();
    let lease_key = Keyspace::new("cachetest-lease", 1)
        .unwrap()
        .key("k")
        .part_u64(0)
        .part("lease")
        .build();
    let opener = gate.clone();
    let probe = ::redis::Client::open(server.url()).unwrap();
    let held_key = lease_key.as_str().to_owned();
    let v = c
        .get_or_load("k".to_string(), move || async move {
            let mut conn = probe.get_multiplexed_async_connection().await.unwrap();
            let held: i64 = ::redis::cmd("EXISTS")
                .arg(&held_key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(held, 1, "the lease is held while loading");
            // Mid-load, the node's gate opens.
            opener.set_open(true);
            Ok::<_, std::io::Error>(Some("v".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    assert_eq!(
        server.command(&["EXISTS", lease_key.as_str()]).unwrap(),
        "0",
        "released despite the open gate"
    );
}

/// Redis (store and invalidation bus alike) is blackholed for 15 s while the loader fails
/// too: calls time out, the bus heartbeat finds the subscription silent and takes it for down,
/// so L1 answers no hits — yet the fail-safe still serves the last good value to every call
/// within `max_stale`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_redis_outage_the_fail_safe_serves_the_last_good_value() {
    let Some(server) = RedisServer::start_or_skip(
        "during_a_redis_outage_the_fail_safe_serves_the_last_good_value",
    ) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = RedisConnection::standalone(proxy.redis_url())
        .call_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let tier = RedisTier::new(
        StoreOptions::new(conn.clone()).keyspace(Keyspace::new("cachetest-outage", 1).unwrap()),
    )
    .invalidation_through(conn);
    let c: Cache = TieredCache::builder()
        .ttl(Duration::from_secs(1))
        .fail_safe(Duration::from_secs(60), Duration::from_millis(500))
        .redis(tier)
        .build();
    wait_subscribed(&c).await;
    let v = c
        .get_or_load("k".to_string(), || async {
            Ok::<_, String>(Some("good".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("good"));

    let loads = Arc::new(AtomicU32::new(0));
    let drops = c.stats().invalidations_received;
    proxy.blackhole();
    let outage = Duration::from_secs(15);
    let started = Instant::now();
    let (mut calls, mut served, mut slowest) = (0u32, 0u32, Duration::ZERO);
    while started.elapsed() < outage {
        let l = loads.clone();
        let t = Instant::now();
        let r = c
            .get_or_load("k".to_string(), move || async move {
                l.fetch_add(1, Ordering::SeqCst);
                Err::<Option<String>, _>("the database is down too".to_string())
            })
            .await;
        slowest = slowest.max(t.elapsed());
        calls += 1;
        if matches!(&r, Ok(Some(v)) if v == "good") {
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        c.stats().invalidations_received > drops,
        "the bus noticed the outage (L1 distrusted)"
    );
    let share = f64::from(served) / f64::from(calls) * 100.0;
    println!(
        "15 s blackhole, loader failing: last good value served to {served} of {calls} calls ({share:.1} %), {} loader calls, slowest answer {slowest:?}",
        loads.load(Ordering::SeqCst)
    );
    assert_eq!(
        served, calls,
        "every call within max_stale got the last good value"
    );
    proxy.heal();
}

/// Another instance's load lease that never ends — a lease key without a TTL, or a crashed
/// holder's lease set for 8 s — is waited on no longer than this cache's `hard_timeout`
/// (500 ms) and its own lease length (2 s): every caller answers within them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_lease_is_waited_no_longer_than_the_cache_allows() {
    let Some(server) =
        RedisServer::start_or_skip("a_stuck_lease_is_waited_no_longer_than_the_cache_allows")
    else {
        return;
    };
    let lease = Duration::from_secs(2);
    let hard = Duration::from_millis(500);
    let conn = connect(&[server.url()], false).await;
    let build = |hard_timeout: Option<Duration>| {
        let tier = RedisTier::new(
            StoreOptions::new(conn.clone()).keyspace(Keyspace::new("cachetest-stuck", 1).unwrap()),
        )
        .lease(lease);
        let b = TieredCache::builder()
            .ttl(Duration::from_secs(60))
            .redis(tier);
        match hard_timeout {
            Some(h) => b.hard_timeout(h).build(),
            None => b.build(),
        }
    };
    // A holds the lease of "k1" and hangs; its lease key is then left without a TTL.
    let a: Cache = build(None);
    let hung = tokio::spawn({
        let a = a.clone();
        async move {
            a.get_or_load("k1".to_string(), || {
                std::future::pending::<Result<Option<String>, String>>()
            })
            .await
        }
    });
    let lease_key = loop {
        let keys = server.command(&["KEYS", "*k1*lease*"]).unwrap();
        if let Some(k) = keys.lines().next().filter(|k| !k.is_empty()) {
            break k.to_string();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    server.command(&["PERSIST", &lease_key]).unwrap();
    // Crashed holders' leases for "k2" and "k3", set for 8 s.
    for k in ["k2", "k3"] {
        server
            .command(&[
                "SET",
                &lease_key.replace("k1", k),
                "crashed-holder",
                "PX",
                "8000",
            ])
            .unwrap();
    }

    for (key, hard_timeout, bound) in [
        ("k1", Some(hard), hard),
        ("k2", Some(hard), hard),
        ("k3", None, lease),
    ] {
        let b: Cache = build(hard_timeout);
        let mut callers = Vec::new();
        for _ in 0..10 {
            let b = b.clone();
            callers.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = b
                    .get_or_load(key.to_string(), || async {
                        Ok::<_, String>(Some("b".to_string()))
                    })
                    .await;
                (t.elapsed(), r.is_ok())
            }));
        }
        let mut max = Duration::ZERO;
        for c in callers {
            let (took, _) = c.await.unwrap();
            max = max.max(took);
        }
        println!(
            "{key} ({}): 10 callers, slowest answered after {max:?} (bound {bound:?})",
            if key == "k1" {
                "lease key without TTL"
            } else {
                "crashed holder, 8 s lease"
            }
        );
        assert!(max <= bound + Duration::from_millis(150), "{key}: {max:?}");
    }
    hung.abort();
}

/// Redis loses everything (`FLUSHALL`) while A and B run; C starts afterwards. A puts its
/// generation back at its next check, and A's `invalidate_namespace` then reaches A, B and C:
/// none of them serves the old value afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flushall_an_invalidation_still_reaches_every_instance() {
    let Some(server) =
        RedisServer::start_or_skip("after_a_flushall_an_invalidation_still_reaches_every_instance")
    else {
        return;
    };
    let a = subscribed(connect(&[server.url()], false).await, server.url()).await;
    let b = subscribed(connect(&[server.url()], false).await, server.url()).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    for _ in 0..3 {
        a.invalidate_namespace().await.unwrap();
    }
    let k = "k".to_string();
    a.set(k.clone(), "old".into()).await;
    until(&b, "k", Some("old"), Duration::from_millis(500)).await;

    server.command(&["FLUSHALL"]).unwrap();
    let c = subscribed(connect(&[server.url()], false).await, server.url()).await;
    wait_subscribed(&c).await;
    // C's own key: a write publishes an invalidation of its key to the others.
    c.set("kc".into(), "old".into()).await;
    let keys = [("A", &a, "k"), ("B", &b, "k"), ("C", &c, "kc")];
    for (name, x, key) in keys {
        assert_eq!(
            x.get(&key.to_string()).await.as_deref(),
            Some("old"),
            "{name} serves the old value"
        );
    }
    // A's next generation check (every second) finds the generation gone and puts its own back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.get(&"probe".to_string()).await;
    let gen_key = server.command(&["KEYS", "*~generation*"]).unwrap();
    let stored: u64 = server
        .command(&["GET", gen_key.trim()])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(stored > 1_000_000, "A restored its generation ({stored})");

    a.invalidate_namespace().await.unwrap();
    let bound = Duration::from_millis(500);
    let mut took = Vec::new();
    for (name, x, key) in keys {
        took.push((name, until(x, key, None, bound).await));
    }
    println!(
        "FLUSHALL, then invalidate_namespace on A: the old value gone on {took:?} (bus bound {bound:?}); generation restored to {stored}"
    );
}

/// The subscription's connection is blackholed (open, but nothing gets through): the bus
/// heartbeat (200 ms here) finds it silent within 3 heartbeats, takes it for down (no L1
/// hits), and subscribes again once the path heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_subscription_is_detected_by_the_heartbeat() {
    let Some(server) =
        RedisServer::start_or_skip("a_blackholed_subscription_is_detected_by_the_heartbeat")
    else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let heartbeat = Duration::from_millis(200);
    let tier = RedisTier::new(
        StoreOptions::new(connect(&[server.url()], false).await)
            .keyspace(Keyspace::new("cachetest-hb", 1).unwrap()),
    )
    .invalidation_through(
        RedisConnection::standalone(proxy.redis_url())
            .call_timeout(Duration::from_millis(100))
            .connect()
            .await
            .unwrap(),
    )
    .bus_heartbeat(heartbeat);
    let c: Cache = TieredCache::builder()
        .ttl(Duration::from_secs(60))
        .redis(tier)
        .build();
    wait_subscribed(&c).await;
    c.set("k".into(), "v".into()).await;
    // L1 in use before the fault (on a busy machine the first heartbeats may come late and
    // the subscription flap once: wait until L1 answers).
    let ready = Instant::now();
    loop {
        let hits = c.stats().hits;
        assert_eq!(c.get(&"k".to_string()).await.as_deref(), Some("v"));
        if c.stats().hits == hits + 1 {
            break;
        }
        assert!(ready.elapsed() < Duration::from_secs(5), "L1 never in use");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let received = c.stats().invalidations_received;
    proxy.blackhole();
    let started = Instant::now();
    while c.stats().invalidations_received == received {
        assert!(started.elapsed() < Duration::from_secs(5), "never detected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let detected = started.elapsed();
    let hits = c.stats().hits;
    assert_eq!(c.get(&"k".to_string()).await.as_deref(), Some("v"));
    assert_eq!(c.stats().hits, hits, "no L1 hits while the bus is down");

    proxy.heal();
    let received = c.stats().invalidations_received;
    let healed = Instant::now();
    while c.stats().invalidations_received == received {
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "never resubscribed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let back = healed.elapsed();
    c.get(&"k".to_string()).await;
    let hits = c.stats().hits;
    c.get(&"k".to_string()).await;
    assert_eq!(c.stats().hits, hits + 1, "L1 in use again");
    println!(
        "blackholed subscription detected after {detected:?} (bound 3 x {heartbeat:?} = {:?}); subscribed again {back:?} after the path healed",
        heartbeat * 3
    );
    assert!(
        detected <= heartbeat * 3 + Duration::from_millis(300),
        "{detected:?}"
    );
}

/// On a 3-master + 3-replica Cluster, the node the invalidation bus subscribes to is killed
/// (`kill -9`): the subscription is lost, made again on another node (classic pub/sub reaches
/// every node), and L1 is back on; once the Cluster has failed over, invalidations flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_moves_to_another_node_when_its_node_is_killed() {
    let Some(mut cluster) = floodwall_testkit::RedisCluster::start_with_replicas_or_skip(
        "the_bus_moves_to_another_node_when_its_node_is_killed",
        3,
        false,
    ) else {
        return;
    };
    let urls = cluster.urls();
    let make = |conn: RedisConnection| -> Cache {
        TieredCache::builder()
            .ttl(Duration::from_secs(600))
            .redis(
                RedisTier::new(
                    StoreOptions::new(conn).keyspace(Keyspace::new("cachetest-bus", 1).unwrap()),
                )
                .invalidation(true),
            )
            .build()
    };
    let a = make(connect(&urls, true).await);
    let b = make(connect(&urls, true).await);
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    // The bus subscribes on the first seed node that answers: the first one.
    let port = cluster.nodes()[0].port();
    let received = b.stats().invalidations_received;
    cluster.kill(port);
    let killed = Instant::now();
    // Down (counted), then subscribed again elsewhere (counted).
    while b.stats().invalidations_received < received + 2 {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the bus never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let l1_back = killed.elapsed();
    assert!(
        l1_back < Duration::from_secs(1),
        "bus back after {l1_back:?} (stated: 1 s)"
    );
    let failover = cluster
        .wait_for_failover(port, Duration::from_secs(30))
        .unwrap();
    let key = "bus-key".to_string();
    let bound = Duration::from_secs(2);
    let started = Instant::now();
    loop {
        a.set(key.clone(), "v1".into()).await;
        if b.get(&key).await.as_deref() == Some("v1") {
            break;
        }
        assert!(started.elapsed() < bound, "writes never reached B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.set(key.clone(), "v2".into()).await;
    let took = until(&b, &key, Some("v2"), Duration::from_millis(500)).await;
    println!(
        "bus node :{port} killed: L1 back on {l1_back:?} after the kill (subscribed on another node; bound 1 s); \
         Cluster failed over {failover:?} after that; an invalidation then reached B in {took:?}"
    );
}
