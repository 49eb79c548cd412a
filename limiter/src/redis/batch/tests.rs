//! The node batches' fallback on a real Cluster, and the refusal it follows.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_core::redis::{RedisConnection, Script, StoreOptions};
use floodwall_core::{Keyspace, StoreError};
use floodwall_testkit::{RedisCluster, RedisServer};

use super::{FULL_BATCH, FULL_BATCH_NATIVE, IN_FLIGHT, IN_FLIGHT_NATIVE, cannot_compile};
use crate::redis::RedisStore;
use crate::{Algorithm, Limit, Quota, RateLimiter};

/// What a server before Redis 7 answers the flagged script with is recognized, on a real
/// server: to such a server the flags line is Lua, and a line that starts with `#` does
/// not compile (here a `#` line that Redis 7 does not read as a shebang either).
#[tokio::test]
async fn a_script_redis_cannot_compile_is_recognized() {
    let Some(server) = RedisServer::start_or_skip("a_script_redis_cannot_compile") else {
        return;
    };
    let conn = RedisConnection::standalone(server.url())
        .connect()
        .await
        .unwrap();
    let path = StoreOptions::new(conn).open(Keyspace::new("t", 1).unwrap());
    static BROKEN: Script = Script::new("#lua flags=allow-cross-slot-keys\nreturn 1");
    let e = path
        .invoke::<i64>(BROKEN.call().key("k"))
        .await
        .unwrap_err();
    println!("Redis answered: {e}");
    assert!(cannot_compile(&e));
    assert!(!cannot_compile(&StoreError::Script(
        "WRONGTYPE Operation against a key holding the wrong kind of value".into()
    )));
}

/// Once a node refused the flagged script, a node's batch goes as one call per slot: on a
/// real 3-master Cluster, 128 concurrent tasks, 384 decisions over 24 keys of several slots
/// admit each key exactly its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refusal_a_nodes_batch_goes_per_slot_and_stays_exact() {
    let Some(cluster) = RedisCluster::start_or_skip("a_nodes_batch_per_slot", 3) else {
        return;
    };
    const LIMIT: u32 = 10;
    let conn = RedisConnection::cluster(cluster.urls())
        .connect()
        .await
        .unwrap();
    let quota = Quota::new(NonZeroU32::new(LIMIT).unwrap(), Duration::from_secs(86_400));
    let limiter = RateLimiter::builder()
        .limit(Limit::new("api", Algorithm::Gcra, quota).keyed_by("user"))
        .build()
        .unwrap();
    // The store is given the limiter's limits, as the builder gives them: each GCRA limit's
    // shard hashes are built once.
    let store = RedisStore::new(
        StoreOptions::new(conn).call_timeout(Duration::from_secs(5)),
        &Default::default(),
        &[Limit::new("api", Algorithm::Gcra, quota).keyed_by("user")],
    );
    let batcher = store.batcher.as_ref().expect("batching on");
    batcher.cross_refused.store(true, Ordering::Relaxed);
    let (store, limiter) = (Arc::new(store), Arc::new(limiter));
    let users: Arc<Vec<String>> = Arc::new((0..24).map(|i| format!("per-slot-{i}")).collect());
    let admitted: Arc<Vec<AtomicU32>> = Arc::new(users.iter().map(|_| AtomicU32::new(0)).collect());
    let mut tasks = Vec::new();
    for t in 0..128 {
        let (store, limiter) = (store.clone(), limiter.clone());
        let (users, admitted) = (users.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..3 {
                let u = (t + i * 128) % users.len();
                let v = limiter
                    .decide_on_shared(&*store, &[("user", &users[u])], 1, true)
                    .await
                    .unwrap();
                assert!(v.degraded.is_none());
                if v.allowed {
                    admitted[u].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 384 decisions over 24 keys: 16 asked of each, 10 admitted.
    for (user, n) in users.iter().zip(admitted.iter()) {
        assert_eq!(n.load(Ordering::Relaxed), LIMIT, "{user}");
    }
    // Batches were made, and none went to the flagged script: no master ever loaded it.
    let (mut calls, mut flagged) = (0u64, 0usize);
    for node in cluster.nodes() {
        calls += node.command_calls(&["evalsha", "eval"]).unwrap();
        let exists = node
            .command(&["SCRIPT", "EXISTS", crate::redis::LIMIT_SCRIPT_NODE.sha1()])
            .unwrap();
        flagged += usize::from(exists.trim() == "1");
    }
    println!(
        "384 decisions in {calls} script calls; the flagged script loaded on {flagged} masters"
    );
    assert!(calls < 384, "{calls} script calls: no batches were made");
    assert_eq!(flagged, 0);
}

/// A store's batches follow its path: fewer, fuller calls while the server may take the
/// native command; the script's batches once a server without the module refused it (on a
/// real server), and from the start when the builder turned the command off.
#[tokio::test]
async fn batches_follow_the_native_command_and_its_refusal() {
    let Some(server) = RedisServer::start_or_skip("batches_follow_the_native_command") else {
        return;
    };
    let quota = Quota::new(NonZeroU32::new(10).unwrap(), Duration::from_secs(86_400));
    let limiter = RateLimiter::builder()
        .limit(Limit::new("api", Algorithm::Gcra, quota).keyed_by("user"))
        .build()
        .unwrap();
    let url = server.url();
    let store = |native: bool| {
        let url = url.clone();
        async move {
            let conn = RedisConnection::standalone(url).connect().await.unwrap();
            let settings = crate::redis::Settings {
                native,
                ..Default::default()
            };
            // No limits given: every decision builds its hash's name itself.
            RedisStore::new(StoreOptions::new(conn), &settings, &[])
        }
    };
    let native = store(true).await;
    let batcher = native.batcher.as_ref().expect("batching on");
    assert_eq!(batcher.limits(), (IN_FLIGHT_NATIVE, FULL_BATCH_NATIVE));
    let v = limiter
        .decide_on_shared(&native, &[("user", "a")], 1, true)
        .await
        .unwrap();
    assert!(
        v.allowed && v.degraded.is_none(),
        "the script decided: {v:?}"
    );
    assert_eq!(
        batcher.limits(),
        (IN_FLIGHT, FULL_BATCH),
        "after the refusal"
    );
    let script = store(false).await;
    let batcher = script.batcher.as_ref().expect("batching on");
    assert_eq!(batcher.limits(), (IN_FLIGHT, FULL_BATCH));
}

/// The callers a call answered come back before the node's next batch goes
/// (`Batcher::gather`): on one thread, against a real server, 8 callers that decide 25 times
/// each ride every call together once the first has returned. Taking the queue at once
/// instead, calls alternate between the one caller that came back during a call and the 7
/// that come back after it.
#[tokio::test]
async fn the_callers_a_call_answered_ride_the_next_call() {
    let Some(server) = RedisServer::start_or_skip("the_callers_a_call_answered_ride") else {
        return;
    };
    const CALLERS: usize = 8;
    const EACH: usize = 25;
    let quota = Quota::new(NonZeroU32::new(1_000).unwrap(), Duration::from_secs(86_400));
    let limit = Limit::new("api", Algorithm::Gcra, quota).keyed_by("user");
    let limiter = Arc::new(RateLimiter::builder().limit(limit.clone()).build().unwrap());
    let conn = RedisConnection::standalone(server.url())
        .connect()
        .await
        .unwrap();
    // The script's batching (at most IN_FLIGHT calls, full batches of FULL_BATCH): 8 callers
    // never make a full batch, so one call is in flight at a time.
    let settings = crate::redis::Settings {
        native: false,
        ..Default::default()
    };
    const { assert!(CALLERS < FULL_BATCH) };
    let store = Arc::new(RedisStore::new(
        StoreOptions::new(conn),
        &settings,
        &[limit],
    ));
    let calls = || server.command_calls(&["evalsha", "eval"]).unwrap();
    let before = calls();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (store, limiter) = (store.clone(), limiter.clone());
            tokio::spawn(async move {
                for _ in 0..EACH {
                    let user = format!("rider-{c}");
                    let v = limiter
                        .decide_on_shared(&*store, &[("user", &user)], 1, true)
                        .await
                        .unwrap();
                    assert!(v.allowed && v.degraded.is_none(), "{v:?}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let made = calls() - before;
    let decisions = (CALLERS * EACH) as u64;
    println!(
        "{decisions} decisions of {CALLERS} callers in {made} calls, {:.1} per call",
        decisions as f64 / made as f64
    );
    // The first decision goes alone, the 7 that queued behind it go together, and from then
    // on a call carries all 8, but where the first caller, one decision ahead, has finished:
    // 27 calls. Taking the queue at once instead made 51.
    assert!(made <= (EACH + 4) as u64, "{made} calls");
}

/// A runtime that ran a node's call shuts down while the call hangs and a decision made on
/// another runtime waits behind it: the node is given back, so decisions made afterwards are
/// sent and decided on Redis once it answers, instead of queueing for good behind a call
/// nobody will finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_shut_down_mid_call_leaves_the_node_usable() {
    let Some(server) = RedisServer::start_or_skip("a_runtime_that_shut_down_mid_call") else {
        return;
    };
    let proxy = floodwall_testkit::FaultProxy::start(server.addr())
        .await
        .unwrap();
    let quota = Quota::new(NonZeroU32::new(1_000).unwrap(), Duration::from_secs(86_400));
    let limit = Limit::new("api", Algorithm::Gcra, quota).keyed_by("user");
    let limiter = Arc::new(
        RateLimiter::builder()
            .limit(limit.clone())
            .failure_policy(crate::FailurePolicy::FailClosed)
            .build()
            .unwrap(),
    );
    let conn = RedisConnection::standalone(proxy.redis_url())
        .connect()
        .await
        .unwrap();
    let options = StoreOptions::new(conn).call_timeout(Duration::from_secs(3));
    let store = Arc::new(RedisStore::new(options, &Default::default(), &[limit]));
    let decide = |user: &'static str| {
        let (store, limiter) = (store.clone(), limiter.clone());
        async move {
            limiter
                .decide_on_shared(&*store, &[("user", user)], 1, true)
                .await
        }
    };
    proxy.blackhole();
    // Runtime A sends the node's call, which hangs on the blackholed proxy...
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let batcher = store.batcher.clone().expect("batching on");
    // Waits (a bounded while) until the server's group is as `state` says: (calls in flight,
    // decisions queued).
    let until = |state: (usize, usize)| {
        let batcher = batcher.clone();
        async move {
            for _ in 0..5_000 {
                let now = {
                    let groups = batcher.groups.lock().unwrap();
                    (groups.server.in_flight, groups.server.queue.len())
                };
                if now == state {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!("the node never reached {state:?}");
        }
    };
    other.spawn(decide("on-a"));
    until((1, 0)).await;
    // ...and a decision of this runtime waits behind it.
    let waiting = tokio::spawn(decide("waiting"));
    until((1, 1)).await;
    tokio::task::spawn_blocking(move || other.shutdown_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    proxy.heal();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    let started = std::time::Instant::now();
    let after = tokio::time::timeout(Duration::from_secs(10), decide("after")).await;
    println!(
        "runtime A shut down mid-call: the decision waiting behind it {waited:?}; the next \
         {after:?} in {:?}",
        started.elapsed()
    );
    assert!(waited.is_ok(), "the waiting decision was answered");
    let v = after.expect("answered, not left waiting").unwrap();
    assert!(v.allowed && v.degraded.is_none(), "{v:?}");
}
