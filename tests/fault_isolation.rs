//! The family's Redis stores under a dead Cluster master: limiter, idempotency and cache keep
//! serving the keys of the healthy masters while the dead master's replica is promoted, then
//! serve its slots again. On testkit's 3 masters + 3 replicas, against servers the test
//! starts itself.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodwall::cache::TieredCache;
use floodwall::cache::redis::RedisTier;
use floodwall::core::Keyspace;
use floodwall::core::redis::{RedisConnection, StoreOptions};
use floodwall::idempotency::redis::RedisStore;
use floodwall::idempotency::{Fingerprint, Store};

use floodwall_testkit::RedisCluster;

/// Successes and failures of one store on one node's keys, before the kill, and after it.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Milliseconds after the kill of the first success that followed a failure (0: none).
    back_after_ms: AtomicU64,
}

impl Tally {
    fn record(&self, ok: bool, killed_at: &Option<Instant>) {
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            if let Some(at) = killed_at
                && self.failed.load(Ordering::Relaxed) > 0
            {
                let ms = at.elapsed().as_millis() as u64;
                let _ = self.back_after_ms.compare_exchange(
                    0,
                    ms.max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn share(&self) -> f64 {
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        100.0 * ok as f64 / (ok + failed).max(1) as f64
    }
}

struct Group {
    port: u16,
    keys: Vec<String>,
    limiter: Tally,
    idempotency: Tally,
    cache: Tally,
}

async fn run(require_full_coverage: bool) -> (Vec<Arc<Group>>, u16, Duration) {
    let test = format!("a_killed_master_full_coverage_{require_full_coverage}");
    let Some(mut cluster) =
        RedisCluster::start_with_replicas_or_skip(&test, 3, require_full_coverage)
    else {
        return (Vec::new(), 0, Duration::ZERO);
    };
    let conn = RedisConnection::cluster(cluster.urls())
        .connect()
        .await
        .unwrap();
    let limiter = common::wide_limiter(&conn);
    // Keys grouped by the master that owns them: the idempotency store and the cache
    // hash-tag by the key itself, the limiter by the key's shard, which is on the same
    // master unless its part of the slot space straddles two (such keys are left out).
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0..120 {
        let key = format!("k{i}");
        let port = cluster.node_for_key(&format!("{{{key}}}")).unwrap().port();
        let state = limiter.redis_location("api", &key).unwrap().key;
        if cluster.node_for_key(&state).unwrap().port() == port {
            by_port.entry(port).or_default().push(key);
        }
    }
    assert_eq!(by_port.len(), 3, "keys on every master");
    let victim = *by_port.keys().next().unwrap();
    let idem = RedisStore::new(StoreOptions::new(conn.clone()));
    let groups: Vec<Arc<Group>> = by_port
        .into_iter()
        .map(|(port, keys)| {
            Arc::new(Group {
                port,
                keys,
                limiter: Tally::default(),
                idempotency: Tally::default(),
                cache: Tally::default(),
            })
        })
        .collect();
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for group in &groups {
        // One cache per group, so its L2 counters are this node's alone.
        let cache: TieredCache<String, String> = TieredCache::builder()
            .redis(RedisTier::new(
                StoreOptions::new(conn.clone()).keyspace(Keyspace::new("fi-cache", 1).unwrap()),
            ))
            .build();
        for k in &group.keys[..5] {
            cache.set(k.clone(), "v".into()).await;
        }
        for w in 0..3 {
            let (group, limiter, idem, cache, stop, killed_at) = (
                group.clone(),
                limiter.clone(),
                idem.clone(),
                cache.clone(),
                stop.clone(),
                killed_at.clone(),
            );
            workers.push(tokio::spawn(async move {
                let fp = Fingerprint::of(b"op");
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let key = &group.keys[i % group.keys.len()];
                    i += 3;
                    let at = *killed_at.lock().unwrap();
                    let ok = limiter.check(&[("user", key.as_str())]).await.is_ok();
                    group.limiter.record(ok, &at);
                    let ok = idem.begin(key, &fp, Duration::from_secs(60)).await.is_ok();
                    group.idempotency.record(ok, &at);
                    let before = cache.stats().l2_errors;
                    cache.invalidate_local(key).await;
                    let _ = cache.get(key).await;
                    group.cache.record(cache.stats().l2_errors == before, &at);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill(victim);
    *killed_at.lock().unwrap() = Some(Instant::now());
    let failover = tokio::task::block_in_place(|| {
        cluster
            .wait_for_failover(victim, Duration::from_secs(30))
            .unwrap()
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    (groups, victim, failover)
}

fn report(groups: &[Arc<Group>], victim: u16, failover: Duration, coverage: &str) {
    println!(
        "cluster-require-full-coverage {coverage}: slots served again {failover:?} after the kill -9"
    );
    for g in groups {
        let role = if g.port == victim {
            "killed"
        } else {
            "healthy"
        };
        println!(
            "  master :{} ({role}): limiter {:.2}% of {}, idempotency {:.2}% of {}, cache L2 {:.2}% of {}; \
             first success after failures at +{} / +{} / +{} ms",
            g.port,
            g.limiter.share(),
            g.limiter.ok.load(Ordering::Relaxed) + g.limiter.failed.load(Ordering::Relaxed),
            g.idempotency.share(),
            g.idempotency.ok.load(Ordering::Relaxed) + g.idempotency.failed.load(Ordering::Relaxed),
            g.cache.share(),
            g.cache.ok.load(Ordering::Relaxed) + g.cache.failed.load(Ordering::Relaxed),
            g.limiter.back_after_ms.load(Ordering::Relaxed),
            g.idempotency.back_after_ms.load(Ordering::Relaxed),
            g.cache.back_after_ms.load(Ordering::Relaxed),
        );
    }
}

/// With `cluster-require-full-coverage no` (availability first): the keys of the two healthy
/// masters keep ≥ 99 % success in all three stores throughout; the killed master's keys serve
/// again once its replica is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_leaves_the_healthy_masters_serving() {
    let (groups, victim, failover) = run(false).await;
    if groups.is_empty() {
        return;
    }
    report(&groups, victim, failover, "no");
    for g in &groups {
        let tallies = [&g.limiter, &g.idempotency, &g.cache];
        if g.port == victim {
            for t in tallies {
                assert!(
                    t.failed.load(Ordering::Relaxed) > 0,
                    "the dead master's keys failed"
                );
                let back = t.back_after_ms.load(Ordering::Relaxed);
                assert!(back > 0, "the failed-over slots serve again");
            }
        } else {
            for t in tallies {
                assert!(
                    t.share() >= 99.0,
                    "healthy master :{} at {:.2}%",
                    g.port,
                    t.share()
                );
            }
        }
    }
}

/// With Redis's default `cluster-require-full-coverage yes`, every master refuses every key
/// (`CLUSTERDOWN`) from the moment the dead master is marked failed until its replica takes
/// over: the healthy masters' keys fail during that window too, and every master serves
/// again once the replica took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_full_coverage_required_the_healthy_masters_stop_during_failover() {
    let (groups, victim, failover) = run(true).await;
    if groups.is_empty() {
        return;
    }
    report(&groups, victim, failover, "yes");
    for g in &groups {
        for t in [&g.limiter, &g.idempotency, &g.cache] {
            // Every master — the healthy ones too — refused during the window ...
            assert!(
                t.failed.load(Ordering::Relaxed) > 0,
                "master :{} never refused",
                g.port
            );
            // ... and every one serves again once the replica took over.
            assert!(
                t.back_after_ms.load(Ordering::Relaxed) > 0,
                "master :{} serves again",
                g.port
            );
        }
    }
}
