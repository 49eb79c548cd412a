//! Batches of one Cluster node's decisions over several slots: a batch is every decision
//! waiting for one master, whatever the slots of its keys, run as one script call with the
//! `allow-cross-slot-keys` flag. On a real 3-master Cluster:
//! - keys spread over the Cluster stay exact, each key admitted exactly its limit, from 8
//!   instances (own connections) with many tasks each, and the masters ran fewer script
//!   calls than there were decisions (printed: decisions per call);
//! - a slot moved while its key is decided in batches beside keys of other slots on the same
//!   master keeps every key exact: the moved key's decisions, met inside a batch on a node
//!   that no longer serves it, are sent again alone and follow the redirect.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_limiter::{Algorithm, RateLimiter};
use floodwall_testkit::RedisCluster;

mod common;

const INSTANCES: usize = 8;

/// `EVALSHA` and `EVAL` calls summed over the Cluster's masters (reset first with `reset`).
fn script_calls(cluster: &RedisCluster, reset: bool) -> u64 {
    cluster
        .nodes()
        .iter()
        .map(|node| {
            if reset {
                node.command(&["CONFIG", "RESETSTAT"]).unwrap();
                return 0;
            }
            let stats = node.command(&["INFO", "commandstats"]).unwrap();
            stats
                .lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                .filter_map(|l| {
                    let calls = l.split("calls=").nth(1)?.split(',').next()?;
                    calls.parse::<u64>().ok()
                })
                .sum::<u64>()
        })
        .sum()
}

/// `ERR` replies the masters counted (`INFO errorstats`): among them, a script's read of a
/// key its node does not serve.
fn errors(cluster: &RedisCluster) -> u64 {
    cluster
        .nodes()
        .iter()
        .map(|node| {
            let stats = node.command(&["INFO", "errorstats"]).unwrap();
            stats
                .lines()
                .find_map(|l| l.strip_prefix("errorstat_ERR:count=")?.trim().parse().ok())
                .unwrap_or(0u64)
        })
        .sum()
}

/// Each task asks for the keys in turn until every key was asked `asked` times; returns what
/// each key admitted and how many decisions failed.
async fn ask_in_turns(
    instances: &[RateLimiter],
    tasks: usize,
    users: &[String],
    asked: u32,
    pause: Duration,
) -> (HashMap<String, u32>, u32) {
    let total = asked * users.len() as u32;
    let next = Arc::new(AtomicU32::new(0));
    let failed = Arc::new(AtomicU32::new(0));
    let admitted: Arc<Vec<AtomicU32>> = Arc::new(users.iter().map(|_| AtomicU32::new(0)).collect());
    let users: Arc<Vec<String>> = Arc::new(users.to_vec());
    let mut handles = Vec::new();
    for limiter in instances {
        for _ in 0..tasks {
            let (limiter, users) = (limiter.clone(), users.clone());
            let (next, failed, admitted) = (next.clone(), failed.clone(), admitted.clone());
            handles.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    let u = i as usize % users.len();
                    match limiter.check(&[("user", &users[u])]).await {
                        Ok(v) if v.allowed => {
                            admitted[u].fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::SeqCst) == 0 {
                                println!("first failure: {e}");
                            }
                        }
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let admitted = users
        .iter()
        .zip(admitted.iter())
        .map(|(u, a)| (u.clone(), a.load(Ordering::SeqCst)))
        .collect();
    (admitted, failed.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_keys_batched_by_node_are_each_exact() {
    let Some(cluster) =
        RedisCluster::start_or_skip("spread_keys_batched_by_node_are_each_exact", 3)
    else {
        return;
    };
    const USERS: usize = 40;
    const LIMIT: u32 = 20;
    const ASKED: u32 = 50;
    for alg in [
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingCounter,
    ] {
        let users: Vec<String> = (0..USERS)
            .map(|i| format!("spread-{alg:?}-{i}-{}", std::process::id()))
            .collect();
        let mut instances = Vec::new();
        for _ in 0..INSTANCES {
            instances.push(common::cluster_instance(&cluster.urls(), alg, LIMIT).await);
        }
        script_calls(&cluster, true);
        let (admitted, failed) = ask_in_turns(&instances, 16, &users, ASKED, Duration::ZERO).await;
        let calls = script_calls(&cluster, false);
        let decisions = u64::from(ASKED) * USERS as u64;
        let masters: std::collections::HashSet<u16> = users
            .iter()
            .map(|u| {
                let key = instances[0].redis_location("api", u).unwrap().key;
                cluster.node_for_key(&key).unwrap().port()
            })
            .collect();
        println!(
            "{alg:?}: {USERS} keys on {} masters, {decisions} decisions from {INSTANCES} \
             instances in {calls} script calls ({:.2} decisions per call); {failed} failed",
            masters.len(),
            decisions as f64 / calls as f64
        );
        assert_eq!(failed, 0);
        for (user, n) in &admitted {
            assert_eq!(*n, LIMIT, "{alg:?} {user} admitted exactly its limit");
        }
        assert!(
            calls < decisions,
            "decisions were batched: {calls} calls for {decisions}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_node_batches_keeps_every_key_exact() {
    let Some(cluster) =
        RedisCluster::start_or_skip("a_slot_moved_under_node_batches_keeps_every_key_exact", 3)
    else {
        return;
    };
    moved_under_batches(Arc::new(cluster), &[Algorithm::Gcra, Algorithm::SlidingLog]).await;
}

/// The same with floodwall-redis-module loaded: GCRA batches go as one `FLOODWALL.GCRA` per
/// master, and the moved key's decisions, met in a batch on a node that no longer serves it,
/// reply `floodwall:elsewhere` (the module's read is refused there), are sent again alone and
/// follow the redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_native_node_batches_keeps_every_key_exact() {
    let Some(cluster) = RedisCluster::start_native_or_skip(
        "a_slot_moved_under_native_node_batches_keeps_every_key_exact",
        3,
    ) else {
        return;
    };
    let cluster = Arc::new(cluster);
    moved_under_batches(cluster.clone(), &[Algorithm::Gcra]).await;
    let native: u64 = cluster
        .nodes()
        .iter()
        .map(|n| n.command_calls(&["floodwall.gcra"]).unwrap())
        .sum();
    println!("{native} FLOODWALL.GCRA calls");
    assert!(native > 0, "the native command decided");
}

/// A slot moved while its key is decided in batches beside keys of other slots on the same
/// master, for each of `algs`: every key stays exact.
async fn moved_under_batches(cluster: Arc<RedisCluster>, algs: &[Algorithm]) {
    const LIMIT: u32 = 100;
    const ASKED: u32 = 200;
    for &alg in algs {
        let pid = std::process::id();
        let moved_user = format!("moving-{alg:?}-{pid}");
        let mut instances = Vec::new();
        for _ in 0..INSTANCES {
            instances.push(common::cluster_instance(&cluster.urls(), alg, LIMIT).await);
        }
        let key_of = |u: &str| instances[0].redis_location("api", u).unwrap().key;
        let moved_key = key_of(&moved_user);
        let source = cluster.node_for_key(&moved_key).unwrap().port();
        // Companions on the same master, in other shards (other slots): they share its
        // batches.
        let mut users = vec![moved_user.clone()];
        users.extend(
            (0..)
                .map(|i| format!("companion-{alg:?}-{i}-{pid}"))
                .filter(|u| {
                    let key = key_of(u);
                    key != moved_key && cluster.node_for_key(&key).unwrap().port() == source
                })
                .take(7),
        );
        let (moved_source, to) = common::crowd_the_slot(&cluster, &moved_key);
        assert_eq!(moved_source, source);
        for user in &users {
            let _ = instances[0].check(&[("user", user)]).await.unwrap();
        }
        let errors_before = errors(&cluster);
        let mover = cluster.clone();
        let moving = moved_key.clone();
        let migration = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(20));
            mover.migrate_slot_of(&moving, to, Duration::from_millis(15))
        });
        let (admitted, failed) =
            ask_in_turns(&instances, 8, &users, ASKED, Duration::from_millis(1)).await;
        let moved = migration.await.unwrap().unwrap();
        println!(
            "{alg:?}: during the move the masters answered {} ERR (a batch's read of a key \
             its node no longer serves: that decision sent again alone)",
            errors(&cluster) - errors_before
        );
        println!(
            "{alg:?}: slot {} moved :{} -> :{} ({} keys) while {} keys of that master were \
             decided in its batches; {failed} failed; admitted {:?}",
            moved.slot,
            moved.from,
            moved.to,
            moved.keys,
            users.len(),
            users.iter().map(|u| admitted[u]).collect::<Vec<_>>()
        );
        assert_eq!(cluster.node_for_key(&moved_key).unwrap().port(), to);
        // The first decision on each key was made before the run.
        for user in &users {
            let n = admitted[user] + 1;
            let lost = failed.min(ASKED);
            assert!(
                n <= LIMIT,
                "{alg:?} {user}: {n} admitted past the limit {LIMIT}"
            );
            assert!(
                n + lost >= LIMIT,
                "{alg:?} {user}: {n} admitted, {failed} failed: fewer than the limit"
            );
            if failed == 0 {
                assert_eq!(n, LIMIT, "{alg:?} {user} admitted exactly its limit");
            }
        }
        assert!(failed < ASKED, "{failed} failed: too few decided");
        // After the move every key is spent on whichever node serves it now.
        for user in &users {
            assert!(!instances[5].check(&[("user", user)]).await.unwrap().allowed);
        }
    }
}
