//! The native command, `FLOODWALL.GCRA` (floodwall-redis-module), against the script: the
//! same verdicts batch by batch and as a reference model, instances with and without it
//! exact on one key, a server without it served by the script, replicas that need no module,
//! and the faults of the Redis tests (kill -9 and restart, a key of the wrong type).
//!
//! GCRA quotas here last 10^8 s or 30 days, so nothing refills while a test runs.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodwall_core::redis::StoreOptions;
use floodwall_limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};
use floodwall_testkit::{RedisCluster, RedisServer};
use proptest::prelude::*;

mod common;
use common::{assert_on_redis, connect, standalone};

const SCRIPT: &str = include_str!("../src/redis/limit.lua");
const LIMIT: u32 = 5;

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

fn quota() -> Quota {
    Quota::new(n(LIMIT), Duration::from_secs(100_000_000))
}

/// (allowed, remaining) from a GCRA verdict.
fn verdict(v: &redis::Value) -> (bool, u32) {
    let redis::Value::Int(v) = v else {
        panic!("a GCRA verdict is an integer: {v:?}")
    };
    common::gcra_verdict(*v, quota())
}

/// The reference: with nothing refilling, a key admits while what it used plus the cost fits
/// the limit, and has the limit less what it used left.
fn model(picks: &[(u8, u8)], cost: impl Fn(u8) -> u32) -> Vec<(bool, u32)> {
    let mut used = std::collections::HashMap::new();
    picks
        .iter()
        .map(|&(hash, user)| {
            let u = used.entry((hash, user)).or_insert(0u32);
            let allowed = *u + cost(hash) <= LIMIT;
            if allowed {
                *u += cost(hash);
            }
            (allowed, LIMIT - *u)
        })
        .collect()
}

/// `FLOODWALL.GCRA` on `hash` (routing it, and its one segment) for `fields`, one verdict
/// each.
async fn native(
    conn: &mut redis::aio::MultiplexedConnection,
    hash: &str,
    cost: u32,
    fields: &[String],
) -> Vec<redis::Value> {
    let q = quota();
    let mut cmd = redis::cmd("FLOODWALL.GCRA");
    cmd.arg(hash)
        .arg(1)
        .arg(hash)
        .arg(q.emission_interval().as_nanos() as u64)
        .arg(q.burst().get())
        .arg(cost)
        .arg(fields.len())
        .arg(fields);
    cmd.query_async(conn).await.unwrap()
}

/// Random batches over two hashes (two limits) of three keys each, each hash with a cost of
/// its own, decided three ways on one server: by the native command (one call, a segment per
/// hash), by the script's short path (one call), and by the native command one decision at a
/// time. All three give the reference model's verdicts.
#[test]
fn native_and_script_decide_alike_and_as_the_model() {
    let Some(server) = RedisServer::start_native_or_skip("native_and_script_decide_alike") else {
        return;
    };
    let (rt, conn) = common::runtime_and_connection(&server);
    let script = redis::Script::new(SCRIPT);
    let t_nanos = quota().emission_interval().as_nanos() as u64;
    let (case, decisions) = (AtomicU64::new(0), AtomicU64::new(0));
    let strategy = (
        prop::collection::vec((0..2u8, 0..3u8), 1..40),
        1..=3u32,
        1..=3u32,
    );
    proptest!(ProptestConfig::with_cases(64), |((picks, cost0, cost1) in strategy)| {
        let c = case.fetch_add(1, Ordering::Relaxed);
        let cost = |hash: u8| if hash == 0 { cost0 } else { cost1 };
        let hash_key = |prefix: &str, hash: u8| format!("{prefix}{c}:{{s}}:h{hash}");
        let hashes = common::by_hash(&picks);
        let field = |i: usize| format!("u{}", picks[i].1);
        let (by_native, by_script, one_by_one) = rt.block_on(async {
            let mut conn = conn.clone();
            // One command, a segment per hash, the first hash routing it.
            let mut cmd = redis::cmd("FLOODWALL.GCRA");
            cmd.arg(hash_key("n", hashes[0].0)).arg(1);
            for (hash, at) in &hashes {
                cmd.arg(hash_key("n", *hash)).arg(t_nanos).arg(LIMIT).arg(cost(*hash)).arg(at.len());
                for &i in at {
                    cmd.arg(field(i));
                }
            }
            let replies: Vec<redis::Value> = cmd.query_async(&mut conn).await.unwrap();
            let order = hashes.iter().flat_map(|(_, idx)| idx.iter().copied());
            let mut by_native = vec![(false, 0); picks.len()];
            for (i, v) in order.zip(&replies) {
                by_native[i] = verdict(v);
            }
            let mut inv = script.prepare_invoke();
            for (hash, _) in &hashes {
                inv.key(hash_key("b", *hash));
            }
            inv.arg("F");
            for (at, (hash, idx)) in hashes.iter().enumerate() {
                inv.arg(at + 1).arg(t_nanos).arg(LIMIT).arg(cost(*hash)).arg(idx.len());
                for &i in idx {
                    inv.arg(field(i));
                }
            }
            let reply: redis::Value = inv.invoke_async(&mut conn).await.unwrap();
            let items = match reply {
                redis::Value::Array(items) => items,
                one => vec![one],
            };
            let order = hashes.iter().flat_map(|(_, idx)| idx.iter().copied());
            let mut by_script = vec![(false, 0); picks.len()];
            for (i, v) in order.zip(&items) {
                by_script[i] = verdict(v);
            }
            let mut one_by_one = Vec::new();
            for (i, (hash, _)) in picks.iter().enumerate() {
                let v = native(&mut conn, &hash_key("s", *hash), cost(*hash), &[field(i)]).await;
                one_by_one.push(verdict(&v[0]));
            }
            (by_native, by_script, one_by_one)
        });
        decisions.fetch_add(picks.len() as u64, Ordering::Relaxed);
        let expected = model(&picks, cost);
        prop_assert_eq!(&by_native, &by_script, "native vs script for {:?}", picks);
        prop_assert_eq!(&by_native, &one_by_one, "batch vs one by one for {:?}", picks);
        prop_assert_eq!(&by_native, &expected, "native vs the model for {:?}", picks);
    });
    println!(
        "{} cases, {} decisions: the native command decided as the script, one by one and as the model",
        case.load(Ordering::Relaxed),
        decisions.load(Ordering::Relaxed)
    );
}

/// A limiter of one GCRA limit `api` keyed by `user`, `limit` per 30 days, failing closed.
fn limiter(conn: floodwall_core::redis::RedisConnection, limit: u32, native: bool) -> RateLimiter {
    RateLimiter::builder()
        .limit(
            Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::new(n(limit), Duration::from_secs(30 * 86_400)),
            )
            .keyed_by("user"),
        )
        .redis(StoreOptions::new(conn).call_timeout(Duration::from_secs(5)))
        .redis_native_command(native)
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap()
}

/// Native-command calls and script calls, summed over `nodes`.
fn calls(nodes: &[&RedisServer]) -> (u64, u64) {
    let sum = |cmd: &str| -> u64 { nodes.iter().map(|s| s.command_calls(&[cmd]).unwrap()).sum() };
    (sum("floodwall.gcra"), sum("evalsha") + sum("eval"))
}

/// 8 instances, every other one with the native command turned off, 50 tasks each on one
/// key of limit 100: exactly 100 admitted, on a standalone server and on a 3-master Cluster,
/// both with the module loaded — and both paths ran.
async fn fleet_exactness(urls: Vec<String>, cluster: bool, nodes: Vec<&RedisServer>) {
    let mut instances = Vec::new();
    for i in 0..8 {
        instances.push(limiter(connect(&urls, cluster).await, 100, i % 2 == 0));
    }
    let user = format!("fleet-{}", std::process::id());
    let admitted = Arc::new(AtomicU32::new(0));
    let mut handles = Vec::new();
    for limiter in &instances {
        for _ in 0..50 {
            let (limiter, admitted, user) = (limiter.clone(), admitted.clone(), user.clone());
            handles.push(tokio::spawn(async move {
                let v = limiter.check(&[("user", &user)]).await.unwrap();
                assert!(v.degraded.is_none(), "{v:?}");
                if v.allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let admitted = admitted.load(Ordering::Relaxed);
    let (native_calls, script_calls) = calls(&nodes);
    println!(
        "{}: 8 instances (4 native, 4 script) x 50 tasks admitted {admitted} of limit 100; \
         {native_calls} FLOODWALL.GCRA calls, {script_calls} script calls",
        if cluster { "cluster" } else { "standalone" }
    );
    assert_eq!(admitted, 100, "exactly the limit");
    assert!(native_calls > 0 && script_calls > 0, "both paths decided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_and_without_the_command_admits_exactly_the_limit() {
    let test = "a_fleet_with_and_without_the_command_admits_exactly_the_limit";
    let Some(server) = RedisServer::start_native_or_skip(test) else {
        return;
    };
    fleet_exactness(vec![server.url()], false, vec![&server]).await;
    drop(server);
    let Some(cluster) = RedisCluster::start_native_or_skip(test, 3) else {
        return;
    };
    fleet_exactness(cluster.urls(), true, cluster.nodes().iter().collect()).await;
}

/// A server without the module refuses the command (it decided nothing) only while the
/// first refusal is on its way back — the calls in flight then, at most 4 on one server; the
/// limiter remembers it, and every decision after that goes to the script, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_module_is_served_by_the_script() {
    let Some(server) = RedisServer::start_or_skip("a_server_without_the_module_is_served") else {
        return;
    };
    let limiter = limiter(standalone(server.url()).await, 40, true);
    let refusals = || -> u64 {
        let errors = server.command(&["INFO", "errorstats"]).unwrap();
        errors
            .lines()
            .find_map(|l| l.strip_prefix("errorstat_ERR:count="))
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut admitted = 0;
    let mut refused = Vec::new();
    for round in 0..2 {
        let mut handles = Vec::new();
        for t in 0..20 {
            let limiter = limiter.clone();
            handles.push(tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..10 {
                    let v = limiter.check(&[("user", "no-module")]).await.unwrap();
                    assert!(v.degraded.is_none(), "round {round}, task {t}: {v:?}");
                    admitted += u32::from(v.allowed);
                }
                admitted
            }));
        }
        for h in handles {
            admitted += h.await.unwrap();
        }
        refused.push(refusals());
    }
    println!(
        "without the module: 400 decisions admitted {admitted} of 40; the command was refused \
         {} time(s) in the first 200, {} in the next 200",
        refused[0],
        refused[1] - refused[0]
    );
    assert_eq!(admitted, 40);
    assert!(
        (1..=4).contains(&refused[0]),
        "refused by the calls in flight at first"
    );
    assert_eq!(refused[1], refused[0], "then remembered");
}

/// The command replicates what it wrote as plain hash commands: a replica that never loaded
/// the module holds the same shard hash, field for field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_module_holds_the_same_states() {
    let Some(master) = RedisServer::start_native_or_skip("a_replica_without_the_module") else {
        return;
    };
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let limiter = limiter(standalone(master.url()).await, 5, true);
    for u in 0..3 {
        for _ in 0..=u {
            assert_on_redis(&limiter, &format!("r{u}")).await;
        }
    }
    let hash = limiter.redis_location("api", "r0").unwrap().key;
    assert!(master.command_calls(&["floodwall.gcra"]).unwrap() > 0);
    // Field and value pairs as bytes (a packed TAT may hold any byte, a line break too), in
    // order: a hash table lists its fields in no fixed order.
    let pairs = |server: &RedisServer| {
        let mut conn = redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .unwrap();
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(&hash)
            .query(&mut conn)
            .unwrap_or_default();
        pairs.sort();
        pairs
    };
    let want = pairs(&master);
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = pairs(&replica);
        if got == want || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ttl = replica.command(&["PTTL", &hash]).unwrap();
    println!(
        "replica without the module: {} fields as on the master, PTTL {ttl}",
        want.len()
    );
    assert_eq!(got, want, "the replica holds the master's states");
    assert!(
        ttl.trim().parse::<i64>().unwrap() > 0,
        "with the master's TTL"
    );
}

/// kill -9 of a server with the module, under decisions: each is answered by the failure
/// policy within its bound while Redis is gone, and after the restart (the module loaded
/// again) decisions go to the native command on the new, empty server, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_native_redis_is_ridden_through() {
    let Some(mut server) = RedisServer::start_native_or_skip("a_killed_and_restarted_native")
    else {
        return;
    };
    let conn = standalone(server.url()).await;
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::new(n(5), Duration::from_secs(30 * 86_400)),
            )
            .keyed_by("user"),
        )
        .redis(StoreOptions::new(conn).call_timeout(Duration::from_millis(100)))
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap();
    assert_on_redis(&limiter, "before").await;
    let killed = Instant::now();
    server.stop();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let user = format!("gone{i}");
        let (v, took) = common::beside_a_timer(
            Duration::from_millis(100),
            limiter.check(&[("user", &user)]),
        )
        .await;
        let v = v.unwrap();
        slowest = slowest.max(took);
        assert!(
            v.degraded.is_some(),
            "answered by the failure policy: {v:?}"
        );
    }
    server.restart().unwrap();
    let back = common::back_on_redis(
        &limiter,
        "probe",
        killed,
        Duration::from_secs(30),
        Duration::from_millis(20),
    )
    .await;
    let mut admitted = 0;
    for _ in 0..7 {
        let v = limiter.check(&[("user", "after")]).await.unwrap();
        assert!(v.degraded.is_none());
        admitted += u32::from(v.allowed);
    }
    let native_calls = server.command_calls(&["floodwall.gcra"]).unwrap();
    println!(
        "killed: slowest degraded answer {slowest:?} beyond a plain timer's lateness (bound \
         100 ms); on Redis again {back:?} \
         after the kill; then {admitted} of 7 admitted (limit 5), {native_calls} native calls"
    );
    // The bound, and 50 ms for the library's own work, as the layout's kill test allows.
    assert!(
        slowest <= Duration::from_millis(150),
        "within the bound: {slowest:?}"
    );
    assert_eq!(admitted, 5);
    assert!(native_calls >= 7, "the restarted server's module decided");
}

/// A shard hash holding a field that is not a TAT, and a limit whose hash is a key of another
/// type: only the decisions on them degrade; every other tenant is decided on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_state_degrades_only_its_own_tenant() {
    let Some(server) = RedisServer::start_native_or_skip("a_bad_state_degrades_only") else {
        return;
    };
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::new(n(1000), Duration::from_secs(3600)),
            )
            .keyed_by("user"),
        )
        .redis(
            StoreOptions::new(standalone(server.url()).await).call_timeout(Duration::from_secs(5)),
        )
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap();
    assert_on_redis(&limiter, "good").await;
    let bad = limiter.redis_location("api", "bad").unwrap();
    server
        .command(&["HSET", &bad.key, bad.field.as_deref().unwrap(), "not-a-tat"])
        .unwrap();
    let (mut bad_degraded, mut good_degraded) = (0, 0);
    let mut handles = Vec::new();
    for i in 0..200 {
        let limiter = limiter.clone();
        handles.push(tokio::spawn(async move {
            let user = if i % 2 == 0 {
                "bad".to_string()
            } else {
                format!("good{i}")
            };
            let v = limiter.check(&[("user", &user)]).await.unwrap();
            (i % 2 == 0, v.degraded.is_some())
        }));
    }
    for h in handles {
        match h.await.unwrap() {
            (true, d) => bad_degraded += u32::from(d),
            (false, d) => good_degraded += u32::from(d),
        }
    }
    let native_calls = server.command_calls(&["floodwall.gcra"]).unwrap();
    println!(
        "a field not a TAT: {bad_degraded} of 100 of its tenant's decisions degraded, \
         {good_degraded} of 100 others'; {native_calls} native calls"
    );
    assert_eq!((bad_degraded, good_degraded), (100, 0));
    assert_eq!(
        server
            .command(&["HGET", &bad.key, bad.field.as_deref().unwrap()])
            .unwrap(),
        "not-a-tat"
    );
    // The whole hash of another type: its tenants degrade, and nothing is written over it.
    server.command(&["DEL", &bad.key]).unwrap();
    server.command(&["RPUSH", &bad.key, "x"]).unwrap();
    let v = limiter.check(&[("user", "good1")]).await.unwrap();
    assert!(v.degraded.is_some(), "its hash is a list: {v:?}");
    assert_eq!(server.command(&["TYPE", &bad.key]).unwrap(), "list");
}

/// Redis's clock in µs.
async fn redis_now(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    (s * 1_000_000 + us) as f64
}

/// A large hash of a limit with 16 shards (its tag says so) takes its sweep steps 16 × 2 ms
/// apart — the same sweep work per limit as with one shard — and a small one spreads its
/// pass over a second, whether the script or the command writes it: the next step is due
/// 32 ms after the write for 5,000 states (40 steps a pass), 125 ms for 1,000 (8 steps), on
/// Redis's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_and_the_command_space_sweep_steps_by_the_shard_count() {
    let Some(server) = RedisServer::start_native_or_skip("the_script_and_the_command_space") else {
        return;
    };
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let q = quota();
    let t_nanos = q.emission_interval().as_nanos() as u64;
    let future = (redis_now(&mut conn).await + 1e12).to_le_bytes();
    for (via, states, spacing) in [
        ("script", 5_000, 32_000.0),
        ("command", 5_000, 32_000.0),
        ("script", 1_000, 125_000.0),
        ("command", 1_000, 125_000.0),
    ] {
        let hash = format!("{via}:{states}:{{#2.16.0.0}}:api");
        // More fields than a listpack holds (512 by default): a hash table, scanned in steps.
        let mut hset = redis::cmd("HSET");
        hset.arg(&hash);
        for i in 0..states {
            hset.arg(format!("k{i}")).arg(&future[..]);
        }
        let _: () = hset.query_async(&mut conn).await.unwrap();
        let t0 = redis_now(&mut conn).await;
        let v: redis::Value = match via {
            "script" => redis::Script::new(SCRIPT)
                .key(&hash)
                .arg(t_nanos)
                .arg(LIMIT)
                .arg(1)
                .arg("a")
                .invoke_async(&mut conn)
                .await
                .unwrap(),
            _ => native(&mut conn, &hash, 1, &["a".to_string()])
                .await
                .remove(0),
        };
        let t1 = redis_now(&mut conn).await;
        assert!(verdict(&v).0, "{via}: admitted");
        let d: String = redis::cmd("HGET")
            .arg(&hash)
            .arg(":d")
            .query_async(&mut conn)
            .await
            .unwrap();
        let d: f64 = d.parse().unwrap();
        println!(
            "{via}, {states} states: next sweep step {:.0} µs after the write (16 shards)",
            d - (t0 + t1) / 2.0
        );
        assert!(
            t0 + spacing <= d && d <= t1 + spacing,
            "{via}, {states} states: the next step {spacing} µs after the write: {t0} {d} {t1}"
        );
    }
}

/// After `FLUSHALL` (Redis lost its data) every key starts afresh with the native command as
/// with the script: a spent user is admitted its limit again, no decision fails, and the
/// shard's hash is written anew with a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flushall_the_native_command_starts_every_key_afresh() {
    let Some(server) = RedisServer::start_native_or_skip("after_flushall_the_native_command")
    else {
        return;
    };
    let limiter = limiter(standalone(server.url()).await, 5, true);
    let (rounds, ttl) = common::admitted_around_flushall(&limiter, &server).await;
    let native = server.command_calls(&["floodwall.gcra"]).unwrap();
    println!(
        "admitted of 7 before and after FLUSHALL: {rounds:?}; the shard's hash TTL {ttl} ms; \
         {native} FLOODWALL.GCRA calls"
    );
    assert_eq!(rounds, vec![5, 5]);
    assert!(ttl > 0, "{ttl}");
    assert!(native >= 14, "every decision went to the command");
}
