//! A tiered cache in front of a slow data source, with two instances.
//!
//! With `REDIS_URL` set (and `--features redis`), both instances share Redis: a value one
//! loads the other reads from Redis, a load is coalesced across both by the lease, and an
//! update or invalidation on one reaches the other's in-process copy through pub/sub.
//! Without Redis, each instance has its own in-process cache (coalescing still works within
//! one instance).
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
            let conn = RedisConnection::standalone(url).connect().await?;
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
    a.invalidate_namespace().await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!("  B: user 2 -> {:?}", b.get(&2).await);

    println!("\nstats A: {:?}", a.stats());
    println!("stats B: {:?}", b.stats());
    Ok(())
}
