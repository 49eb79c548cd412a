//! The Redis tier on servers these tests start: one L2 read and one load for a stampede
//! (standalone and 3-master Cluster), one load across 4 instances with the lease and a
//! takeover when the leaseholder dies, garbage bytes as misses, write-through sharing, and
//! a blackholed Redis answered from the loader within the bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use floodwall_cache::TieredCache;
use floodwall_cache::redis::RedisTier;
use floodwall_core::Keyspace;
use floodwall_core::redis::RedisConnection;
use floodwall_testkit::{FaultProxy, RedisCluster, RedisServer};
use proptest::prelude::*;

type Cache = TieredCache<String, String>;

async fn connect(urls: &[String], cluster: bool) -> RedisConnection {
    if cluster {
        RedisConnection::cluster(urls.iter().cloned())
            .connect()
            .await
            .unwrap()
    } else {
        RedisConnection::standalone(urls[0].clone())
            .connect()
            .await
            .unwrap()
    }
}

fn cache(conn: RedisConnection, lease: Option<Duration>) -> Cache {
    let mut tier = RedisTier::new(conn, "cachetest", 1)
        .unwrap()
        .timeout(Duration::from_secs(5));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_loads_once_and_reads_redis_once_on_standalone() {
    let Some(server) =
        RedisServer::start_or_skip("a_stampede_loads_once_and_reads_redis_once_on_standalone")
    else {
        return;
    };
    stampede(vec![server.url()], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_loads_once_and_reads_redis_once_on_cluster() {
    let Some(cluster) =
        RedisCluster::start_or_skip("a_stampede_loads_once_and_reads_redis_once_on_cluster", 3)
    else {
        return;
    };
    stampede(cluster.urls(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lease_four_instances_load_once_and_a_dead_holder_is_taken_over() {
    let Some(server) = RedisServer::start_or_skip(
        "with_the_lease_four_instances_load_once_and_a_dead_holder_is_taken_over",
    ) else {
        return;
    };
    let urls = vec![server.url()];
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(cache(
            connect(&urls, false).await,
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
        "4 instances x 50 callers with the lease -> {} load(s) in total",
        loads.load(Ordering::SeqCst)
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // A leaseholder that dies mid-load (its loader never finishes): after the lease ends,
    // another instance takes it over and loads.
    let lease = Duration::from_millis(400);
    let a = cache(connect(&urls, false).await, Some(lease));
    let b = cache(connect(&urls, false).await, Some(lease));
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
                    let mut b = b"FWC\x01\x01".to_vec();
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
        .redis(RedisTier::new(conn, "cachetest", 1).unwrap().timeout(bound))
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
