//! A limiter with one, two or three limits on a 3 + 3 Redis Cluster, batching on (the
//! default), while one master is hung (`SIGSTOP`) or killed (`kill -9`): every decision whose
//! keys all live on the healthy masters is served (≥ 99 %) throughout the fault and the
//! failover. A node's failure is its own: nothing on the several-limit path (the concurrent
//! calls, the give-back after a denial or a failure) may charge it to a healthy node's gate,
//! and no call to a healthy master waits on the dead one's connection or on a slot-table read.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use floodwall::core::redis::{RedisConnection, StoreOptions};
use floodwall::limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};
use floodwall_testkit::RedisCluster;

/// The limits' names and the request fields they are keyed by.
const FIELDS: [&str; 3] = ["user", "ip", "tenant"];

/// Callers per limiter.
const WORKERS: usize = 8;

/// A limiter with `n` limits so wide that every decision is admitted; fails closed, so a
/// decision that is not served is an error the test counts.
fn limiter(conn: &RedisConnection, n: usize) -> RateLimiter {
    let mut b = RateLimiter::builder();
    for (i, field) in FIELDS.iter().take(n).enumerate() {
        // GCRA, fixed window and sliding window counter: the batch script's three shapes.
        let algorithm = [
            Algorithm::Gcra,
            Algorithm::FixedWindow,
            Algorithm::SlidingCounter,
        ][i];
        let quota = Quota::per_second(NonZeroU32::new(1_000_000).unwrap());
        b = b.limit(Limit::new(field, algorithm, quota).keyed_by(field));
    }
    b.redis(StoreOptions::new(conn.clone()))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_refusal: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn share(&self) -> (f64, u64) {
        let ok = self.ok.load(Ordering::Relaxed);
        let total = ok + self.failed.load(Ordering::Relaxed);
        (100.0 * ok as f64 / total.max(1) as f64, total)
    }
}

/// What happens to the master the fault hits.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `SIGSTOP`: it keeps its connections and answers nothing.
    Hung,
    /// `kill -9`: its connections are reset, new ones refused.
    Killed,
}

async fn healthy_masters_keep_serving_through(fault: Fault, test: &str) {
    let Some(mut cluster) = RedisCluster::start_with_replicas_or_skip(test, 3, false) else {
        return;
    };
    let conn = RedisConnection::cluster(cluster.urls())
        .connect()
        .await
        .unwrap();
    // Key values by the master of their states (a value's limits share its shard): the
    // first value's master is the one the fault hits.
    let probe = limiter(&conn, 1);
    let (mut healthy, mut doomed) = (Vec::new(), Vec::new());
    let mut victim_port = None;
    for i in 0..120 {
        let value = format!("v{i}");
        let state = probe.redis_location("user", &value).unwrap().key;
        let port = cluster.node_for_key(&state).unwrap().port();
        if port == *victim_port.get_or_insert(port) {
            doomed.push(value);
        } else {
            healthy.push(value);
        }
    }
    let victim = victim_port.unwrap();
    let (healthy, doomed) = (Arc::new(healthy), Arc::new(doomed));
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Tally>> = (0..3).map(|_| Arc::default()).collect();
    let mut workers = Vec::new();
    for (n, tally) in (1..=3).zip(&tallies) {
        let limiter = limiter(&conn, n);
        // Enough callers per limiter that decisions queue behind the slot's calls in flight
        // and go out in batches.
        for w in 0..WORKERS {
            let (limiter, tally, healthy, doomed, stop) = (
                limiter.clone(),
                tally.clone(),
                healthy.clone(),
                doomed.clone(),
                stop.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let i = w + WORKERS * round;
                    // Each limit's key from another key value: the limits' keys sit in
                    // different slots, often on different masters. Every fourth request has
                    // its first key on the master the fault hits, as real traffic would; only
                    // the requests whose keys all live on healthy masters are counted.
                    let on_victim = round % 4 == w % 4;
                    let values: Vec<&str> = (0..n)
                        .map(|j| match j == 0 && on_victim {
                            true => doomed[i % doomed.len()].as_str(),
                            false => healthy[(i * 7 + j * 13) % healthy.len()].as_str(),
                        })
                        .collect();
                    let request: Vec<(&str, &str)> =
                        FIELDS.iter().copied().zip(values.iter().copied()).collect();
                    let answer = limiter.check(&request).await;
                    // Unpaced: each caller sends its next decision as soon as it has the
                    // answer, so calls to healthy masters are in flight whenever the dead
                    // one's calls fail. It yields, so that a refusal from an open gate,
                    // answered without waiting, does not hog the thread.
                    tokio::task::yield_now().await;
                    if on_victim {
                        continue;
                    }
                    match answer {
                        Ok(v) if v.allowed => tally.ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            let mut first = tally.first_refusal.lock().unwrap();
                            if first.is_none() {
                                *first = Some(format!("{other:?}"));
                            }
                            tally.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    match fault {
        Fault::Hung => cluster.suspend(victim).unwrap(),
        Fault::Killed => cluster.kill(victim),
    }
    let failover = tokio::task::block_in_place(|| {
        cluster
            .wait_for_failover(victim, Duration::from_secs(30))
            .unwrap()
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    println!("master :{victim} {fault:?}: failed over after {failover:?}");
    for (n, tally) in (1..=3).zip(&tallies) {
        let (share, total) = tally.share();
        println!("  {n} limit(s), keys on healthy masters: {share:.2}% of {total} served");
        if let Some(refusal) = &*tally.first_refusal.lock().unwrap() {
            println!("    first refusal: {refusal}");
        }
    }
    for (n, tally) in (1..=3).zip(&tallies) {
        let (share, total) = tally.share();
        assert!(total > 100, "{n} limit(s): only {total} decisions");
        assert!(share >= 99.0, "{n} limit(s): {share:.2}% served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_limit_decisions_on_healthy_masters_survive_a_hung_master() {
    let test = "multi_limit_decisions_on_healthy_masters_survive_a_hung_master";
    healthy_masters_keep_serving_through(Fault::Hung, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_limit_decisions_on_healthy_masters_survive_a_killed_master() {
    let test = "multi_limit_decisions_on_healthy_masters_survive_a_killed_master";
    healthy_masters_keep_serving_through(Fault::Killed, test).await;
}

/// The give-back after a failure: 20 two-limit decisions at once, each with its first key on
/// a hung master and its second on a healthy one. The healthy node admits all 20, the hung
/// one times out, and the 20 admissions are given back — with what was left of the
/// decisions' bound, nothing. A give-back returns what the caller holds: it is never charged
/// to the healthy node's gate, so the next decision on healthy keys is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_after_a_hung_node_never_opens_a_healthy_nodes_gate() {
    let Some(mut cluster) = RedisCluster::start_with_replicas_or_skip(
        "a_give_back_after_a_hung_node_never_opens_a_healthy_nodes_gate",
        3,
        false,
    ) else {
        return;
    };
    let conn = RedisConnection::cluster(cluster.urls())
        .connect()
        .await
        .unwrap();
    let limiter = limiter(&conn, 2);
    // The master of a key value's states (both limits key by the same value: one shard).
    let port_of = |v: &str| {
        let state = limiter.redis_location("user", v).unwrap().key;
        cluster.node_for_key(&state).unwrap().port()
    };
    let hung_value = "h0".to_string();
    let hung = port_of(&hung_value);
    // 21 key values on one healthy master: their give-backs go to it, as they would for
    // many users.
    let target = port_of(
        &(0..)
            .map(|i| format!("ok{i}"))
            .find(|v| port_of(v) != hung)
            .unwrap(),
    );
    let healthy: Vec<String> = (0..2000)
        .map(|i| format!("ok{i}"))
        .filter(|v| port_of(v) == target)
        .take(21)
        .collect();
    let warm = [("user", healthy[20].as_str()), ("ip", healthy[20].as_str())];
    assert!(limiter.check(&warm).await.unwrap().allowed);
    cluster.suspend(hung).unwrap();
    let answers = futures::future::join_all(healthy[..20].iter().map(|v| {
        let (limiter, hung_value) = (&limiter, &hung_value);
        async move {
            let mixed = [("user", hung_value.as_str()), ("ip", v.as_str())];
            limiter.check(&mixed).await
        }
    }))
    .await;
    let failed = answers.iter().filter(|a| a.is_err()).count();
    let started = std::time::Instant::now();
    let next = limiter.check(&warm).await;
    println!(
        "{failed} of 20 decisions with a key on the hung master failed; the next decision on \
         healthy keys (master :{target}): {:?} after {:?}",
        next.as_ref().map(|v| v.allowed),
        started.elapsed()
    );
    assert_eq!(failed, 20, "the hung master's decisions fail closed");
    assert!(
        next.unwrap().allowed,
        "the healthy node's gate stays closed"
    );
}
