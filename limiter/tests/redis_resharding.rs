//! Resharding under load: a 3-master Cluster moves the slot of a limited key to another
//! master (`MIGRATING` / `IMPORTING`, `MIGRATE` in batches, `SETSLOT NODE`) while 8
//! instances decide on that key with batching on. Clients see `ASK` while the slot is half
//! moved and `MOVED` after; the limit stays exact: no decision is counted twice, and none
//! admitted past the limit.
//!
//! What it also shows, and prints: while the slot is half moved, a decision can meet its key
//! gone from inside the batch script, whose per-decision `redis.pcall` keeps the `ASK` /
//! `MOVED` as that decision's reply — so the Cluster client sees no redirect to follow. The
//! batcher sends such a decision again on its own (it wrote nothing), up to five times over
//! about 75 ms; that cut the failed decisions from 18–30 of 600 to 0–3 of 600 in runs on a
//! 2-core machine. The few left fail closed (counted and printed); following the redirect
//! with `ASKING` is left open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use floodwall_limiter::Algorithm;
use floodwall_testkit::RedisCluster;

mod common;

const INSTANCES: usize = 8;
const TASKS: usize = 8;
const LIMIT: u32 = 300;
/// Decisions asked in all: twice the limit, spread over the migration.
const ASKED: u32 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_load_keeps_the_limit_exact() {
    let Some(cluster) =
        RedisCluster::start_or_skip("a_slot_moved_under_load_keeps_the_limit_exact", 3)
    else {
        return;
    };
    let cluster = Arc::new(cluster);
    for alg in [Algorithm::Gcra, Algorithm::SlidingLog] {
        let user = format!("reshard-{alg:?}-{}", std::process::id());
        let mut instances = Vec::new();
        for _ in 0..INSTANCES {
            instances.push(common::cluster_instance(&cluster.urls(), alg, LIMIT).await);
        }
        let key = instances[0].redis_location("api", &user).unwrap().key;
        let (_, to) = common::crowd_the_slot(&cluster, &key);
        // A first decision creates the limiter's keys on the source.
        assert!(
            instances[0]
                .check(&[("user", &user)])
                .await
                .unwrap()
                .allowed
        );

        let (asked, admitted, failed) = (
            Arc::new(AtomicU32::new(1)),
            Arc::new(AtomicU32::new(1)),
            Arc::new(AtomicU32::new(0)),
        );
        let mut handles = Vec::new();
        for limiter in &instances {
            for _ in 0..TASKS {
                let (limiter, user) = (limiter.clone(), user.clone());
                let (asked, admitted, failed) = (asked.clone(), admitted.clone(), failed.clone());
                handles.push(tokio::spawn(async move {
                    while asked.fetch_add(1, Ordering::SeqCst) < ASKED {
                        match limiter.check(&[("user", &user)]).await {
                            Ok(v) if v.allowed => {
                                admitted.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                if failed.fetch_add(1, Ordering::SeqCst) == 0 {
                                    println!("first failure: {e}");
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }));
            }
        }
        let mover = cluster.clone();
        let moved_key = key.clone();
        let started = Instant::now();
        let moved = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(20));
            mover.migrate_slot_of(&moved_key, to, Duration::from_millis(15))
        })
        .await
        .unwrap()
        .unwrap();
        let move_took = started.elapsed();
        for h in handles {
            h.await.unwrap();
        }
        let (admitted, failed) = (
            admitted.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst),
        );
        println!(
            "{alg:?}: slot {} moved :{} -> :{} ({} keys) in {move_took:?} under load; \
             {ASKED} decisions asked, {admitted} admitted of limit {LIMIT}, {failed} failed",
            moved.slot, moved.from, moved.to, moved.keys
        );
        assert_eq!(
            cluster.node_for_key(&key).unwrap().port(),
            to,
            "the key moved"
        );
        assert!(
            moved.keys >= 61,
            "the neighbours and the limiter's keys moved"
        );
        assert_eq!(admitted, LIMIT, "exactly the limit across the move");
        assert!(
            failed < ASKED - LIMIT,
            "{failed} failed: too few decided to test exactness"
        );
        // After the move, decisions go to the new master and still count from where the
        // key was: the limit is spent.
        assert!(
            !instances[3]
                .check(&[("user", &user)])
                .await
                .unwrap()
                .allowed
        );
    }
}
