//! A lease take whose reply is lost: `CLIENT PAUSE … WRITE` holds the take past the call
//! bound, the load goes on without the lease, and Redis applies the take when the pause ends —
//! leaving a lease that holds this instance's own id. The next load must recognise it and not
//! wait on itself.

use std::time::{Duration, Instant};

use floodwall_cache::TieredCache;
use floodwall_cache::redis::RedisTier;
use floodwall_core::Keyspace;
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_a_lost_reply_is_taken_again_not_waited_on() {
    let Some(server) =
        RedisServer::start_or_skip("a_lease_left_by_a_lost_reply_is_taken_again_not_waited_on")
    else {
        return;
    };
    let call_bound = Duration::from_millis(100);
    let lease = Duration::from_secs(3);
    let conn = RedisConnection::standalone(server.url())
        .connect()
        .await
        .unwrap();
    let cache: TieredCache<String, String> = TieredCache::builder()
        .ttl(Duration::from_secs(60))
        .redis(
            RedisTier::new(
                StoreOptions::new(conn)
                    .keyspace(Keyspace::new("ownlease", 1).unwrap())
                    .call_timeout(call_bound),
            )
            .lease(lease),
        )
        .build();
    // Warm the connection and the script cache.
    cache
        .get_or_load("warm".to_string(), || async {
            Ok::<_, std::io::Error>(Some("w".to_string()))
        })
        .await
        .unwrap();

    // Writes (and scripts) wait while Redis is paused: the take times out on the client.
    server
        .command(&["CLIENT", "PAUSE", "1000", "WRITE"])
        .unwrap();
    let paused_at = Instant::now();
    let first = cache
        .get_or_load("k".to_string(), || async {
            Err::<Option<String>, _>(std::io::Error::other("the source fails too"))
        })
        .await;
    println!(
        "load during the pause: {:?} after {:?}",
        first.as_ref().map(|_| ()),
        paused_at.elapsed()
    );
    assert!(first.is_err());
    // The pause ends and Redis applies the take: the lease is this instance's.
    let lease_key = loop {
        let keys = server.command(&["KEYS", "*{k}*lease*"]).unwrap();
        if let Some(k) = keys.lines().next().filter(|k| !k.is_empty()) {
            break k.to_owned();
        }
        assert!(paused_at.elapsed() < Duration::from_secs(5), "no lease key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("left behind: {lease_key}");

    // Redis and the source are healthy: the next load takes no longer than a call bound and
    // its own load time (50 ms), never the lease's 3 s.
    let load_time = Duration::from_millis(50);
    let started = Instant::now();
    let v = cache
        .get_or_load("k".to_string(), move || async move {
            tokio::time::sleep(load_time).await;
            Ok::<_, std::io::Error>(Some("v".to_string()))
        })
        .await
        .unwrap();
    let took = started.elapsed();
    println!("next healthy load took {took:?} (bound {call_bound:?} + load {load_time:?})");
    assert_eq!(v.as_deref(), Some("v"));
    assert!(took <= call_bound + load_time, "{took:?}");
    assert_eq!(
        server.command(&["EXISTS", &lease_key]).unwrap(),
        "0",
        "the lease is released after the load"
    );
}
