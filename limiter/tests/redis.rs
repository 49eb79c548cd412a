//! The Redis store on real servers these tests start: exactness across instances on
//! standalone and on a 3-master Cluster, agreement across skewed local clocks, and the
//! failure policies through a blackholing proxy.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use floodwall_core::ManualClock;
use floodwall_core::health::{HealthGate, NodeBreaker};
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_limiter::{
    Algorithm, Degraded, FailurePolicy, Limit, LimitError, Quota, RateLimiter,
};
use floodwall_testkit::{FaultProxy, RedisCluster, RedisServer, on_each_topology};

mod common;
use common::{assert_on_redis, connect, standalone};

const INSTANCES: usize = 8;
const TASKS: usize = 50;
const LIMIT: u32 = 100;

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Gcra,
    Algorithm::FixedWindow,
    Algorithm::SlidingLog,
    Algorithm::SlidingCounter,
];

fn instance(
    conn: RedisConnection,
    alg: Algorithm,
    quota: Quota,
    clock: ManualClock,
) -> RateLimiter {
    RateLimiter::builder()
        .limit(Limit::new("api", alg, quota).keyed_by("user"))
        .redis(StoreOptions::new(conn).call_timeout(Duration::from_secs(5)))
        .failure_policy(FailurePolicy::FailClosed)
        .clock(clock)
        .build()
        .unwrap()
}

/// 8 instances (own connections) × 50 concurrent tasks on one key, per algorithm: exactly
/// `LIMIT` admitted. The quota's period is 30 days, so nothing refills during the test (and
/// a window boundary, every 30 days of Redis time, is a second's chance in 2.6 million).
async fn exactness(urls: Vec<String>, cluster: bool) {
    for alg in ALGORITHMS {
        let quota = Quota::new(n(LIMIT), Duration::from_secs(30 * 86_400));
        let mut instances = Vec::new();
        for _ in 0..INSTANCES {
            instances.push(instance(
                connect(&urls, cluster).await,
                alg,
                quota,
                ManualClock::new(),
            ));
        }
        let user = format!("exact-{alg:?}-{}", std::process::id());
        let admitted = Arc::new(AtomicU32::new(0));
        let mut handles = Vec::new();
        for limiter in &instances {
            for _ in 0..TASKS {
                let (limiter, admitted, user) = (limiter.clone(), admitted.clone(), user.clone());
                handles.push(tokio::spawn(async move {
                    let v = limiter.check(&[("user", &user)]).await.unwrap();
                    assert!(v.degraded.is_none());
                    if v.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let b = v.binding.unwrap();
                        assert_eq!(b.decision.remaining, 0);
                        assert!(b.decision.retry_after.unwrap() > Duration::ZERO);
                    }
                }));
            }
        }
        for h in handles {
            h.await.unwrap();
        }
        let admitted = admitted.load(Ordering::Relaxed);
        println!(
            "{} {alg:?}: {INSTANCES} instances x {TASKS} tasks admitted {admitted} of limit {LIMIT}",
            if cluster { "cluster" } else { "standalone" }
        );
        assert_eq!(admitted, LIMIT, "{alg:?} admitted exactly the limit");
    }
}

/// On a standalone server and on a 3-master Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_admit_exactly_the_limit() {
    on_each_topology("instances_admit_exactly_the_limit", |t| {
        exactness(t.urls, t.cluster)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_the_cluster_and_several_limits_stay_all_or_nothing() {
    let Some(cluster) = RedisCluster::start_or_skip(
        "keys_spread_over_the_cluster_and_several_limits_stay_all_or_nothing",
        3,
    ) else {
        return;
    };
    let conn = connect(&cluster.urls(), true).await;
    let limiter = RateLimiter::builder()
        .limit(Limit::new("user", Algorithm::Gcra, Quota::per_hour(n(3))).keyed_by("user"))
        .limit(Limit::new(
            "global",
            Algorithm::SlidingLog,
            Quota::per_hour(n(10)),
        ))
        .redis(StoreOptions::new(conn).call_timeout(Duration::from_secs(5)))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    // 6 users × 5 requests: each user gets 3, until the global 10 runs out; denials by the
    // per-user limit must not take from the global one.
    let mut admitted = 0;
    for round in 0..5 {
        for u in 0..6 {
            let user = format!("spread-{u}");
            let v = limiter.check(&[("user", &user)]).await.unwrap();
            if v.allowed {
                admitted += 1;
            } else if round < 3 {
                assert_eq!(v.binding.unwrap().name.as_ref(), "global");
            }
        }
    }
    assert_eq!(
        admitted, 10,
        "exactly the global limit, per-user denials took nothing"
    );
    // The user keys were spread over the masters.
    let mut nodes = std::collections::HashSet::new();
    for u in 0..6 {
        let key = limiter
            .redis_location("user", &format!("spread-{u}"))
            .unwrap()
            .key;
        let node = cluster.node_for_key(&key).unwrap();
        nodes.insert(node.port());
    }
    assert!(nodes.len() >= 2, "keys on {} nodes", nodes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_with_skewed_clocks_agree() {
    let Some(server) = RedisServer::start_or_skip("instances_with_skewed_clocks_agree") else {
        return;
    };
    for alg in ALGORITHMS {
        let quota = Quota::per_minute(n(5));
        // Three instances whose local clocks read 0 s, +7 s and +30 s.
        let mut instances = Vec::new();
        for skew in [0, 7, 30] {
            let clock = ManualClock::new();
            clock.advance(Duration::from_secs(skew));
            instances.push(instance(
                connect(&[server.url()], false).await,
                alg,
                quota,
                clock,
            ));
        }
        let user = format!("skew-{alg:?}");
        let mut admitted = 0;
        let mut waits = Vec::new();
        for i in 0..12 {
            let v = instances[i % 3].check(&[("user", &user)]).await.unwrap();
            if v.allowed {
                admitted += 1;
            } else {
                waits.push(v.retry_after().unwrap());
            }
        }
        assert_eq!(admitted, 5, "{alg:?}");
        // Every instance reports the same wait (Redis's clock), give or take the time the
        // test took between calls.
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(
            *max - *min < Duration::from_millis(500),
            "{alg:?}: {waits:?}"
        );
        // At most a period; the sliding counter may wait into the next window (2 periods).
        assert!(*max <= Duration::from_secs(120), "{alg:?}: {waits:?}");
    }
}

/// Through a blackholing proxy: every decision returns within the bound, the policy decides,
/// the breaker then answers without waiting, and after healing decisions are exact again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_redis_follows_each_policy_within_the_bound() {
    let Some(server) =
        RedisServer::start_or_skip("blackholed_redis_follows_each_policy_within_the_bound")
    else {
        return;
    };
    let bound = Duration::from_millis(60);
    let policies = [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::Insurance { instances: n(4) },
    ];
    for (p, policy) in policies.into_iter().enumerate() {
        let proxy = FaultProxy::start(server.addr()).await.unwrap();
        let conn = standalone(proxy.redis_url()).await;
        let breaker_clock = ManualClock::new();
        let gate_clock = breaker_clock.clone();
        let gates = move |_: &str| -> Arc<dyn HealthGate> {
            Arc::new(
                NodeBreaker::builder()
                    .failures(3)
                    .open_for(Duration::from_secs(5))
                    .clock(gate_clock.clone())
                    .build()
                    .unwrap(),
            )
        };
        let limiter = RateLimiter::builder()
            .limit(Limit::new("api", Algorithm::Gcra, Quota::per_hour(n(20))).keyed_by("user"))
            .redis(
                StoreOptions::new(conn)
                    .call_timeout(bound)
                    .health_gate(gates),
            )
            .failure_policy(policy)
            .build()
            .unwrap();
        let user = format!("policy-{p}");
        assert_on_redis(&limiter, &user).await;

        proxy.blackhole();
        let mut admitted = 0;
        let mut slowest_after_open = Duration::ZERO;
        for i in 0..10 {
            let started = Instant::now();
            let result = limiter.check(&[("user", &user)]).await;
            let took = started.elapsed();
            assert!(
                took <= bound + Duration::from_millis(50),
                "{policy:?}: took {took:?}"
            );
            if i >= 3 {
                // The breaker opened after 3 failures: no more waiting on Redis.
                slowest_after_open = slowest_after_open.max(took);
            }
            match policy {
                FailurePolicy::FailOpen => {
                    let v = result.unwrap();
                    assert!(v.allowed);
                    assert_eq!(v.degraded, Some(Degraded::FailedOpen));
                }
                FailurePolicy::FailClosed => {
                    assert!(
                        matches!(result, Err(LimitError::Unavailable(_))),
                        "{result:?}"
                    );
                }
                FailurePolicy::Insurance { .. } => {
                    let v = result.unwrap();
                    assert_eq!(v.degraded, Some(Degraded::Insurance));
                    admitted += u32::from(v.allowed);
                }
            }
        }
        assert!(
            slowest_after_open < Duration::from_millis(5),
            "{policy:?}: with the breaker open a decision took {slowest_after_open:?}"
        );
        if let FailurePolicy::Insurance { .. } = policy {
            assert_eq!(admitted, 5, "a quarter of 20 per instance");
        }
        println!(
            "{policy:?}: blackholed decisions within {bound:?} + 50 ms; breaker-open decisions \
             at most {slowest_after_open:?}"
        );

        // Heal; once the breaker lets a probe through, decisions are exact again.
        proxy.heal();
        proxy.reset_all();
        assert!(proxy.wait_accepted(2, Duration::from_secs(5)).await);
        breaker_clock.advance(Duration::from_secs(5));
        let fresh = format!("healed-{p}");
        let mut admitted = 0;
        let mut probed = false;
        for _ in 0..40 {
            match limiter.check(&[("user", &fresh)]).await {
                Ok(v) if v.degraded.is_none() => {
                    probed = true;
                    admitted += u32::from(v.allowed);
                }
                other => panic!("{policy:?} after heal: {other:?}"),
            }
        }
        assert!(probed);
        assert_eq!(admitted, 20, "{policy:?}: exact again after heal");
    }
}

/// The same requests on Redis and in memory (a frozen clock) get the same answers: allowed,
/// remaining, and waits within the few milliseconds Redis's clock moves meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_decides_like_the_memory_store() {
    let Some(server) = RedisServer::start_or_skip("redis_decides_like_the_memory_store") else {
        return;
    };
    for alg in ALGORITHMS {
        let quota = Quota::per_minute(n(6)).allow_burst(n(4));
        let remote = instance(
            connect(&[server.url()], false).await,
            alg,
            quota,
            ManualClock::new(),
        );
        let local = RateLimiter::builder()
            .limit(Limit::new("api", alg, quota).keyed_by("user"))
            .clock(ManualClock::starting_at(Duration::from_secs(3600)))
            .build()
            .unwrap();
        let user = format!("same-{alg:?}");
        for cost in [1, 2, 1, 3, 1, 1, 2] {
            let d = [("user", user.as_str())];
            let r = remote.check_n(&d, n(cost)).await.unwrap();
            let l = local.check_n(&d, n(cost)).await.unwrap();
            let (r, l) = (r.binding.unwrap().decision, l.binding.unwrap().decision);
            assert_eq!(
                (r.allowed, r.remaining, r.limit),
                (l.allowed, l.remaining, l.limit),
                "{alg:?} cost {cost}"
            );
            let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_millis(250);
            if !matches!(alg, Algorithm::FixedWindow | Algorithm::SlidingCounter) {
                // Windows are aligned to each clock's zero, so only GCRA and the log compare.
                assert!(
                    close(r.reset_after, l.reset_after),
                    "{alg:?}: {r:?} vs {l:?}"
                );
                match (r.retry_after, l.retry_after) {
                    (Some(a), Some(b)) => assert!(close(a, b), "{alg:?}: {r:?} vs {l:?}"),
                    (a, b) => assert_eq!(a.is_some(), b.is_some()),
                }
            }
        }
    }
}

/// One tenant's state that is not ours — a GCRA field holding text, a window counter's key
/// holding a list (`WRONGTYPE` from Redis) — fails that tenant's decisions alone: the node
/// answered, so its gate stays closed and every other tenant is decided on Redis as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_key_degrades_only_its_own_tenant() {
    let Some(server) = RedisServer::start_or_skip("a_wrong_type_key_degrades_only_its_own_tenant")
    else {
        return;
    };
    for alg in [Algorithm::Gcra, Algorithm::FixedWindow] {
        let conn = standalone(server.url()).await;
        let limiter = RateLimiter::builder()
            .limit(Limit::new("api", alg, Quota::per_hour(n(1000))).keyed_by("user"))
            .redis(StoreOptions::new(conn))
            .failure_policy(FailurePolicy::FailOpen)
            .build()
            .unwrap();
        let bad = limiter.redis_location("api", "tenant-bad").unwrap();
        match &bad.field {
            Some(field) => server.command(&["HSET", &bad.key, field, "x"]).unwrap(),
            None => server.command(&["LPUSH", &bad.key, "x"]).unwrap(),
        };
        one_bad_tenant(&limiter, alg).await;
        server.command(&["FLUSHALL"]).unwrap();
    }
}

/// 40 tenants decided 5 times each, with `tenant-bad` first each round, on the same node.
async fn one_bad_tenant(limiter: &RateLimiter, alg: Algorithm) {
    let other_degraded = Arc::new(AtomicU32::new(0));
    let bad_degraded = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for t in 0..40 {
        let (limiter, other_degraded, bad_degraded) = (
            limiter.clone(),
            other_degraded.clone(),
            bad_degraded.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let user = format!("tenant-{t}");
            for _ in 0..5 {
                // The bad tenant's request goes first each round, on the same node.
                let v = limiter.check(&[("user", "tenant-bad")]).await.unwrap();
                if v.degraded.is_some() {
                    bad_degraded.fetch_add(1, Ordering::Relaxed);
                }
                let v = limiter.check(&[("user", &user)]).await.unwrap();
                if v.degraded.is_some() {
                    other_degraded.fetch_add(1, Ordering::Relaxed);
                }
                assert!(v.allowed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (other, bad) = (
        other_degraded.load(Ordering::Relaxed),
        bad_degraded.load(Ordering::Relaxed),
    );
    println!(
        "{alg:?}, a state not ours: {bad} of its 200 decisions degraded; other tenants: {other} of 200 degraded"
    );
    assert_eq!(
        bad, 200,
        "the bad tenant's decisions follow the failure policy"
    );
    assert_eq!(other, 0, "no other tenant is degraded");
}

/// A request that one of two limits denies costs a give-back of what the other consumed: the
/// whole decision, give-back included, stays within one call bound (it used to take two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_limit_denial_stays_within_one_call_bound() {
    let Some(server) =
        RedisServer::start_or_skip("a_multi_limit_denial_stays_within_one_call_bound")
    else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = standalone(proxy.redis_url()).await;
    proxy.set_latency(Duration::from_millis(40));
    let build = |bound: Duration| {
        RateLimiter::builder()
            .limit(Limit::new(
                "global",
                Algorithm::Gcra,
                Quota::per_hour(n(1000)),
            ))
            .limit(
                Limit::new("user", Algorithm::FixedWindow, Quota::per_hour(n(1))).keyed_by("user"),
            )
            .redis(StoreOptions::new(conn.clone()).call_timeout(bound))
            .failure_policy(FailurePolicy::FailClosed)
            .build()
            .unwrap()
    };
    // How long an admitted two-limit decision takes through the slow link (no give-back).
    let unbounded = build(Duration::from_secs(5));
    let mut rtt = Duration::MAX;
    for i in 0..3 {
        let started = Instant::now();
        assert!(
            unbounded
                .check(&[("user", &format!("m{i}"))])
                .await
                .unwrap()
                .allowed
        );
        rtt = rtt.min(started.elapsed());
    }
    // Long enough for a decision, too short for a decision and a give-back in a row.
    let bound = rtt.mul_f64(1.6);
    let limiter = build(bound);
    // "u" has used its one request (through the unbounded twin: same keys, same Redis).
    assert!(unbounded.check(&[("user", "u")]).await.unwrap().allowed);
    let started = Instant::now();
    let denied = limiter.check(&[("user", "u")]).await;
    let took = started.elapsed();
    println!(
        "multi-limit denial with a give-back: {took:?} (one round trip {rtt:?}, call bound {bound:?}): {denied:?}"
    );
    // On a machine slow enough to miss the bound the decision fails closed instead: the
    // bound holds either way.
    if let Ok(v) = &denied {
        assert!(!v.allowed);
    }
    assert!(
        took <= bound + Duration::from_millis(30),
        "took {took:?}, bound {bound:?}"
    );
}

/// Redis admits 3 of a key's 3, then dies: the insurance limiter starts from that last verdict
/// and admits 0 more for the key in that window (formerly it handed out a fresh quota of 3),
/// while a key Redis never saw still gets the insurance quota. For every algorithm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insurance_starts_from_the_last_redis_verdict() {
    for alg in ALGORITHMS {
        let Some(mut server) =
            RedisServer::start_or_skip("insurance_starts_from_the_last_redis_verdict")
        else {
            return;
        };
        let conn = RedisConnection::standalone(server.url())
            .call_timeout(Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        let limiter = RateLimiter::builder()
            .limit(Limit::new("api", alg, Quota::per_hour(n(3))).keyed_by("user"))
            .redis(StoreOptions::new(conn))
            .failure_policy(FailurePolicy::Insurance { instances: n(1) })
            .build()
            .unwrap();
        let ann = [("user", "ann")];
        for _ in 0..3 {
            let v = limiter.check(&ann).await.unwrap();
            assert!(v.allowed && v.degraded.is_none(), "{alg:?}: {v:?}");
        }
        server.stop();
        let mut admitted = 0;
        for _ in 0..5 {
            let v = limiter.check(&ann).await.unwrap();
            assert!(v.degraded.is_some(), "{alg:?}: Redis is gone");
            admitted += u32::from(v.allowed);
        }
        let bob = [("user", "bob")];
        let mut fresh = 0;
        for _ in 0..5 {
            fresh += u32::from(limiter.check(&bob).await.unwrap().allowed);
        }
        println!(
            "{alg:?}: Redis admitted 3 of 3, then died; insurance admitted {admitted} more for that key (and {fresh} of 5 for a key Redis never saw)"
        );
        assert_eq!(admitted, 0, "{alg:?}");
        assert_eq!(fresh, 3, "{alg:?}");
    }
}

/// A user's per-minute GCRA (10) and per-hour fixed window (`hourly`) limits on `conn`, and
/// a limiter with the per-minute limit alone, to look at its state.
fn minute_and_hour(
    conn: RedisConnection,
    hourly: u32,
    policy: FailurePolicy,
) -> (RateLimiter, RateLimiter) {
    let minute =
        || Limit::new("minute", Algorithm::Gcra, Quota::per_minute(n(10))).keyed_by("user");
    let both = RateLimiter::builder()
        .limit(minute())
        .limit(
            Limit::new("hour", Algorithm::FixedWindow, Quota::per_hour(n(hourly))).keyed_by("user"),
        )
        .redis(StoreOptions::new(conn.clone()))
        .failure_policy(policy)
        .build()
        .unwrap();
    let minute_only = RateLimiter::builder()
        .limit(minute())
        .redis(StoreOptions::new(conn))
        .build()
        .unwrap();
    (both, minute_only)
}

/// A request's limits whose keys share a slot (a user's per-minute and per-hour limits) are
/// decided in one script call: one `EVALSHA` per decision on the server (`INFO
/// commandstats`), and a denial by one limit takes nothing from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_limits_in_one_slot_are_one_call_and_a_denial_takes_nothing() {
    let Some(server) = RedisServer::start_or_skip(
        "several_limits_in_one_slot_are_one_call_and_a_denial_takes_nothing",
    ) else {
        return;
    };
    let conn = connect(&[server.url()], false).await;
    let (limiter, minute_only) = minute_and_hour(conn, 5, FailurePolicy::default());
    // Scripts loaded before counting.
    limiter.check(&[("user", "warm")]).await.unwrap();
    server.command(&["CONFIG", "RESETSTAT"]).unwrap();
    let ann = [("user", "ann")];
    for _ in 0..5 {
        assert!(limiter.check(&ann).await.unwrap().allowed);
    }
    let room = |v: floodwall_limiter::Verdict| v.binding.unwrap().decision.remaining;
    let before = room(minute_only.peek(&ann).await.unwrap());
    let denied = limiter.check(&ann).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(&*denied.binding.as_ref().unwrap().name, "hour");
    let after = room(minute_only.peek(&ann).await.unwrap());
    assert_eq!(
        before, after,
        "the denial took nothing from the per-minute limit"
    );
    let scripts = server.command_calls(&["evalsha", "eval"]).unwrap();
    println!(
        "2 limits in one slot: {scripts} script calls for 6 decisions and 2 peeks ({:.2} per decision); the per-minute limit kept {after} of 10 after the hourly denial",
        scripts as f64 / 8.0
    );
    assert_eq!(scripts, 8, "one script call per decision");
}

/// Redis blackholed under 64 concurrent callers with batching on: decisions waiting behind
/// the calls in flight give up at their own call bound like the calls themselves, so every
/// answer comes within one bound (fail open here), and once the path heals decisions are
/// made on Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_redis_under_concurrent_batched_load_answers_within_the_bound() {
    let Some(server) = RedisServer::start_or_skip(
        "blackholed_redis_under_concurrent_batched_load_answers_within_the_bound",
    ) else {
        return;
    };
    blackholed_under_batched_load(&server).await;
}

/// The same on a server with floodwall-redis-module: its batches go as `FLOODWALL.GCRA`
/// (a command bounded by `StorePath::query_until`), and the bound holds as for the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_native_redis_under_concurrent_batched_load_answers_within_the_bound() {
    let Some(server) = RedisServer::start_native_or_skip(
        "blackholed_native_redis_under_concurrent_batched_load_answers_within_the_bound",
    ) else {
        return;
    };
    blackholed_under_batched_load(&server).await;
    let native = server.command_calls(&["floodwall.gcra"]).unwrap();
    println!("{native} FLOODWALL.GCRA calls");
    assert!(
        native > 0,
        "the native command decided before and after the blackhole"
    );
}

/// 64 callers deciding in batches through a proxy to `server` that blackholes: each
/// decision is answered by the failure policy within its bound; after healing, decisions are
/// on Redis again.
async fn blackholed_under_batched_load(server: &RedisServer) {
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let bound = Duration::from_millis(60);
    let conn = standalone(proxy.redis_url()).await;
    let limiter = RateLimiter::builder()
        .limit(Limit::new("api", Algorithm::Gcra, Quota::per_hour(n(1_000_000))).keyed_by("user"))
        .redis(StoreOptions::new(conn).call_timeout(bound))
        .failure_policy(FailurePolicy::FailOpen)
        .build()
        .unwrap();
    assert_on_redis(&limiter, "warm").await;

    proxy.blackhole();
    let mut callers = Vec::new();
    for c in 0..64 {
        let limiter = limiter.clone();
        callers.push(tokio::spawn(async move {
            let (mut slowest, mut degraded) = (Duration::ZERO, 0u32);
            for _ in 0..5 {
                let user = format!("u{c}");
                let (v, took) =
                    common::beside_a_timer(bound, limiter.check(&[("user", &user)])).await;
                let v = v.unwrap();
                slowest = slowest.max(took);
                degraded += u32::from(v.degraded == Some(Degraded::FailedOpen));
            }
            (slowest, degraded)
        }));
    }
    let (mut slowest, mut degraded) = (Duration::ZERO, 0);
    for c in callers {
        let (s, d) = c.await.unwrap();
        slowest = slowest.max(s);
        degraded += d;
    }
    proxy.heal();
    let healed = Instant::now();
    let back = common::back_on_redis(
        &limiter,
        "after",
        healed,
        Duration::from_secs(5),
        Duration::from_millis(20),
    )
    .await;
    println!(
        "blackholed, 64 callers x 5 batched decisions: {degraded} of 320 failed open, slowest answer {slowest:?} beyond a plain timer's lateness (bound {bound:?}); decided on Redis again {back:?} after healing"
    );
    assert_eq!(degraded, 320);
    assert!(slowest <= bound + Duration::from_millis(50), "{slowest:?}");
}

/// A wrong-type key inside a group (one tenant's per-hour key holds a list): that tenant's
/// request takes the failure policy and its per-minute limit is not charged; other tenants,
/// decided in the same way, are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_key_in_a_group_fails_only_its_request() {
    let Some(server) =
        RedisServer::start_or_skip("a_wrong_type_key_in_a_group_fails_only_its_request")
    else {
        return;
    };
    let conn = connect(&[server.url()], false).await;
    let (limiter, minute_only) = minute_and_hour(conn, 100, FailurePolicy::FailOpen);
    let bad_hour = limiter.redis_location("hour", "bad").unwrap().key;
    server.command(&["LPUSH", &bad_hour, "not ours"]).unwrap();
    let (mut bad, mut good) = (0, 0);
    for _ in 0..5 {
        bad += u32::from(
            limiter
                .check(&[("user", "bad")])
                .await
                .unwrap()
                .degraded
                .is_some(),
        );
        good += u32::from(
            limiter
                .check(&[("user", "good")])
                .await
                .unwrap()
                .degraded
                .is_some(),
        );
    }
    let room = |v: floodwall_limiter::Verdict| v.binding.unwrap().decision.remaining;
    let bad_room = room(minute_only.peek(&[("user", "bad")]).await.unwrap());
    let good_room = room(minute_only.peek(&[("user", "good")]).await.unwrap());
    println!(
        "wrong-type key in a group: bad tenant {bad} of 5 degraded (per-minute room left {bad_room}), other tenant {good} of 5 (room {good_room})"
    );
    assert_eq!((bad, good), (5, 0));
    assert_eq!(bad_room, 9, "the failed group charged nothing");
    assert_eq!(good_room, 4);
}
