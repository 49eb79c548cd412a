//! The stores over `rediss://` (a TLS-only `redis-server` with a throwaway CA) and through a
//! Sentinel failover, against servers the tests start themselves.

mod common;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use floodwall::cache::TieredCache;
use floodwall::cache::redis::RedisTier;
use floodwall::core::redis::{RedisConnection, StoreOptions};
use floodwall::core::{Keyspace, StoreError};
use floodwall::idempotency::redis::RedisStore;
use floodwall::idempotency::{Fingerprint, Idempotency, Outcome};
use floodwall::limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};
use floodwall_testkit::{RedisSentinel, RedisServer, TlsFiles};

async fn tls_conn(url: &str, files: &TlsFiles) -> RedisConnection {
    RedisConnection::standalone(url)
        .tls_ca_file(files.ca())
        .unwrap()
        .call_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// The core scenarios of the three stores, over TLS: 8 limiter instances admit exactly the
/// limit; 1000 concurrent cache misses load once; 200 concurrent duplicates on 4 idempotency
/// instances run once and the retry replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_keep_their_promises_over_tls() {
    let Some((files, server)) =
        RedisServer::start_tls_or_skip("the_stores_keep_their_promises_over_tls")
    else {
        return;
    };
    let url = server.tls_url();

    // Limiter: 8 instances x 50 tasks against a limit of 100.
    let admitted = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let limiter = RateLimiter::builder()
            .limit(Limit::new(
                "tls",
                Algorithm::Gcra,
                Quota::per_hour(NonZeroU32::new(100).unwrap()),
            ))
            .redis(StoreOptions::new(tls_conn(&url, &files).await))
            .failure_policy(FailurePolicy::FailClosed)
            .build()
            .unwrap();
        for _ in 0..50 {
            let (limiter, admitted) = (limiter.clone(), admitted.clone());
            tasks.push(tokio::spawn(async move {
                if limiter.check(&[]).await.unwrap().allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let admitted = admitted.load(Ordering::Relaxed);
    println!("over rediss://: 8 instances x 50 tasks admitted {admitted} of limit 100");
    assert_eq!(admitted, 100);

    // Cache: 1000 concurrent misses on a cold key, one load.
    let cache: TieredCache<String, String> = TieredCache::builder()
        .redis(RedisTier::new(
            StoreOptions::new(tls_conn(&url, &files).await)
                .keyspace(Keyspace::new("tls-cache", 1).unwrap()),
        ))
        .build();
    let loads = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (cache, loads) = (cache.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("cold".to_string(), || async move {
                    loads.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(Some("v".to_string()))
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some("v"));
    }
    let loads = loads.load(Ordering::Relaxed);
    println!(
        "over rediss://: 1000 callers -> {loads} load(s), {} L2 read(s)",
        cache.stats().l2_reads
    );
    assert_eq!(loads, 1);
    // Another instance reads it from Redis over TLS without loading.
    let other: TieredCache<String, String> = TieredCache::builder()
        .redis(RedisTier::new(
            StoreOptions::new(tls_conn(&url, &files).await)
                .keyspace(Keyspace::new("tls-cache", 1).unwrap()),
        ))
        .build();
    assert_eq!(other.get(&"cold".to_string()).await.as_deref(), Some("v"));

    // Idempotency: 200 duplicates on 4 instances, one execution.
    let runs = Arc::new(AtomicU32::new(0));
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(Idempotency::new(RedisStore::new(StoreOptions::new(
            tls_conn(&url, &files).await,
        ))));
    }
    let fp = Fingerprint::of(b"charge 42");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (idem, runs) = (instances[i % 4].clone(), runs.clone());
        tasks.push(tokio::spawn(async move {
            idem.run("charge-1", &fp, || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, String>("ch_1".to_string())
            })
            .await
        }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let again = instances[3]
        .run("charge-1", &fp, || async {
            Ok::<_, String>("ch_2".to_string())
        })
        .await
        .unwrap();
    let runs = runs.load(Ordering::SeqCst);
    println!(
        "over rediss://: 200 duplicates on 4 instances -> {runs} execution(s); retry {again:?}"
    );
    assert_eq!(runs, 1);
    assert!(matches!(again, Outcome::Replayed(ref v) if v == "ch_1"));
}

/// Without the CA the server's certificate is not trusted (a clear error, no connection);
/// `tls_insecure(true)` connects anyway, and a plain `redis://` to the TLS port fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_unless_told_otherwise() {
    let Some((_files, server)) =
        RedisServer::start_tls_or_skip("an_untrusted_certificate_is_refused_unless_told_otherwise")
    else {
        return;
    };
    let err = RedisConnection::standalone(server.tls_url())
        .connect()
        .await
        .unwrap_err();
    println!("no CA: {err}");
    assert!(matches!(
        err,
        StoreError::Unavailable { .. } | StoreError::Timeout { .. }
    ));
    let conn = RedisConnection::standalone(server.tls_url())
        .tls_insecure(true)
        .connect()
        .await
        .unwrap();
    conn.ping().await.unwrap();
    assert!(
        RedisConnection::standalone(server.url())
            .connect()
            .await
            .is_err()
    );
}

/// Kill the master of a Sentinel group: Sentinel promotes the replica and the store follows
/// it without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_follows_a_sentinel_failover() {
    let Some(mut group) = RedisSentinel::start_or_skip("a_store_follows_a_sentinel_failover")
    else {
        return;
    };
    let conn = RedisConnection::sentinel(RedisSentinel::MASTER, [group.sentinel_url()])
        .call_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let old = format!("127.0.0.1:{}", group.master_port());
    let new = format!("127.0.0.1:{}", group.replica_port());
    assert_eq!(&*conn.node_for(b"any"), old);
    let limiter = common::wide_limiter(&conn);
    let idem = RedisStore::new(StoreOptions::new(conn.clone()));
    assert!(limiter.check(&[("user", "u1")]).await.unwrap().allowed);

    group.kill_master();
    let killed = Instant::now();
    let mut failures = 0u32;
    let followed = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the store did not follow the failover in 30 s"
        );
        match limiter.check(&[("user", "u1")]).await {
            Ok(v) if v.degraded.is_none() && *conn.node_for(b"any") == *new => {
                break killed.elapsed();
            }
            Ok(_) => {}
            Err(_) => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "Sentinel failover: the limiter decided on the new master {new} {followed:?} after the \
         kill -9 of {old} ({failures} decisions failed closed meanwhile)"
    );
    use floodwall::idempotency::Store;
    let begun = idem
        .begin(
            "after-failover",
            &Fingerprint::of(b"x"),
            Duration::from_secs(5),
        )
        .await;
    assert!(begun.is_ok(), "{begun:?}");
}
