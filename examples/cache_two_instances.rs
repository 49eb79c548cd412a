//! A tiered cache in front of a slow data source, with two instances.
//!
//! With `REDIS_URL` set (and `--features redis`), both instances share Redis: a value one
//! loads the other reads from Redis, a load is coalesced across both by the lease, and an
//! update or invalidation on one reaches the other's in-process copy through pub/sub.
//! Without Redis, each instance has its own in-process cache (coalescing still works within
//! one instance).
//!
//! With `FLOODWALL_SOAK_SECS=N` both instances then serve 8 readers and a writer for N
//! seconds and print what they answered — the way to watch the cache ride through a Redis
//! outage (`kill -9` and restart Redis meanwhile; `.ci/run` does): reads keep being answered
//! (L1, fail-safe, the loader), and writes or invalidations that cannot reach Redis are
//! reported, not fatal.
//!
//! ```text
//! cargo run --example cache_two_instances
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example cache_two_instances --features redis
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use floodwall::cache::TieredCache;

type Profiles = TieredCache<u64, String>;

type Query = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<String>, std::io::Error>> + Send>,
>;

/// The slow data source: 200 ms a query, counted.
#[derive(Clone, Default)]
struct Database {
    queries: Arc<AtomicU32>,
}

impl Database {
    fn loader(&self, id: u64) -> impl FnOnce() -> Query + Send + 'static {
        let queries = self.queries.clone();
        move || {
            Box::pin(async move {
                queries.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(Some(format!("profile of user {id}")))
            })
        }
    }
}

#[allow(unused_variables)]
async fn instance(name: &str) -> Result<Profiles, Box<dyn std::error::Error>> {
    let builder = TieredCache::builder()
        .max_capacity(10_000)
        .ttl(Duration::from_secs(300))
        .soft_ttl(Duration::from_secs(240))
        .jitter(0.1)
        .fail_safe(Duration::from_secs(3600), Duration::from_secs(5));
    match std::env::var("REDIS_URL") {
        #[cfg(feature = "redis")]
        Ok(url) => {
            use floodwall::cache::redis::RedisTier;
            use floodwall::core::Keyspace;
            use floodwall::core::redis::{RedisConnection, StoreOptions};
            let conn = match RedisConnection::standalone(url).connect().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Degrade, do not fail: this instance runs on its in-process tier alone.
                    println!("instance {name}: Redis unreachable ({e}); in memory only");
                    return Ok(builder.build());
                }
            };
            // A fresh namespace per run, so a second run starts cold.
            let namespace = format!("profiles-{}", std::process::id());
            let options = StoreOptions::new(conn).keyspace(Keyspace::new(&namespace, 1)?);
            let tier = RedisTier::new(options)
                .lease(Duration::from_secs(2))
                .invalidation(true);
            Ok(builder.redis(tier).build())
        }
        _ => {
            let _ = name;
            Ok(builder.build())
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shared = std::env::var("REDIS_URL").is_ok() && cfg!(feature = "redis");
    println!(
        "{}",
        if shared {
            "two instances sharing Redis"
        } else {
            "two instances, each in memory only (set REDIS_URL and use --features redis to share)"
        }
    );
    let db = Database::default();
    let a = instance("a").await?;
    let b = instance("b").await?;
    // Let the invalidation subscriptions come up.
    tokio::time::sleep(Duration::from_millis(100)).await;

    println!("\n100 concurrent requests for user 1 on instance A:");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (a, db) = (a.clone(), db.clone());
        tasks.push(tokio::spawn(
            async move { a.get_or_load(1, db.loader(1)).await },
        ));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "  all answered in {:?}; database queries: {}",
        started.elapsed(),
        db.queries.load(Ordering::SeqCst)
    );

    println!("\ninstance B asks for user 1:");
    let v = b.get_or_load(1, db.loader(1)).await?;
    println!(
        "  {v:?}; database queries now: {}",
        db.queries.load(Ordering::SeqCst)
    );

    println!("\nA and B both miss user 2 at once:");
    let (x, y) = tokio::join!(
        a.get_or_load(2, db.loader(2)),
        b.get_or_load(2, db.loader(2))
    );
    println!(
        "  {:?} / {:?}; database queries now: {}",
        x?,
        y?,
        db.queries.load(Ordering::SeqCst)
    );

    println!("\nA updates user 1:");
    a.set(1, "profile of user 1 (renamed)".to_string()).await;
    if shared {
        let started = Instant::now();
        loop {
            let seen = b.get(&1).await;
            if seen.as_deref() == Some("profile of user 1 (renamed)")
                || started.elapsed() > Duration::from_secs(1)
            {
                println!("  B sees {seen:?} after {:?}", started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    } else {
        println!(
            "  B still has {:?} (without Redis nothing tells B)",
            b.get(&1).await
        );
    }

    println!("\nA invalidates user 1, then the whole namespace:");
    a.invalidate(&1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!("  B: user 1 -> {:?}", b.get(&1).await);
    if let Err(e) = a.invalidate_namespace().await {
        println!("  (the namespace invalidation did not reach Redis: {e})");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!("  B: user 2 -> {:?}", b.get(&2).await);

    println!("\nstats A: {:?}", a.stats());
    println!("stats B: {:?}", b.stats());
    if let Some(secs) = std::env::var("FLOODWALL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        soak(&a, &b, &db, Duration::from_secs(secs)).await;
    }
    Ok(())
}

/// 8 readers over 50 users on both instances and a writer (a `set` every 50 ms, an
/// `invalidate_namespace` every 2 s) for `length`; every answer is tallied.
async fn soak(a: &Profiles, b: &Profiles, db: &Database, length: Duration) {
    println!("\nsoak: 8 readers and a writer for {length:?}");
    let deadline = Instant::now() + length;
    let mut readers = Vec::new();
    for r in 0..8u64 {
        let (cache, db) = (if r % 2 == 0 { a.clone() } else { b.clone() }, db.clone());
        readers.push(tokio::spawn(async move {
            let (mut answered, mut errors, mut i) = (0u32, 0u32, r);
            while Instant::now() < deadline {
                i = (i * 31 + 7) % 50;
                match cache.get_or_load(i, db.loader(i)).await {
                    Ok(_) => answered += 1,
                    Err(_) => errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (answered, errors)
        }));
    }
    let (mut sets, mut bumps, mut bump_errors) = (0u32, 0u32, 0u32);
    let mut last_bump = Instant::now();
    while Instant::now() < deadline {
        a.set(sets as u64 % 50, format!("profile v{sets}")).await;
        sets += 1;
        if last_bump.elapsed() >= Duration::from_secs(2) {
            last_bump = Instant::now();
            match b.invalidate_namespace().await {
                Ok(()) => bumps += 1,
                Err(_) => bump_errors += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut answered, mut errors) = (0, 0);
    for r in readers {
        if let Ok((ok, err)) = r.await {
            answered += ok;
            errors += err;
        }
    }
    println!(
        "soak: reads answered {answered}, failed {errors}; {sets} sets; namespace invalidations {bumps} reached Redis, {bump_errors} did not; database queries {}",
        db.queries.load(Ordering::SeqCst)
    );
    println!("stats A: {:?}", a.stats());
    println!("stats B: {:?}", b.stats());
}
