//! Layout 2 on Redis (see the `redis` module's docs): where a limit's states live, that they
//! never meet the keys of the layout before, that stale GCRA states are swept and a shard's
//! hash keeps a TTL, and how shards spread over a Cluster.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use floodwall_core::Keyspace;
use floodwall_core::redis::StoreOptions;
use floodwall_limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};
use floodwall_testkit::{RedisCluster, RedisServer};
use proptest::prelude::*;

mod common;
use common::{connect, standalone};

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

/// A limiter of GCRA `api`, fixed window `hour` and sliding log `log`, all keyed by `user`.
async fn three_limits(urls: &[String], cluster: bool, shards: Option<u16>) -> RateLimiter {
    let mut b = RateLimiter::builder()
        .limit(Limit::new("api", Algorithm::Gcra, Quota::per_hour(n(5))).keyed_by("user"))
        .limit(Limit::new("hour", Algorithm::FixedWindow, Quota::per_hour(n(5))).keyed_by("user"))
        .limit(Limit::new("log", Algorithm::SlidingLog, Quota::per_hour(n(5))).keyed_by("user"))
        .redis(StoreOptions::new(connect(urls, cluster).await))
        .failure_policy(FailurePolicy::FailClosed);
    if let Some(shards) = shards {
        b = b.redis_shards(shards);
    }
    b.build().unwrap()
}

/// A command's integer reply.
fn number(server: &RedisServer, command: &[&str]) -> i64 {
    server.command(command).unwrap().trim().parse().unwrap()
}

/// Redis `TIME` in µs.
fn redis_now(server: &RedisServer) -> f64 {
    let t = server.command(&["TIME"]).unwrap();
    let mut parts = t.lines().map(|l| l.trim().parse::<f64>().unwrap());
    parts.next().unwrap() * 1e6 + parts.next().unwrap()
}

/// The states in a GCRA shard's hash: its fields less its own (`:c`, `:d`, `:x`, `:v`).
fn states(server: &RedisServer, hash: &str) -> u64 {
    let fields = number(server, &["HLEN", hash]) as u64;
    let present = [":c", ":d", ":x", ":v"]
        .iter()
        .filter(|f| server.command(&["HEXISTS", hash, f]).unwrap().trim() == "1")
        .count() as u64;
    fields - present
}

/// The previous layout's keys (`fw-rl:v1:{<key>}:<limit>`, and `:seq` for the log) are
/// never read or written: a user whose old states are spent is decided afresh, the old
/// values stay as they were, and every key the limiter writes carries a shard's tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limiter_never_meets_the_previous_layouts_keys() {
    let Some(server) = RedisServer::start_or_skip("a_limiter_never_meets_the_previous_layouts")
    else {
        return;
    };
    let limiter = three_limits(&[server.url()], false, None).await;
    let old = Keyspace::new("fw-rl", 1).unwrap();
    let far = format!("{:.0}", redis_now(&server) + 3.6e9);
    // What the previous layout holds for a user who spent every limit.
    let gcra = old.key("spent").part("api").build();
    let hour = old.key("spent").part("hour").build();
    server.command(&["SET", gcra.as_str(), &far]).unwrap();
    server
        .command(&["HSET", hour.as_str(), "w", "1", "c", "5", "p", "0"])
        .unwrap();
    let mut admitted = 0;
    for _ in 0..5 {
        let v = limiter.check(&[("user", "spent")]).await.unwrap();
        assert!(v.degraded.is_none(), "{v:?}");
        admitted += u32::from(v.allowed);
    }
    assert_eq!(server.command(&["GET", gcra.as_str()]).unwrap(), far);
    assert_eq!(
        server.command(&["HGET", hour.as_str(), "c"]).unwrap(),
        "5",
        "the old counter untouched"
    );
    let keys = server.command(&["KEYS", "fw-rl:*"]).unwrap();
    let ours: Vec<&str> = keys
        .lines()
        .filter(|k| *k != gcra.as_str() && *k != hour.as_str())
        .collect();
    println!(
        "a user spent on the previous layout: {admitted} of 5 admitted; keys written: {ours:?}"
    );
    assert_eq!(admitted, 5);
    assert_eq!(
        ours.len(),
        4,
        "the GCRA hash, the counter, the log and its sequence"
    );
    assert!(
        ours.iter().all(|k| k.starts_with("fw-rl:v1:{#2.1.0.")),
        "{ours:?}"
    );
    let at = limiter.redis_location("api", "spent").unwrap();
    assert!(ours.contains(&at.key.as_str()));
    assert_eq!(at.field.as_deref(), Some("spent"));
}

/// No key a limit's state lives at is one the previous layout used, whatever the key.
#[test]
fn no_state_key_is_a_previous_layout_key() {
    let Some(server) = RedisServer::start_or_skip("no_state_key_is_a_previous_layout_key") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limiter = rt.block_on(three_limits(&[server.url()], false, Some(16)));
    let old = Keyspace::new("fw-rl", 1).unwrap();
    let checked = std::sync::atomic::AtomicU64::new(0);
    proptest!(ProptestConfig::with_cases(512), |(user in any::<Vec<u8>>())| {
        let user = String::from_utf8_lossy(&user).into_owned();
        let previous: Vec<String> = ["api", "hour", "log"]
            .iter()
            .flat_map(|l| {
                let base = old.key(&user).part(l);
                [base.clone().build().into_string(), base.part("seq").build().into_string()]
            })
            .collect();
        for limit in ["api", "hour", "log"] {
            let at = limiter.redis_location(limit, &user).unwrap();
            prop_assert!(!previous.contains(&at.key), "{:?}", at);
            if let Some(seq) = &at.sequence {
                prop_assert!(!previous.contains(seq), "{:?}", at);
            }
            checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    println!(
        "{} state keys checked against the previous layout's",
        checked.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// 1,000 GCRA states that end 1 ms after their decision are removed by the sweep while the
/// shard keeps being written: within two passes of ⌈1000 / 128⌉ steps (counted from the
/// server's `HSCAN` calls), the steps of a pass spread over a second (for 1,000 states, at
/// least 125 ms apart on Redis time), and the hash keeps a TTL past its latest state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_states_are_swept_while_their_shard_is_written() {
    let Some(server) = RedisServer::start_or_skip("stale_states_are_swept") else {
        return;
    };
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::per_second(n(1000)).allow_burst(n(1)),
            )
            .keyed_by("user"),
        )
        .redis(StoreOptions::new(standalone(server.url()).await))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    let stale = 1000u64;
    for i in 0..stale {
        let v = limiter.check(&[("user", &format!("m-{i}"))]).await.unwrap();
        assert!(v.allowed && v.degraded.is_none());
    }
    let hash = limiter.redis_location("api", "m-0").unwrap().key;
    let ttl = number(&server, &["PTTL", &hash]);
    // Every state ends within 1 ms of its decision: the hash outlives the latest, and its TTL
    // was set at most 1 s (and a millisecond of rounding) past a state's end.
    assert!((2..=1002).contains(&ttl), "the hash's TTL: {ttl} ms");
    let before = states(&server, &hash);
    // Wait (on Redis time) until the last state has ended.
    let ended = redis_now(&server) + 1_000.0;
    while redis_now(&server) <= ended {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let scans_before = server.command_calls(&["hscan"]).unwrap();
    let started = Instant::now();
    let sweep_from = redis_now(&server);
    let mut writes = 0u64;
    let left = loop {
        let left = states(&server, &hash).saturating_sub(1);
        if left == 0 || writes == 3_000 {
            break left;
        }
        // Another key written, one sweep step's interval (2 ms, on Redis time) apart.
        let next = redis_now(&server) + 2_000.0;
        while redis_now(&server) < next {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(limiter.check(&[("user", "busy")]).await.unwrap().allowed);
        writes += 1;
    };
    let steps = server.command_calls(&["hscan"]).unwrap() - scans_before;
    let took = (redis_now(&server) - sweep_from) / 1e6;
    let pass = stale.div_ceil(128);
    println!(
        "the hash's TTL {ttl} ms; {stale} states decided, {before} still held when the last ended: all but {left} removed after {writes} writes of another \
         key, {steps} sweep steps, {took:.3} s of Redis time, {:?} (bound: two passes of {pass} steps, 1 s each)",
        started.elapsed()
    );
    assert_eq!(left, 0);
    assert!(steps <= 2 * pass + 2, "{steps} steps");
    // Each step waited at least 1 s / ⌈N / 128⌉ after the one before, N at most the 1,000
    // states, `busy` and the 4 own fields: 8 steps a pass, 125 ms apart (a lower bound, which
    // a busy machine only lengthens).
    let spacing = 1.0 / 1005u64.div_ceil(128) as f64;
    assert!(
        took >= (steps.saturating_sub(1)) as f64 * spacing,
        "{steps} steps in {took:.3} s: closer than {spacing} s apart"
    );
}

/// Building with a shard count outside 1 to `MAX_SHARDS` is refused.
#[tokio::test]
async fn a_shard_count_out_of_range_is_a_build_error() {
    let Some(server) = RedisServer::start_or_skip("a_shard_count_out_of_range") else {
        return;
    };
    for shards in [0, floodwall_limiter::redis::MAX_SHARDS + 1] {
        let e = RateLimiter::builder()
            .limit(Limit::new("api", Algorithm::Gcra, Quota::per_second(n(5))))
            .redis(StoreOptions::new(standalone(server.url()).await))
            .redis_shards(shards)
            .build()
            .expect_err("refused");
        println!("{shards} shards: {e}");
        assert_eq!(e.field, "redis_shards");
    }
}

/// On a 3-master Cluster, the states of 300 users spread over every master: with the default
/// 16 shards, in at most 16 GCRA hashes; with 3 shards, in one hash per master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_spread_over_the_masters() {
    let Some(cluster) = RedisCluster::start_or_skip("shards_spread_over_the_masters", 3) else {
        return;
    };
    for (shards, most) in [(None, 16), (Some(3), 3)] {
        let limiter = three_limits(&cluster.urls(), true, shards).await;
        for u in 0..300 {
            let v = limiter.check(&[("user", &format!("u{u}"))]).await.unwrap();
            assert!(v.allowed && v.degraded.is_none(), "{v:?}");
        }
        let mut per_master = Vec::new();
        for node in cluster.nodes() {
            let keys = node.command(&["KEYS", "fw-rl:*:api"]).unwrap();
            per_master.push(keys.lines().filter(|l| !l.is_empty()).count());
        }
        let hashes: usize = per_master.iter().sum();
        println!("{shards:?} shards: GCRA hashes per master {per_master:?}");
        assert!(per_master.iter().all(|&h| h >= 1), "{per_master:?}");
        assert!(hashes <= most, "{hashes} hashes");
        if shards == Some(3) {
            assert_eq!(per_master, vec![1, 1, 1]);
        }
        for node in cluster.nodes() {
            node.command(&["FLUSHALL"]).unwrap();
        }
    }
}

/// After `FLUSHALL` (Redis lost its data) every key starts afresh, as documented: a spent
/// user is admitted its limit again, no decision fails, and the shard's hash is written anew
/// with a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flushall_every_key_starts_afresh() {
    let Some(server) = RedisServer::start_or_skip("after_flushall_every_key_starts_afresh") else {
        return;
    };
    let limiter = three_limits(&[server.url()], false, None).await;
    let (rounds, ttl) = common::admitted_around_flushall(&limiter, &server).await;
    println!("admitted of 7 before and after FLUSHALL: {rounds:?}; the shard's hash TTL {ttl} ms");
    assert_eq!(rounds, vec![5, 5]);
    assert!(ttl > 0, "{ttl}");
}

/// Redis killed with `kill -9` and started again, empty, while 64 callers decide in batches:
/// every decision is answered within its call bound (by the failure policy while Redis is
/// gone), decisions are back on Redis once it is, and the new server's shards are written
/// anew — with a TTL — and decide exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_redis_is_ridden_through_under_batched_load() {
    let Some(server) = RedisServer::start_or_skip("a_killed_and_restarted_redis_is_ridden_through")
    else {
        return;
    };
    let server = std::sync::Arc::new(std::sync::Mutex::new(server));
    let url = server.lock().unwrap().url();
    let bound = Duration::from_millis(100);
    let limiter = RateLimiter::builder()
        .limit(Limit::new("api", Algorithm::Gcra, Quota::per_hour(n(5))).keyed_by("user"))
        .redis(StoreOptions::new(standalone(url).await).call_timeout(bound))
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap();
    common::assert_on_redis(&limiter, "warm").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..64 {
        let (limiter, stop) = (limiter.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let (mut slowest, mut decided, mut degraded, mut i) = (Duration::ZERO, 0u32, 0u32, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let user = format!("c{c}-{i}");
                let (v, took) =
                    common::beside_a_timer(bound, limiter.check(&[("user", &user)])).await;
                let v = v.unwrap();
                slowest = slowest.max(took);
                decided += 1;
                degraded += u32::from(v.degraded.is_some());
                i += 1;
            }
            (slowest, decided, degraded)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarting = server.clone();
    let killed = Instant::now();
    tokio::task::spawn_blocking(move || restarting.lock().unwrap().restart().unwrap())
        .await
        .unwrap();
    let up = killed.elapsed();
    let back = common::back_on_redis(
        &limiter,
        "probe",
        killed,
        Duration::from_secs(10),
        Duration::from_millis(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut slowest, mut decided, mut degraded) = (Duration::ZERO, 0, 0);
    for c in callers {
        let (s, d, g) = c.await.unwrap();
        slowest = slowest.max(s);
        decided += d;
        degraded += g;
    }
    // On the new server: a fresh user is admitted exactly its limit, and the shard's hash has
    // a TTL.
    let mut admitted = 0;
    for _ in 0..7 {
        let v = limiter.check(&[("user", "after")]).await.unwrap();
        assert!(v.degraded.is_none(), "{v:?}");
        admitted += u32::from(v.allowed);
    }
    let hash = limiter.redis_location("api", "after").unwrap().key;
    let ttl = number(&server.lock().unwrap(), &["PTTL", &hash]);
    println!(
        "kill -9 and restart under 64 batched callers: {decided} decided, {degraded} by the \
         failure policy, slowest answer {slowest:?} beyond a plain timer's lateness (bound \
         {bound:?}); Redis up again after \
         {up:?}, decisions on Redis {back:?} after the kill; after it {admitted} of 7 admitted, \
         the shard's hash TTL {ttl} ms"
    );
    assert!(degraded > 0, "the outage was seen");
    assert!(slowest <= bound + Duration::from_millis(50), "{slowest:?}");
    assert_eq!(admitted, 5);
    assert!(ttl > 0, "{ttl}");
}

/// A shard's hash is a hash table from its first write, whichever of the script and the
/// native command makes it: both write the same `:v` mark, longer than a listpack value, so
/// Redis never keeps a few hundred states in a listpack it scans end to end on every lookup.
/// After `FLUSHALL` the hash written anew is a hash table again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_hash_is_a_hash_table_from_its_first_write() {
    let Some(server) = RedisServer::start_native_or_skip("a_shard_hash_is_a_hash_table") else {
        return;
    };
    let mut limiters = Vec::new();
    for (name, native) in [("by-script", false), ("by-command", true)] {
        let limiter = RateLimiter::builder()
            .limit(Limit::new(name, Algorithm::Gcra, Quota::per_hour(n(5))).keyed_by("user"))
            .redis(StoreOptions::new(standalone(server.url()).await))
            .redis_native_command(native)
            .failure_policy(FailurePolicy::FailClosed)
            .build()
            .unwrap();
        limiters.push((name, limiter));
    }
    let read = |cmd: &[&str]| server.command(cmd).unwrap().trim().to_string();
    for round in ["first write", "after FLUSHALL"] {
        let mut marks = Vec::new();
        for (name, limiter) in &limiters {
            assert!(limiter.check(&[("user", "u")]).await.unwrap().allowed);
            let hash = limiter.redis_location(name, "u").unwrap().key;
            let encoding = read(&["OBJECT", "ENCODING", &hash]);
            let fields = read(&["HLEN", &hash]);
            let mark = read(&["HGET", &hash, ":v"]);
            println!("{round}, {name}: {encoding} of {fields} fields; :v {mark:?}");
            assert_eq!(encoding, "hashtable", "{round}, {name}");
            assert_eq!(fields, "5", "{round}, {name}: the state, :c, :d, :x and :v");
            assert!(
                mark.len() > 64,
                "{round}, {name}: longer than a listpack value"
            );
            marks.push(mark);
        }
        assert_eq!(
            marks[0], marks[1],
            "the script and the command write the same mark"
        );
        server.command(&["FLUSHALL"]).unwrap();
    }
    let calls = server.command_calls(&["floodwall.gcra"]).unwrap();
    assert_eq!(calls, 2, "the second limiter decided with the command");
}
