//! Redis-backed decisions, ours beside the floor.
//!
//! Four targets run the same decisions: a `RateLimiter` with one GCRA limit on Redis with its
//! default exact batching (decisions waiting while calls are in flight go together as one
//! script call), the same with batching off (`redis_max_batch(1)`: one script call per
//! decision), the same with token leases (`Lease` of up to 256 tokens for 20 ms: an instance
//! admits from a block of a key's tokens taken in one call) — each with keys built and
//! replies parsed into a `Decision`, through floodwall's store path — and the floor: a bare `EVALSHA` of a minimal GCRA script (no key building, a
//! 0/1 reply) sent over a plain redis-rs connection (multiplexed, or the redis-rs Cluster
//! connection), with nothing of floodwall's in the way.
//!
//! - `limiter_redis/64_callers` (criterion): 64 callers on standalone Redis, each on its own
//!   key. Throughput is per decision.
//! - Then a table, each scenario's targets in alternating rounds (the order rotates, so a
//!   machine that speeds up or slows down affects all alike): decisions per second, p50 and
//!   p99 latency, the ratio to the floor, and what each decision cost Redis — its CPU time
//!   (`used_cpu_user + used_cpu_sys` from `INFO cpu`, read before and after each run and
//!   summed over the Cluster's masters) per decision, and that against the floor's, and the
//!   decisions per script call (`INFO commandstats`: how large batches were) — for
//!   standalone 64 callers on 64 keys, on 10 000 keys and on 10 hot keys, 1 caller (on the
//!   shared runtime, and again on a current-thread runtime of its own, where no thread
//!   placement moves a round's latency), and a
//!   3-master Cluster with 64 callers on 10 000 keys and on 10 hot keys (and, on the
//!   Cluster, floodwall with 3 shards, one per master, beside the default 16). The client
//!   shares the machine's cores with Redis, so throughput is bounded by both: the last column
//!   is the client's CPU per decision (this process's, `/proc/self/stat`, the bench's own
//!   callers included), beside Redis's.
//!
//! - Then, on standalone Redis: memory per live state (100 000 keys decided once each, Redis
//!   `used_memory` before and after, the states counted in the shard's hash) and how soon
//!   the states nobody decides any more are removed (while the first half is decided again
//!   and again, the other half's states counted until the sweep has removed them, from the
//!   moment the last of them ended).
//!
//! The bench starts its own `redis-server`s (testkit) and is skipped without them. Under
//! `cargo test --benches` it runs each scenario once, briefly.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floodwall::core::redis::{RedisConnection, Script, StoreOptions};
use floodwall::limiter::Lease;
use floodwall::limiter::{Algorithm, Limit, Quota, RateLimiter};
use floodwall_testkit::{RedisCluster, RedisServer};

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

/// The most keys a scenario spreads over.
const MAX_KEYS: usize = 10_000;

#[derive(Clone)]
enum Target {
    Ours(RateLimiter),
    Raw(::redis::aio::MultiplexedConnection, Arc<str>),
    RawCluster(::redis::cluster_async::ClusterConnection, Arc<str>),
}

/// The keys, built once: `users` for floodwall, `raw` for the floor.
struct Keys {
    users: Vec<String>,
    raw: Vec<String>,
}

impl Target {
    async fn decide(&self, key: usize, keys: &Keys) {
        let raw = |sha: &str| {
            let mut cmd = ::redis::cmd("EVALSHA");
            cmd.arg(sha)
                .arg(1)
                .arg(&keys.raw[key])
                .arg(1)
                .arg(1_000_000_000u64);
            cmd
        };
        let allowed: i64 = match self {
            Target::Ours(limiter) => {
                let v = limiter
                    .check(&[("user", &keys.users[key])])
                    .await
                    .expect("decision");
                assert!(v.degraded.is_none());
                i64::from(v.allowed)
            }
            Target::Raw(conn, sha) => raw(sha)
                .query_async(&mut conn.clone())
                .await
                .expect("raw EVALSHA"),
            Target::RawCluster(conn, sha) => raw(sha)
                .query_async(&mut conn.clone())
                .await
                .expect("raw EVALSHA on the Cluster"),
        };
        assert_eq!(allowed, 1);
    }
}

/// Runs `per_caller` decisions on each of `callers` concurrent callers, caller `c`'s `i`-th
/// decision on key `(c + i * callers) % keys`; returns the wall time and each decision's
/// latency (if asked).
async fn run(
    target: &Target,
    callers: usize,
    spread: usize,
    per_caller: usize,
    latencies: bool,
    keys: &Arc<Keys>,
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (target, keys) = (target.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(if latencies { per_caller } else { 0 });
            for i in 0..per_caller {
                let t = Instant::now();
                target.decide((c + i * callers) % spread, &keys).await;
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

/// floodwall's limiter for the bench: batches of up to `max_batch`, leases, and the shard
/// count (`None`: the default for the topology).
fn limiter(
    conn: &RedisConnection,
    max_batch: usize,
    lease: Option<Lease>,
    shards: Option<u16>,
    native: bool,
) -> RateLimiter {
    let mut limit = Limit::new(
        "api",
        Algorithm::Gcra,
        Quota::per_second(NonZeroU32::new(1_000_000).unwrap()),
    )
    .keyed_by("user");
    if let Some(lease) = lease {
        limit = limit.lease(lease);
    }
    let mut builder = RateLimiter::builder()
        .limit(limit)
        .redis(StoreOptions::new(conn.clone()))
        .redis_max_batch(max_batch)
        .redis_native_command(native);
    if let Some(shards) = shards {
        builder = builder.redis_shards(shards);
    }
    builder.build().unwrap()
}

/// floodwall batched, floodwall unbatched and the floor, on one topology.
fn targets(
    rt: &tokio::runtime::Runtime,
    urls: &[String],
    cluster: bool,
) -> Vec<(&'static str, Target)> {
    // Leases of up to 256 tokens for 20 ms (the burst shrinks by the 20,000 tokens 20 ms earn).
    let lease = Lease::new(NonZeroU32::new(256).unwrap(), Duration::from_millis(20));
    rt.block_on(async {
        let conn = if cluster {
            RedisConnection::cluster(urls.iter().cloned())
        } else {
            RedisConnection::standalone(urls[0].clone())
        }
        .call_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
        let load = ::redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(MINIMAL_GCRA.source())
            .clone();
        let floor = if cluster {
            let client = ::redis::cluster::ClusterClient::new(urls.to_vec()).unwrap();
            let mut c = client.get_async_connection().await.unwrap();
            let sha: String = load.query_async(&mut c).await.unwrap();
            Target::RawCluster(c, sha.into())
        } else {
            let client = ::redis::Client::open(urls[0].as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let sha: String = load.query_async(&mut c).await.unwrap();
            Target::Raw(c, sha.into())
        };
        let mut targets = vec![
            (
                "floodwall batched",
                Target::Ours(limiter(&conn, 128, None, None, true)),
            ),
            (
                "floodwall batched, Lua script",
                Target::Ours(limiter(&conn, 128, None, None, false)),
            ),
            (
                "floodwall unbatched",
                Target::Ours(limiter(&conn, 1, None, None, true)),
            ),
            (
                "floodwall leased",
                Target::Ours(limiter(&conn, 128, Some(lease), None, true)),
            ),
        ];
        if cluster {
            // One shard per master instead of the default 16: a master's batch is one hash.
            targets.push((
                "floodwall batched, 3 shards",
                Target::Ours(limiter(&conn, 128, None, Some(3), true)),
            ));
        }
        targets.push(("raw EVALSHA floor", floor));
        targets
    })
}

/// What the Redis servers at `urls` have done, summed: the CPU time (seconds, user + system,
/// `INFO cpu`) and the decision calls (`EVALSHA`, `EVAL` and `FLOODWALL.GCRA`,
/// `INFO commandstats`), read over a plain connection of its own.
fn redis_usage(urls: &[String]) -> (f64, u64) {
    let mut cpu = 0.0;
    let mut calls = 0;
    for url in urls {
        let mut conn = ::redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("a connection for INFO");
        let info: String = ::redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query(&mut conn)
            .expect("INFO cpu commandstats");
        for line in info.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            match k {
                "used_cpu_user" | "used_cpu_sys" => cpu += v.parse::<f64>().unwrap_or(0.0),
                "cmdstat_evalsha" | "cmdstat_eval" | "cmdstat_floodwall.gcra" => {
                    calls += v
                        .split(',')
                        .find_map(|f| f.strip_prefix("calls=")?.parse::<u64>().ok())
                        .unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    (cpu, calls)
}

/// This process's CPU time so far (seconds, user + system; `/proc/self/stat`, in clock ticks
/// of 10 ms): the client's side of the decisions, the bench's callers included.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the stat file's 14th and 15th fields: 12th and 13th after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs one scenario's targets in rotating rounds and prints a table row per target; `urls`
/// are the Redis servers whose CPU the decisions use.
#[allow(clippy::too_many_arguments)]
fn scenario(
    rt: &tokio::runtime::Runtime,
    name: &str,
    targets: &[(&'static str, Target)],
    urls: &[String],
    callers: usize,
    spread: usize,
    per_caller: usize,
    rounds: usize,
    keys: &Arc<Keys>,
) {
    let n = targets.len();
    let mut took = vec![Duration::ZERO; n];
    let mut cpu = vec![0f64; n];
    let mut calls = vec![0u64; n];
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut client = vec![0f64; n];
    for round in 0..rounds {
        for i in (0..n).map(|k| (k + round) % n) {
            let (cpu_before, calls_before) = redis_usage(urls);
            let client_before = own_cpu();
            let (t, l) = rt.block_on(run(&targets[i].1, callers, spread, per_caller, true, keys));
            let client_after = own_cpu();
            let (cpu_after, calls_after) = redis_usage(urls);
            cpu[i] += cpu_after - cpu_before;
            client[i] += client_after - client_before;
            calls[i] += calls_after.saturating_sub(calls_before);
            took[i] += t;
            lat[i].extend(l);
        }
    }
    // Redis's and the client's CPU per decision, in µs.
    let cpu: Vec<f64> = (0..n).map(|i| cpu[i] * 1e6 / lat[i].len() as f64).collect();
    let client: Vec<f64> = (0..n)
        .map(|i| client[i] * 1e6 / lat[i].len() as f64)
        .collect();
    let rate: Vec<f64> = (0..n)
        .map(|i| lat[i].len() as f64 / took[i].as_secs_f64())
        .collect();
    for (i, (target, _)) in targets.iter().enumerate() {
        let l = &mut lat[i];
        l.sort();
        let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
        eprintln!(
            "| {name} | {target} | {:.0} | {:?} | {:?} | {:.2}x | {:.2} µs | {:.2}x | {:.1} | {:.2} µs |",
            rate[i],
            pct(0.50),
            pct(0.99),
            rate[i] / rate[n - 1],
            cpu[i],
            cpu[i] / cpu[n - 1],
            l.len() as f64 / calls[i].max(1) as f64,
            client[i],
        );
    }
}

fn redis_decisions(c: &mut Criterion) {
    let Some(server) = RedisServer::start_native_or_skip("limiter_redis bench") else {
        return;
    };
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let keys = Arc::new(Keys {
        users: (0..MAX_KEYS).map(|i| format!("user-{i}")).collect(),
        raw: (0..MAX_KEYS).map(|i| format!("raw:{{user-{i}}}")).collect(),
    });
    let standalone = targets(&rt, &[server.url()], false);

    let mut g = c.benchmark_group("limiter_redis/64_callers");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for (name, target) in &standalone {
        g.bench_function(*name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (target, keys) = (target.clone(), keys.clone());
                async move {
                    let per_caller = (iters as usize).div_ceil(64).max(1);
                    let (took, _) = run(&target, 64, 64, per_caller, false, &keys).await;
                    // Time per decision, scaled back to `iters` decisions.
                    took.mul_f64(iters as f64 / (per_caller * 64) as f64)
                }
            })
        });
    }
    g.finish();

    let (per, rounds) = if full { (300, 6) } else { (10, 1) };
    eprintln!(
        "\n| scenario | target | decisions/s | p50 | p99 | vs floor | Redis CPU per decision | CPU vs floor | decisions per call | client CPU per decision |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|---|");
    // (scenario, callers, keys, decisions per caller, rounds). One caller's latency swings
    // between two levels from round to round, as the runtime's threads happen to meet the
    // connection's (tens of µs apart on a VM): that scenario runs in five times as many
    // rounds of a fifth the size, so every target sees both about equally often.
    let standalone_runs = [
        ("64 callers, 64 keys", 64, 64, per, rounds),
        ("64 callers, 10k keys", 64, MAX_KEYS, per, rounds),
        ("64 callers, 10 hot keys", 64, 10, per, rounds),
        ("1 caller", 1, MAX_KEYS, per * 2, rounds * 5),
    ];
    let urls = [server.url()];
    for (name, callers, spread, n, rounds) in standalone_runs {
        let name = format!("standalone, {name}");
        scenario(
            &rt,
            &name,
            &standalone,
            &urls,
            callers,
            spread,
            n,
            rounds,
            &keys,
        );
    }
    // One caller again, on a current-thread runtime with connections of its own: the caller,
    // the connections' tasks and the I/O driver share one thread, so a round trip takes the
    // same thread hand-offs every time, for every target.
    {
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let alone = targets(&current, &urls, false);
        scenario(
            &current,
            "standalone, 1 caller, current-thread runtime",
            &alone,
            &urls,
            1,
            MAX_KEYS,
            per * 2,
            rounds * 5,
            &keys,
        );
    }
    drop(standalone);
    memory(&rt, &server, if full { 100_000 } else { 2_000 });
    let Some(cluster) = RedisCluster::start_native_or_skip("limiter_redis bench (Cluster)", 3)
    else {
        return;
    };
    let clustered = targets(&rt, &cluster.urls(), true);
    for (name, spread) in [
        ("64 callers, 10k keys", MAX_KEYS),
        ("64 callers, 10 hot keys", 10),
    ] {
        let name = format!("3-master Cluster, {name}");
        let urls = cluster.urls();
        scenario(
            &rt, &name, &clustered, &urls, 64, spread, per, rounds, &keys,
        );
    }
}

/// A number from `INFO memory` or `DBSIZE`, read over a plain connection of its own.
fn redis_number(url: &str, cmd: &[&str], field: Option<&str>) -> u64 {
    let mut conn = ::redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("a connection");
    let mut c = ::redis::cmd(cmd[0]);
    for arg in &cmd[1..] {
        c.arg(*arg);
    }
    match field {
        None => c.query::<u64>(&mut conn).expect("a number"),
        Some(field) => {
            let info: String = c.query(&mut conn).expect("INFO");
            info.lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix(field)?
                        .strip_prefix(':')?
                        .parse()
                        .ok()
                })
                .expect("the INFO field")
        }
    }
}

/// Decides each of `keys[range]` once through `limiter`, on 64 callers; returns how many
/// were admitted.
async fn decide_each(limiter: &RateLimiter, keys: &Arc<Vec<String>>, upto: usize) -> usize {
    let tasks: Vec<_> = (0..64)
        .map(|c| {
            let (limiter, keys) = (limiter.clone(), keys.clone());
            tokio::spawn(async move {
                let mut admitted = 0;
                for key in keys[..upto].iter().skip(c).step_by(64) {
                    let d = limiter.check(&[("user", key)]).await.expect("decision");
                    assert!(d.degraded.is_none());
                    admitted += usize::from(d.allowed);
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("caller");
    }
    admitted
}

/// The states of the limit `api` in its one shard's hash on a standalone server (`key`):
/// the hash's fields less its own (`:c`, `:d`, `:x`, `:v`, see `limit.lua`).
fn states(url: &str, key: &str) -> u64 {
    let mut conn = ::redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("a connection");
    let fields: u64 = ::redis::cmd("HLEN")
        .arg(key)
        .query(&mut conn)
        .expect("HLEN");
    let own: Vec<Option<Vec<u8>>> = ::redis::cmd("HMGET")
        .arg(key)
        .arg(":c")
        .arg(":d")
        .arg(":x")
        .arg(":v")
        .query(&mut conn)
        .expect("HMGET");
    fields - own.iter().flatten().count() as u64
}

/// A limiter of one GCRA limit `api` keyed by `user`, on the standalone server at `url`.
fn api_limiter(rt: &tokio::runtime::Runtime, url: &str, quota: Quota) -> RateLimiter {
    rt.block_on(async {
        let conn = RedisConnection::standalone(url.to_owned())
            .call_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        RateLimiter::builder()
            .limit(Limit::new("api", Algorithm::Gcra, quota).keyed_by("user"))
            .redis(StoreOptions::new(conn))
            .build()
            .unwrap()
    })
}

/// Memory per live state and the removal of states nobody decides any more, on standalone:
/// `n` keys decided once each (a state that ends 2 s later: one token per 2 s, burst 2),
/// `used_memory` before and after, the states counted in the shard's hash; then, while the
/// first half is decided again and again (by a quota whose states stay 86 s ahead, so they
/// stay), the second half's states are counted until the sweep has removed them.
fn memory(rt: &tokio::runtime::Runtime, server: &RedisServer, n: usize) {
    let url = server.url();
    server.command(&["FLUSHALL"]).expect("FLUSHALL");
    let keys: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("m-{i}")).collect());
    let quota = Quota::new(NonZeroU32::new(1).unwrap(), Duration::from_secs(2))
        .allow_burst(NonZeroU32::new(2).unwrap());
    let limiter = api_limiter(rt, &url, quota);
    let hash = limiter.redis_location("api", "m-0").expect("on Redis").key;
    let used = || redis_number(&url, &["INFO", "memory"], Some("used_memory"));
    let before = used();
    assert_eq!(rt.block_on(decide_each(&limiter, &keys, n)), n);
    let ended_by = Instant::now() + Duration::from_secs(2);
    let live = states(&url, &hash);
    let bytes = used().saturating_sub(before);
    eprintln!(
        "\nmemory: {live} live states after {n} keys decided: {:.0} bytes per state (Redis \
         used_memory; {} keys in Redis)",
        bytes as f64 / live.max(1) as f64,
        redis_number(&url, &["DBSIZE"], None)
    );
    // The first half, decided again and again while the second half's states end and go.
    let busy = api_limiter(
        rt,
        &url,
        Quota::new(NonZeroU32::new(1_000).unwrap(), Duration::from_secs(86_400)),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let touching = {
        let (busy, keys, stop) = (busy.clone(), keys.clone(), stop.clone());
        rt.spawn(async move {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(decide_each(&busy, &keys, n / 2).await, n / 2);
                rounds += 1;
            }
            rounds
        })
    };
    let touched = (n / 2) as u64;
    let mut half_gone = None;
    let give_up = ended_by + Duration::from_secs(20);
    let left = loop {
        let left = states(&url, &hash).saturating_sub(touched);
        let since = Instant::now().saturating_duration_since(ended_by);
        if left <= touched / 2 && half_gone.is_none() {
            half_gone = Some(since);
        }
        if left == 0 || Instant::now() > give_up {
            break left;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let all_gone = Instant::now().saturating_duration_since(ended_by);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = rt.block_on(touching).expect("the touching callers");
    eprintln!(
        "memory: of {touched} states nobody decided again, half were removed {:?} and all but \
         {left} {all_gone:?} after the last of them ended, while the other {touched} were \
         decided {rounds} times each (bound: two sweep passes, each of {} steps 2 ms apart or \
         of 1 s, whichever is longer: {:?})",
        half_gone.unwrap_or_default(),
        n.div_ceil(128),
        2 * Duration::from_millis(2 * n.div_ceil(128) as u64).max(Duration::from_secs(1)),
    );
}

criterion_group!(benches, redis_decisions);
criterion_main!(benches);
