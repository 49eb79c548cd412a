//! Runs a two-key Lua script on the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`),
//! or on a Redis Cluster when `REDIS_CLUSTER_URLS` holds comma-separated node URLs.
//!
//! `cargo run --example redis_script --features redis`

use std::time::Duration;

use floodwall::core::Keyspace;
use floodwall::core::redis::{RedisConnection, Script};

static HIT: Script = Script::new(
    r#"
    local n = redis.call('INCR', KEYS[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    redis.call('SET', KEYS[2], n, 'PX', ARGV[1])
    return n
    "#,
);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let conn = match std::env::var("REDIS_CLUSTER_URLS") {
        Ok(urls) => RedisConnection::cluster(urls.split(',').map(str::to_owned)),
        Err(_) => RedisConnection::standalone(
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
    }
    .call_timeout(Duration::from_millis(200))
    .connect()
    .await?;

    let ks = Keyspace::new("example", 1)?;
    for _ in 0..3 {
        let count: i64 = conn
            .invoke(
                HIT.call()
                    .key(ks.key("visitor-1").part("count").build())
                    .key(ks.key("visitor-1").part("last").build())
                    .arg(60_000),
            )
            .await?;
        println!(
            "{:?}: visitor-1 has been seen {count} time(s)",
            conn.topology()
        );
    }
    Ok(())
}
