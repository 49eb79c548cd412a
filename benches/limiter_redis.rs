//! Redis-backed decisions with 64 concurrent callers, ours beside the floor.
//!
//! `limiter_redis/64_callers`: a `RateLimiter` with one GCRA limit on Redis — with its default
//! exact batching (decisions waiting while calls are in flight go together as one script
//! call) and with batching off (`redis_max_batch(1)`: one script call per decision) — keys
//! built and replies parsed into a `Decision`, through floodwall's store path, against a bare
//! `EVALSHA` of a minimal GCRA script (no key building, a 0/1 reply) sent over a plain
//! redis-rs multiplexed connection: the floor, with nothing of floodwall's in the way.
//! Throughput is per decision. Afterwards the three run in six alternating rounds (each going
//! first in two of them) of 64 callers × 300 decisions, and each one's decisions per second,
//! p50 / p99 latency and ratio to the floor are printed.
//!
//! The bench starts its own `redis-server` (testkit) and is skipped without one.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floodwall::core::redis::{RedisConnection, Script, StoreOptions};
use floodwall::limiter::{Algorithm, Limit, Quota, RateLimiter};
use floodwall_testkit::RedisServer;

const CALLERS: u64 = 64;

/// The floor: the least a GCRA decision on Redis can be.
static MINIMAL_GCRA: Script = Script::new(
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + T
if new - now > cap then return 0 end
redis.call('SET', KEYS[1], new, 'PX', math.ceil((new - now) / 1000) + 1)
return 1
"#,
);

#[derive(Clone)]
enum Target {
    Ours(RateLimiter),
    Raw(::redis::aio::MultiplexedConnection, Arc<str>),
}

impl Target {
    async fn decide(&self, caller: u64, users: &[String], raw_keys: &[String]) {
        match self {
            Target::Ours(limiter) => {
                let v = limiter
                    .check(&[("user", &users[caller as usize])])
                    .await
                    .expect("decision");
                assert!(v.allowed && v.degraded.is_none());
            }
            Target::Raw(conn, sha) => {
                let mut conn = conn.clone();
                let allowed: i64 = ::redis::cmd("EVALSHA")
                    .arg(&**sha)
                    .arg(1)
                    .arg(&raw_keys[caller as usize])
                    .arg(1)
                    .arg(1_000_000_000u64)
                    .query_async(&mut conn)
                    .await
                    .expect("raw EVALSHA");
                assert_eq!(allowed, 1);
            }
        }
    }
}

/// Runs `per_caller` decisions on each of 64 concurrent callers; returns the wall time and,
/// if asked, every decision's latency.
async fn run(
    target: &Target,
    per_caller: u64,
    latencies: bool,
    users: &Arc<Vec<String>>,
    raw_keys: &Arc<Vec<String>>,
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let (target, users, raw_keys) = (target.clone(), users.clone(), raw_keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for _ in 0..per_caller {
                let t = Instant::now();
                target.decide(caller, &users, &raw_keys).await;
                if latencies {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("caller"));
    }
    (started.elapsed(), all)
}

fn redis_decisions(c: &mut Criterion) {
    let Some(server) = RedisServer::start_or_skip("limiter_redis bench") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let conn = rt.block_on(async {
        RedisConnection::standalone(server.url())
            .call_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    });
    let (plain, sha): (::redis::aio::MultiplexedConnection, String) = rt.block_on(async {
        let client = ::redis::Client::open(server.url()).unwrap();
        let mut plain = client.get_multiplexed_async_connection().await.unwrap();
        let sha = ::redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(MINIMAL_GCRA.source())
            .query_async(&mut plain)
            .await
            .unwrap();
        (plain, sha)
    });
    let limiter = |max_batch: usize| {
        RateLimiter::builder()
            .limit(
                Limit::new(
                    "api",
                    Algorithm::Gcra,
                    Quota::per_second(NonZeroU32::new(1_000_000).unwrap()),
                )
                .keyed_by("user"),
            )
            .redis(StoreOptions::new(conn.clone()))
            .redis_max_batch(max_batch)
            .build()
            .unwrap()
    };
    let users: Arc<Vec<String>> = Arc::new((0..CALLERS).map(|i| format!("user-{i}")).collect());
    let raw_keys: Arc<Vec<String>> =
        Arc::new((0..CALLERS).map(|i| format!("raw:{{user-{i}}}")).collect());
    let targets = [
        ("floodwall RateLimiter", Target::Ours(limiter(128))),
        (
            "floodwall RateLimiter, batching off",
            Target::Ours(limiter(1)),
        ),
        (
            "raw EVALSHA (minimal GCRA, plain redis-rs)",
            Target::Raw(plain, sha.into()),
        ),
    ];

    let mut g = c.benchmark_group("limiter_redis/64_callers");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for (name, target) in &targets {
        g.bench_function(*name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (target, users, raw_keys) = (target.clone(), users.clone(), raw_keys.clone());
                async move {
                    let per_caller = iters.div_ceil(CALLERS).max(1);
                    let (took, _) = run(&target, per_caller, false, &users, &raw_keys).await;
                    // Time per decision, scaled back to `iters` decisions.
                    took.mul_f64(iters as f64 / (per_caller * CALLERS) as f64)
                }
            })
        });
    }
    g.finish();

    // Latency percentiles: the three run in alternating rounds so that a machine that speeds
    // up or slows down meanwhile affects all alike.
    let n = targets.len();
    let mut took = vec![Duration::ZERO; n];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); n];
    for round in 0..6 {
        // The order rotates, so an order effect falls on all alike.
        for i in (0..n).map(|k| (k + round) % n) {
            let (_, target) = &targets[i];
            let (t, l) = rt.block_on(run(target, 300, true, &users, &raw_keys));
            took[i] += t;
            lat[i].extend(l);
        }
    }
    let mut rate = vec![0.0; n];
    for (i, (name, _)) in targets.iter().enumerate() {
        let l = &mut lat[i];
        l.sort();
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
        rate[i] = l.len() as f64 / took[i].as_secs_f64();
        eprintln!(
            "limiter_redis/64_callers/{name}: {:.0} decisions/s, p50 {:?}, p99 {:?} ({} decisions)",
            rate[i],
            pct(0.50),
            pct(0.99),
            l.len()
        );
    }
    let floor = rate[n - 1];
    for (i, (name, _)) in targets[..n - 1].iter().enumerate() {
        eprintln!(
            "limiter_redis/64_callers: {name} at {:.2}x the raw EVALSHA floor",
            rate[i] / floor
        );
    }
}

criterion_group!(benches, redis_decisions);
criterion_main!(benches);
