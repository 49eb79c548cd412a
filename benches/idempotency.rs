//! Idempotency store paths, ours beside the floor.
//!
//! `idempotency/memory`: `begin` + `complete` of a fresh key, and `begin` of a completed key
//! (the replay), on the in-memory store.
//! `idempotency/redis`: the fresh path (`begin` + `complete`: two scripts, two round trips)
//! beside a raw `SET NX` + `SET` on the same connection, and the replay path (`begin` of a
//! completed key: one round trip) beside a raw `GET`. Afterwards the commands the server
//! counted (`INFO commandstats`) are printed per operation. The Redis part starts its own
//! `redis-server` (testkit) and is skipped without one.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::core::ManualClock;
use floodwall::idempotency::{Begin, Fingerprint, MemoryStore, Store};

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone(), 20_000);
    let keys: Vec<String> = (0..10_000).map(|i| format!("order-{i}")).collect();
    let fp = Fingerprint::of(b"{\"amount\":42}");
    let lease = Duration::from_secs(30);
    let retention = Duration::from_secs(60);
    let mut g = c.benchmark_group("idempotency/memory");
    let mut i = 0;
    g.bench_function("begin + complete (fresh key)", |b| {
        b.iter(|| {
            if i == keys.len() {
                // Let the lap's records expire so every key is fresh again.
                i = 0;
                clock.advance(retention + Duration::from_secs(1));
            }
            let key = &keys[i];
            i += 1;
            rt.block_on(async {
                let Begin::Claimed(token) = store.begin(key, &fp, lease).await.unwrap() else {
                    panic!("fresh key")
                };
                black_box(
                    store
                        .complete(key, token, b"{\"charge\":\"ch_1\"}", retention)
                        .await
                        .unwrap(),
                )
            })
        })
    });
    rt.block_on(async {
        let Begin::Claimed(t) = store.begin("done", &fp, lease).await.unwrap() else {
            panic!()
        };
        store
            .complete(
                "done",
                t,
                b"{\"charge\":\"ch_1\"}",
                Duration::from_secs(1 << 30),
            )
            .await
            .unwrap();
    });
    g.bench_function("begin (replay)", |b| {
        b.iter(|| rt.block_on(async { black_box(store.begin("done", &fp, lease).await.unwrap()) }))
    });
    g.finish();
}

#[cfg(feature = "redis")]
fn redis(c: &mut Criterion) {
    use floodwall::core::redis::{RedisConnection, StoreOptions};
    use floodwall::idempotency::redis::RedisStore;
    use floodwall_testkit::RedisServer;

    let Some(server) = RedisServer::start_or_skip("idempotency redis bench") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
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
    let store = RedisStore::new(StoreOptions::new(conn.clone()));
    let fp = Fingerprint::of(b"{\"amount\":42}");
    let lease = Duration::from_secs(30);
    let retention = Duration::from_secs(60);
    let record = b"{\"charge\":\"ch_1\"}";
    let fresh = |n: u64| {
        let store = &store;
        async move {
            let key = format!("fresh-{n}");
            let Begin::Claimed(token) = store.begin(&key, &fp, lease).await.unwrap() else {
                panic!("fresh key")
            };
            store
                .complete(&key, token, record, retention)
                .await
                .unwrap()
        }
    };
    let raw_fresh = |n: u64| {
        let conn = &conn;
        async move {
            let key = format!("raw:{{fresh-{n}}}");
            let claimed: Option<String> = conn
                .query(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg("p")
                        .arg("NX")
                        .arg("PX")
                        .arg(30_000),
                )
                .await
                .unwrap();
            assert!(claimed.is_some());
            let _: () = conn
                .query(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&record[..])
                        .arg("PX")
                        .arg(60_000),
                )
                .await
                .unwrap();
        }
    };
    rt.block_on(async {
        let Begin::Claimed(t) = store.begin("done", &fp, lease).await.unwrap() else {
            panic!()
        };
        store
            .complete("done", t, record, Duration::from_secs(3600))
            .await
            .unwrap();
        let _: () = conn
            .query(redis::cmd("SET").arg("raw:{done}").arg(&record[..]))
            .await
            .unwrap();
    });

    let mut g = c.benchmark_group("idempotency/redis");
    let mut n = 0u64;
    g.bench_function("floodwall fresh (begin + complete)", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(fresh(n))
        })
    });
    let mut m = 0u64;
    g.bench_function("raw SET NX + SET", |b| {
        b.iter(|| {
            m += 1;
            rt.block_on(raw_fresh(m))
        })
    });
    g.bench_function("floodwall replay (begin)", |b| {
        b.iter(|| rt.block_on(async { black_box(store.begin("done", &fp, lease).await.unwrap()) }))
    });
    g.bench_function("raw GET", |b| {
        b.iter(|| {
            rt.block_on(async {
                let v: Option<Vec<u8>> = conn
                    .query(redis::cmd("GET").arg("raw:{done}"))
                    .await
                    .unwrap();
                black_box(v)
            })
        })
    });
    g.finish();

    // Round trips, as the server counts commands.
    let calls = |name: &str| -> u64 {
        let info: String = rt
            .block_on(conn.query(redis::cmd("INFO").arg("commandstats")))
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    const OPS: u64 = 200;
    let before = calls("evalsha");
    rt.block_on(async {
        for i in 0..OPS {
            fresh(1_000_000_000 + i).await;
        }
    });
    let fresh_trips = (calls("evalsha") - before) as f64 / OPS as f64;
    let before = calls("evalsha");
    rt.block_on(async {
        for _ in 0..OPS {
            store.begin("done", &fp, lease).await.unwrap();
        }
    });
    let replay_trips = (calls("evalsha") - before) as f64 / OPS as f64;
    eprintln!(
        "idempotency/redis round trips (server-counted EVALSHA per operation): fresh {fresh_trips:.2}, replay {replay_trips:.2}"
    );
}

#[cfg(not(feature = "redis"))]
fn redis(_: &mut Criterion) {}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
