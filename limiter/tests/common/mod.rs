//! What the limiter's Redis tests share: connecting to a server (or a `FaultProxy` in front
//! of one) the test started, and checking that a limiter decides on Redis before a fault.
#![allow(dead_code)] // each test file uses some of these

use floodwall_core::redis::RedisConnection;
use floodwall_limiter::RateLimiter;

/// A connection to the standalone server (or proxy) at `url`.
pub(crate) async fn standalone(url: impl Into<String>) -> RedisConnection {
    RedisConnection::standalone(url).connect().await.unwrap()
}

/// A connection to the Cluster at `urls`, or to the standalone server at `urls[0]`.
pub(crate) async fn connect(urls: &[String], cluster: bool) -> RedisConnection {
    if cluster {
        RedisConnection::cluster(urls.iter().cloned())
            .connect()
            .await
            .unwrap()
    } else {
        standalone(urls[0].clone()).await
    }
}

/// Asserts that `limiter` decides `user` on Redis, not degraded: the warm-up before a test
/// breaks the connection.
pub(crate) async fn assert_on_redis(limiter: &RateLimiter, user: &str) {
    let verdict = limiter.check(&[("user", user)]).await.unwrap();
    assert!(
        verdict.degraded.is_none(),
        "{user} not decided on Redis: {verdict:?}"
    );
}

/// A limiter on the Cluster at `urls` (its own connection), as the resharding tests run it:
/// one GCRA-or-other limit `api` keyed by `user`, `limit` per 30 days (nothing refills
/// during a test), failing closed, a 5 s call bound.
pub(crate) async fn cluster_instance(
    urls: &[String],
    alg: floodwall_limiter::Algorithm,
    limit: u32,
) -> RateLimiter {
    use std::time::Duration;

    use floodwall_core::redis::StoreOptions;
    use floodwall_limiter::{FailurePolicy, Limit, Quota};

    let conn = connect(urls, true).await;
    let quota = Quota::new(
        std::num::NonZeroU32::new(limit).unwrap(),
        Duration::from_secs(30 * 86_400),
    );
    RateLimiter::builder()
        .limit(Limit::new("api", alg, quota).keyed_by("user"))
        .redis(StoreOptions::new(conn).call_timeout(Duration::from_secs(5)))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap()
}

/// Puts 60 neighbours in the slot of the limiter's key `key` (their hash tag is its), so the
/// slot moves in several `MIGRATE` batches and the limiter's keys meet a half-moved slot;
/// returns the port of the master that holds it and of another master to move it to.
pub(crate) fn crowd_the_slot(cluster: &floodwall_testkit::RedisCluster, key: &str) -> (u16, u16) {
    let source = cluster.node_for_key(key).unwrap();
    let open = key.find('{').expect("a hash tag");
    let close = open + key[open..].find('}').expect("a hash tag");
    let tag = &key[open..=close];
    for i in 0..60 {
        let k = format!("{tag}:neighbour:{i}");
        source.command(&["SET", &k, "x"]).unwrap();
    }
    let source = source.port();
    let to = cluster
        .nodes()
        .iter()
        .map(|n| n.port())
        .find(|&p| p != source)
        .unwrap();
    (source, to)
}

/// Decisions on `user` until one is made on Redis again (not degraded), `pause` apart;
/// returns how long after `since` that was. Fails past `within`.
pub(crate) async fn back_on_redis(
    limiter: &RateLimiter,
    user: &str,
    since: std::time::Instant,
    within: std::time::Duration,
    pause: std::time::Duration,
) -> std::time::Duration {
    loop {
        let v = limiter.check(&[("user", user)]).await.unwrap();
        if v.degraded.is_none() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "not back on Redis within {within:?}"
        );
        tokio::time::sleep(pause).await;
    }
}

/// User `u`'s 7 decisions, then `FLUSHALL` on `server`, then 7 more: how many each round
/// admitted (no decision may be degraded), and the PTTL of `u`'s hash for limit `api` after.
pub(crate) async fn admitted_around_flushall(
    limiter: &RateLimiter,
    server: &floodwall_testkit::RedisServer,
) -> (Vec<u32>, i64) {
    let mut rounds = Vec::new();
    for round in 0..2 {
        let mut admitted = 0;
        for _ in 0..7 {
            let v = limiter.check(&[("user", "u")]).await.unwrap();
            assert!(v.degraded.is_none(), "{v:?}");
            admitted += u32::from(v.allowed);
        }
        rounds.push(admitted);
        if round == 0 {
            server.command(&["FLUSHALL"]).unwrap();
        }
    }
    let hash = limiter.redis_location("api", "u").unwrap().key;
    let ttl = server
        .command(&["PTTL", &hash])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (rounds, ttl)
}

/// The decisions of `picks` (hash, user) grouped by hash, hashes in first-seen order: each
/// hash with the indices of its decisions, in order (a short-path batch's segments).
pub(crate) fn by_hash(picks: &[(u8, u8)]) -> Vec<(u8, Vec<usize>)> {
    let mut hashes: Vec<(u8, Vec<usize>)> = Vec::new();
    for (i, (hash, _)) in picks.iter().enumerate() {
        match hashes.iter_mut().find(|(h, _)| h == hash) {
            Some((_, at)) => at.push(i),
            None => hashes.push((*hash, vec![i])),
        }
    }
    hashes
}

/// (allowed, remaining) from a GCRA verdict as `limit.lua` and `FLOODWALL.GCRA` reply it:
/// `ceil(level)` when allowed, `-ceil(level) - 1` when denied (level in µs).
pub(crate) fn gcra_verdict(v: i64, quota: floodwall_limiter::Quota) -> (bool, u32) {
    let t = quota.emission_interval().as_nanos() as f64 / 1_000.0;
    let burst = f64::from(quota.burst().get());
    let level = if v >= 0 { v } else { -(v + 1) } as f64;
    let remaining = ((t * burst - level) / t + 1e-9).floor().clamp(0.0, burst);
    (v >= 0, remaining as u32)
}

/// A runtime for a property test's cases, and a plain connection to `server` on it.
pub(crate) fn runtime_and_connection(
    server: &floodwall_testkit::RedisServer,
) -> (tokio::runtime::Runtime, redis::aio::MultiplexedConnection) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = rt.block_on(async {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    });
    (rt, conn)
}

/// `fut`, run beside a plain timer of `bound` started with it in the same task; its output and
/// how long it took beyond what the scheduler added to that timer. On a busy machine a task
/// woken at a deadline may be polled tens of milliseconds late; the timer shows by how much,
/// so a call bound is checked against the library's own wait, not the wall clock (as
/// `idempotency/tests/redis.rs` does). A future that ends in the poll the timer fires in took
/// no longer than the timer.
pub(crate) async fn beside_a_timer<F: std::future::Future>(
    bound: std::time::Duration,
    fut: F,
) -> (F::Output, std::time::Duration) {
    let started = tokio::time::Instant::now();
    let timer = tokio::time::sleep(bound);
    tokio::pin!(fut, timer);
    let mut late = None;
    let out = loop {
        tokio::select! {
            biased;
            () = &mut timer, if late.is_none() => late = Some(started.elapsed().saturating_sub(bound)),
            out = &mut fut => break out,
        }
    };
    (out, started.elapsed() - late.unwrap_or_default())
}
