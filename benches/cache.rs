//! Cache hot paths, ours beside moka's.
//!
//! `cache/l1_hit`: a hit on a fresh key — `TieredCache::get` beside a raw
//! `moka::future::Cache::get` and a raw `moka::sync::Cache::get` of the same key (ours is a
//! `moka::sync::Cache` underneath, plus the freshness check on its clock), each inside the
//! same `block_on`; and `TieredCache::get` of entries stored under 3 cache tags (each hit
//! checks their versions) beside the untagged one.
//! `cache/l2_hit` (feature `redis`; starts its own `redis-server`): a value found in Redis —
//! `TieredCache::get` with its L1 copy dropped beforehand, untimed (GET, envelope check,
//! decode, L1 insert) — beside a raw redis-rs `GET` of the same bytes on the same
//! connection; then the two alternated call by call, and their ratio printed.
//! `cache/stampede_10k`: 10,000 concurrent `get_or_load` of one cold key (the loader sleeps
//! 1 ms and runs once) — time until every caller has its value.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::cache::TieredCache;

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ours: TieredCache<u64, Arc<str>> = TieredCache::builder()
        .max_capacity(10_000)
        .ttl(Duration::from_secs(3600))
        .build();
    let raw: moka::future::Cache<u64, Arc<str>> = moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let raw_sync: moka::sync::Cache<u64, Arc<str>> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let tagged: TieredCache<u64, Arc<str>> = TieredCache::builder()
        .max_capacity(10_000)
        .ttl(Duration::from_secs(3600))
        .build();
    rt.block_on(async {
        for k in 0..1_000u64 {
            let tags = floodwall::cache::Tags::new([
                format!("user:{}", k % 100),
                format!("team:{}", k % 10),
                "catalog".to_string(),
            ])
            .unwrap();
            tagged.set_tagged(k, Arc::from("value"), &tags).await;
            ours.set(k, Arc::from("value")).await;
            raw.insert(k, Arc::from("value")).await;
            raw_sync.insert(k, Arc::from("value"));
        }
    });
    let mut g = c.benchmark_group("cache/l1_hit");
    let mut k = 0u64;
    g.bench_function("moka::future::Cache::get", |b| {
        b.iter(|| {
            k = (k + 1) % 1_000;
            rt.block_on(async { black_box(raw.get(&k).await) })
        })
    });
    let mut k = 0u64;
    g.bench_function("moka::sync::Cache::get", |b| {
        b.iter(|| {
            k = (k + 1) % 1_000;
            rt.block_on(async { black_box(raw_sync.get(&k)) })
        })
    });
    let mut k = 0u64;
    g.bench_function("floodwall TieredCache::get", |b| {
        b.iter(|| {
            k = (k + 1) % 1_000;
            rt.block_on(async { black_box(ours.get(&k).await) })
        })
    });
    let mut k = 0u64;
    g.bench_function("floodwall TieredCache::get, 3 tags", |b| {
        b.iter(|| {
            k = (k + 1) % 1_000;
            rt.block_on(async { black_box(tagged.get(&k).await) })
        })
    });
    g.finish();
}

fn stampede(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("cache/stampede_10k");
    g.sample_size(10);
    g.bench_function("floodwall get_or_load (one load)", |b| {
        b.to_async(&rt).iter(|| async {
            let cache: TieredCache<u64, u64> = TieredCache::builder().build();
            let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let mut tasks = Vec::with_capacity(10_000);
            for _ in 0..10_000 {
                let (cache, calls) = (cache.clone(), calls.clone());
                tasks.push(tokio::spawn(async move {
                    cache
                        .get_or_load(7, move || async move {
                            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            Ok::<_, std::io::Error>(Some(42))
                        })
                        .await
                        .unwrap()
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap(), Some(42));
            }
            assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
            assert_eq!(cache.stats().loads, 1);
        })
    });
    g.bench_function("moka try_get_with (one load)", |b| {
        b.to_async(&rt).iter(|| async {
            let cache: moka::future::Cache<u64, u64> = moka::future::Cache::new(10_000);
            let mut tasks = Vec::with_capacity(10_000);
            for _ in 0..10_000 {
                let cache = cache.clone();
                tasks.push(tokio::spawn(async move {
                    cache
                        .try_get_with(7, async {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            Ok::<_, std::io::Error>(42)
                        })
                        .await
                        .unwrap()
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap(), 42);
            }
        })
    });
    g.finish();
}

#[cfg(feature = "redis")]
fn l2_hit(c: &mut Criterion) {
    use floodwall::cache::redis::RedisTier;
    use floodwall::core::Keyspace;
    use floodwall::core::redis::{RedisConnection, StoreOptions};
    use floodwall_testkit::RedisServer;

    let Some(server) = RedisServer::start_or_skip("cache redis bench") else {
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
    let cache: TieredCache<String, String> = TieredCache::builder()
        .ttl(Duration::from_secs(3600))
        .redis(RedisTier::new(
            StoreOptions::new(conn.clone()).keyspace(Keyspace::new("bench", 1).unwrap()),
        ))
        .build();
    let key = "user:42".to_string();
    let value = "x".repeat(200);
    rt.block_on(cache.set(key.clone(), value.clone()));
    // The same bytes under a key of its own, for the raw GET.
    let raw_key = "raw:{user:42}";
    let bytes: Vec<u8> = rt.block_on(async {
        let real = floodwall::core::Keyspace::new("bench", 1)
            .unwrap()
            .key("user:42")
            .part_u64(0)
            .build();
        let b: Vec<u8> = conn.query(redis::cmd("GET").arg(&real)).await.unwrap();
        let _: () = conn
            .query(redis::cmd("SET").arg(raw_key).arg(&b))
            .await
            .unwrap();
        b
    });
    assert!(!bytes.is_empty());
    let mut g = c.benchmark_group("cache/l2_hit");
    g.bench_function("raw redis GET", |b| {
        b.iter(|| {
            rt.block_on(async {
                let v: Vec<u8> = conn.query(redis::cmd("GET").arg(raw_key)).await.unwrap();
                black_box(v)
            })
        })
    });
    g.bench_function("floodwall TieredCache::get (L2 hit)", |b| {
        // Only the `get` is timed; dropping the L1 copy before it is scaffolding.
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    cache.invalidate_local(&key).await;
                    let t = std::time::Instant::now();
                    black_box(cache.get(&key).await.unwrap());
                    took += t.elapsed();
                }
                took
            })
        })
    });
    g.finish();

    // The ratio again, alternating one raw GET and one L2 hit, so a machine that speeds up or
    // slows down meanwhile affects both alike.
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    const ROUND: u32 = 5_000;
    rt.block_on(async {
        for _ in 0..ROUND {
            let t = std::time::Instant::now();
            let v: Vec<u8> = conn.query(redis::cmd("GET").arg(raw_key)).await.unwrap();
            raw += t.elapsed();
            black_box(v);
            cache.invalidate_local(&key).await;
            let t = std::time::Instant::now();
            black_box(cache.get(&key).await.unwrap());
            ours += t.elapsed();
        }
    });
    eprintln!(
        "cache/l2_hit interleaved: floodwall {:?} per get, raw GET {:?}: {:.2}x",
        ours / ROUND,
        raw / ROUND,
        ours.as_secs_f64() / raw.as_secs_f64()
    );
}

#[cfg(not(feature = "redis"))]
fn l2_hit(_: &mut Criterion) {}

criterion_group!(benches, l1_hit, l2_hit, stampede);
criterion_main!(benches);
