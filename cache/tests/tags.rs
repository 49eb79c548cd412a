//! Cache tags: in memory, an invalidated tag takes every entry carrying it and no other, and a
//! load racing the invalidation never leaves its value live; on servers these tests start
//! (standalone and 3-master Cluster), `invalidate_tag` on A stops B's L1 within the bus bound
//! and a new instance C never serves the tagged entries; after `FLUSHALL`, an old tagged
//! value put back in Redis is never served again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_cache::{Fetched, Tags, TieredCache};

type Cache = TieredCache<String, String>;

fn tags(t: &[&str]) -> Tags {
    Tags::new(t).unwrap()
}

#[tokio::test]
async fn an_invalidated_tag_takes_its_entries_and_no_other() {
    let cache: Cache = TieredCache::builder().ttl(Duration::from_secs(60)).build();
    cache
        .set_tagged("user:42:profile".into(), "Ada".into(), &tags(&["user:42"]))
        .await;
    cache
        .set_tagged(
            "user:42:orders".into(),
            "3 orders".into(),
            &tags(&["user:42", "orders"]),
        )
        .await;
    cache
        .set_tagged("user:7:orders".into(), "1 order".into(), &tags(&["orders"]))
        .await;
    cache.set("motd".into(), "hello".into()).await;
    cache.invalidate_tag("user:42").await.unwrap();
    let get = |k: &str| {
        let cache = cache.clone();
        let k = k.to_string();
        async move { cache.get(&k).await }
    };
    assert_eq!(get("user:42:profile").await, None);
    assert_eq!(get("user:42:orders").await, None);
    assert_eq!(get("user:7:orders").await.as_deref(), Some("1 order"));
    assert_eq!(get("motd").await.as_deref(), Some("hello"));
    // A tagged load after the invalidation loads again, and its value stands.
    let loads = Arc::new(AtomicU32::new(0));
    for _ in 0..3 {
        let loads = loads.clone();
        let v = cache
            .get_or_load_tagged(
                "user:42:profile".into(),
                &tags(&["user:42"]),
                move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Some("Ada Lovelace".to_string()))
                },
            )
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("Ada Lovelace"));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // clear() takes everything.
    cache.clear().await.unwrap();
    assert_eq!(get("motd").await, None);
    assert_eq!(get("user:7:orders").await, None);
}

/// A load that started before an invalidation of its tag answers its callers, but its value
/// is not left live — with the tags known before the load and with tags learnt from it.
#[tokio::test]
async fn a_load_racing_an_invalidation_never_leaves_its_value_live() {
    let cache: Cache = TieredCache::builder().ttl(Duration::from_secs(60)).build();
    for learnt_after in [false, true] {
        let key = format!("report-{learnt_after}");
        let tag = format!("reports-{learnt_after}");
        if learnt_after {
            // This instance knows the tag already (another entry carries it).
            cache
                .set_tagged("other".into(), "x".into(), &tags(&[&tag]))
                .await;
        }
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let load = {
            let (cache, key, tag) = (cache.clone(), key.clone(), tag.clone());
            tokio::spawn(async move {
                let loader = move || async move {
                    started_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    Ok::<_, std::io::Error>("before the invalidation".to_string())
                };
                if learnt_after {
                    cache
                        .get_or_fetch(key, move || async move {
                            let v = loader().await?;
                            Ok::<_, std::io::Error>(Fetched::Tagged(v, Tags::new([tag]).unwrap()))
                        })
                        .await
                } else {
                    cache
                        .get_or_load_tagged(key, &Tags::new([tag]).unwrap(), move || async move {
                            loader().await.map(Some)
                        })
                        .await
                }
            })
        };
        started_rx.await.unwrap();
        cache.invalidate_tag(&tag).await.unwrap();
        go_tx.send(()).unwrap();
        let answered = load.await.unwrap().unwrap();
        assert_eq!(answered.as_deref(), Some("before the invalidation"));
        let after = cache.get(&key).await;
        println!(
            "tags learnt after the load: {learnt_after}; served after the invalidation: {after:?}"
        );
        assert_eq!(after, None);
    }
}

#[test]
fn bad_tags_are_refused_with_a_reason() {
    assert!(Tags::new([""]).is_err());
    assert!(Tags::new(["a".repeat(257)]).is_err());
    assert!(Tags::new(["a\nb"]).is_err());
    let many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let err = Tags::new(&many).unwrap_err();
    println!("{err}");
    assert!(err.to_string().contains("16"));
    assert_eq!(Tags::new(["a", "a", "b"]).unwrap().len(), 2);
    assert!(Tags::new(&many[..16]).is_ok());
}

#[cfg(feature = "redis")]
mod common;

#[cfg(feature = "redis")]
mod on_redis {
    use super::common::{connect, wait_subscribed};
    use super::*;
    use floodwall_cache::redis::RedisTier;
    use floodwall_core::Keyspace;
    use floodwall_core::redis::StoreOptions;
    use floodwall_testkit::{RedisServer, on_each_topology};
    use std::time::Instant;

    async fn instance(urls: &[String], cluster: bool) -> Cache {
        let tier = RedisTier::new(
            StoreOptions::new(connect(urls, cluster).await)
                .keyspace(Keyspace::new("cachetest-tags", 1).unwrap())
                .call_timeout(Duration::from_secs(5)),
        )
        .invalidation_through(connect(&[urls[0].clone()], false).await);
        let c = TieredCache::builder()
            .ttl(Duration::from_secs(600))
            .redis(tier)
            .build();
        wait_subscribed(&c).await;
        c
    }

    async fn invalidated_everywhere(urls: Vec<String>, cluster: bool) {
        let a = instance(&urls, cluster).await;
        let b = instance(&urls, cluster).await;
        let tagged: Vec<String> = (0..10).map(|i| format!("product-{i}")).collect();
        for k in &tagged {
            a.set_tagged(k.clone(), format!("{k} v1"), &tags(&["product-list"]))
                .await;
        }
        a.set("banner".into(), "sale".into()).await;
        for k in tagged.iter().chain([&"banner".to_string()]) {
            assert!(b.get(k).await.is_some(), "B reads {k}");
        }
        let hits = b.stats().hits;
        for k in &tagged {
            assert!(b.get(k).await.is_some());
        }
        assert_eq!(b.stats().hits, hits + 10, "B serves them from its L1");

        a.invalidate_tag("product-list").await.unwrap();
        let cut = Instant::now();
        let bound = Duration::from_millis(500);
        let gone_on_b = loop {
            let mut served = 0;
            for k in &tagged {
                served += usize::from(b.get(k).await.is_some());
            }
            if served == 0 {
                break cut.elapsed();
            }
            assert!(
                cut.elapsed() < bound,
                "B still serves {served} tagged entries"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let c = instance(&urls, cluster).await;
        let mut served_by = Vec::new();
        for (name, x) in [("A", &a), ("B", &b), ("C", &c)] {
            let mut n = 0;
            for k in &tagged {
                n += usize::from(x.get(k).await.is_some());
            }
            served_by.push((name, n));
            assert_eq!(x.get(&"banner".to_string()).await.as_deref(), Some("sale"));
        }
        println!(
            "{}: invalidate_tag on A; B stopped serving all 10 tagged entries {gone_on_b:?} \
             later (bus bound {bound:?}); tagged entries served afterwards by {served_by:?}; \
             the untagged entry still served by all",
            if cluster { "cluster" } else { "standalone" }
        );
        assert!(served_by.iter().all(|(_, n)| *n == 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalidated_tag_is_gone_from_every_instance_within_the_bus_bound() {
        on_each_topology(
            "an_invalidated_tag_is_gone_from_every_instance_within_the_bus_bound",
            |t| invalidated_everywhere(t.urls, t.cluster),
        )
        .await;
    }

    /// An old tagged value put back into Redis after a `FLUSHALL` (a lagging replica, a late
    /// write) is served by no instance: not by A and B, which saw the invalidation, nor by C,
    /// started after the loss.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_flushall_an_old_tagged_value_never_comes_back() {
        let Some(server) =
            RedisServer::start_or_skip("after_flushall_an_old_tagged_value_never_comes_back")
        else {
            return;
        };
        let urls = vec![server.url()];
        let a = instance(&urls, false).await;
        let b = instance(&urls, false).await;
        let k = "invoice-9".to_string();
        a.set_tagged(k.clone(), "old".into(), &tags(&["tenant:3"]))
            .await;
        assert_eq!(b.get(&k).await.as_deref(), Some("old"));
        // The old entry's bytes, as a lagging replica would still hold them.
        let client = redis::Client::open(server.url()).unwrap();
        let mut raw = client.get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*invoice-9*")
            .query(&mut raw)
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let bytes: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut raw).unwrap();

        a.invalidate_tag("tenant:3").await.unwrap();
        let cut = Instant::now();
        while b.get(&k).await.is_some() {
            assert!(
                cut.elapsed() < Duration::from_millis(500),
                "B still serves it"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.command(&["FLUSHALL"]).unwrap();
        let _: () = redis::cmd("SET")
            .arg(&keys[0])
            .arg(&bytes)
            .query(&mut raw)
            .unwrap();
        let c = instance(&urls, false).await;
        let mut served = Vec::new();
        for (name, x) in [("A", &a), ("B", &b), ("C", &c)] {
            // Past the re-read interval too, so each asks Redis for the tag again.
            served.push((name, x.get(&k).await));
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for (name, x) in [("A", &a), ("B", &b), ("C", &c)] {
            served.push((name, x.get(&k).await));
        }
        println!(
            "FLUSHALL, then the old tagged bytes put back: served {served:?} (None everywhere: \
             the tag's version in Redis was made anew, equal to no old one)"
        );
        assert!(served.iter().all(|(_, v)| v.is_none()), "{served:?}");
    }

    /// Redis blackholed: a tagged load asks Redis at most three times (a tag's version not
    /// read yet, the value, the tag after the load), each within the call bound, and answers
    /// the loader's value; once the node's gate has opened, at once. A tag whose version was
    /// read before the outage keeps it: the value is kept in L1 under it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blackholed_redis_answers_tagged_loads_from_the_loader_within_the_bound() {
        use floodwall_testkit::FaultProxy;
        let Some(server) = RedisServer::start_or_skip(
            "a_blackholed_redis_answers_tagged_loads_from_the_loader_within_the_bound",
        ) else {
            return;
        };
        let proxy = FaultProxy::start(server.addr()).await.unwrap();
        let bound = Duration::from_millis(50);
        let c: Cache = TieredCache::builder()
            .redis(RedisTier::new(
                StoreOptions::new(connect(&[proxy.redis_url()], false).await)
                    .keyspace(Keyspace::new("cachetest-tags-bh", 1).unwrap())
                    .call_timeout(bound),
            ))
            .build();
        let t = tags(&["catalog"]);
        c.get_or_load_tagged("warm".into(), &t, || async {
            Ok::<_, std::io::Error>(Some("w".to_string()))
        })
        .await
        .unwrap();
        proxy.blackhole();
        let (mut slowest, mut slowest_late) = (Duration::ZERO, Duration::ZERO);
        for i in 0..10 {
            let started = Instant::now();
            let v = c
                .get_or_load_tagged(format!("k{i}"), &t, move || async move {
                    Ok::<_, std::io::Error>(Some(format!("v{i}")))
                })
                .await
                .unwrap();
            let took = started.elapsed();
            assert_eq!(v, Some(format!("v{i}")));
            slowest = slowest.max(took);
            if i >= 6 {
                slowest_late = slowest_late.max(took);
            }
        }
        // Tags never read before the outage: not stored under a version nobody could read.
        let mut unread_slowest = Duration::ZERO;
        for i in 0..4 {
            let started = Instant::now();
            let fresh = Tags::new([format!("new-{i}")]).unwrap();
            let v = c
                .get_or_load_tagged(format!("n{i}"), &fresh, move || async move {
                    Ok::<_, std::io::Error>(Some(format!("n{i}")))
                })
                .await
                .unwrap();
            assert_eq!(v, Some(format!("n{i}")));
            unread_slowest = unread_slowest.max(started.elapsed());
            assert_eq!(c.get(&format!("n{i}")).await, None, "n{i} not stored");
        }
        let stored = c.get(&"k0".to_string()).await;
        println!(
            "blackholed Redis, tagged loads: slowest {slowest:?} (bound 3 x {bound:?} + 50 ms), \
             with the gate open at most {slowest_late:?}; k0 kept: {stored:?}; loads under \
             tags never read: at most {unread_slowest:?}, none stored"
        );
        assert!(
            slowest <= bound * 3 + Duration::from_millis(50),
            "{slowest:?}"
        );
        assert!(slowest_late < Duration::from_millis(5), "{slowest_late:?}");
        assert_eq!(
            stored.as_deref(),
            Some("v0"),
            "kept in L1 under the version read before"
        );
    }
}
