//! `Registry`: one breaker (or bulkhead) per host, made once even under concurrency, shared
//! by every user of the key, bounded with least-recently-used eviction, and safe with
//! hostile keys.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use floodwall_resilience::Error;
use floodwall_resilience::bulkhead::Bulkhead;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, State};
use floodwall_resilience::registry::{KeyTooLong, MAX_KEY_LEN, Registry};
use proptest::prelude::*;

fn breakers(max: usize, made: Arc<AtomicU32>) -> Registry<CircuitBreaker> {
    Registry::new(NonZeroUsize::new(max).unwrap(), move |host: &str| {
        made.fetch_add(1, Ordering::SeqCst);
        CircuitBreaker::builder()
            .name(format!("api:{host}"))
            .sliding_window(SlidingWindow::Count(NonZeroU32::new(4).unwrap()))
            .minimum_calls(4)
            .build()
            .unwrap()
    })
}

/// A dead host opens its own breaker; calls to another host go through.
#[tokio::test]
async fn a_dead_hosts_open_breaker_leaves_other_hosts_alone() {
    let registry = breakers(64, Arc::new(AtomicU32::new(0)));
    for _ in 0..4 {
        let dead = registry.get("dead.example.com");
        let _ = dead.call(|| async { Err::<(), _>("503") }).await;
    }
    assert_eq!(registry.get("dead.example.com").state(), State::Open);
    let shed = registry
        .get("dead.example.com")
        .call(|| async { Ok::<_, &str>(()) })
        .await;
    assert!(matches!(shed, Err(Error::CircuitOpen(_))));
    let healthy = registry
        .get("live.example.com")
        .call(|| async { Ok::<_, &str>("ok") })
        .await;
    assert_eq!(healthy.unwrap(), "ok");
    assert_eq!(registry.get("live.example.com").state(), State::Closed);
    println!(
        "dead host: {:?}; live host: {:?}",
        registry.get("dead.example.com").state(),
        registry.get("live.example.com").state()
    );
}

/// 8 tasks × 1000 lookups over 50 hosts: the factory ran exactly 50 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_made_once_under_concurrency() {
    let made = Arc::new(AtomicU32::new(0));
    let registry = breakers(1024, made.clone());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let registry = registry.clone();
            tokio::spawn(async move {
                for i in 0..1000 {
                    let b = registry.get(&format!("host-{}", (i * 7 + t) % 50));
                    assert!(b.name().starts_with("api:host-"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "8000 lookups over 50 hosts: factory ran {} times",
        made.load(Ordering::SeqCst)
    );
    assert_eq!(made.load(Ordering::SeqCst), 50);
    assert_eq!(registry.len(), 50);
}

/// With room for 32 keys, 1000 distinct hosts leave at most 32 held, and a host used all
/// along keeps its breaker (its state survives).
#[tokio::test]
async fn the_registry_is_bounded_and_keeps_what_is_used() {
    let registry = breakers(32, Arc::new(AtomicU32::new(0)));
    registry.get("hot").force_open();
    for i in 0..1000 {
        registry.get(&format!("cold-{i}"));
        assert_eq!(
            registry.get("hot").state(),
            State::ForcedOpen,
            "after {i} cold hosts"
        );
    }
    println!(
        "1000 hosts through a 32-entry registry: {} held",
        registry.len()
    );
    assert!(registry.len() <= 32);
    assert!(registry.keys().iter().any(|k| k == "hot"));
}

/// Over-long keys: refused by `try_get`, digested by `get` (same key, same value; another
/// key, another value).
#[tokio::test]
async fn long_keys_are_refused_or_digested() {
    let made = Arc::new(AtomicU32::new(0));
    let registry = breakers(64, made.clone());
    let long = "x".repeat(10_000);
    assert_eq!(
        registry.try_get(&long).map(|_| ()),
        Err(KeyTooLong { len: 10_000 })
    );
    assert!(registry.try_get(&"y".repeat(MAX_KEY_LEN)).is_ok());
    registry.get(&long).force_open();
    assert_eq!(registry.get(&long).state(), State::ForcedOpen);
    let other = format!("{}z", "x".repeat(9_999));
    assert_eq!(registry.get(&other).state(), State::Closed);
    assert!(registry.keys().iter().all(|k| k.len() <= MAX_KEY_LEN));
    assert_eq!(made.load(Ordering::SeqCst), 3);
}

/// A bulkhead per host: a full host rejects, another admits.
#[tokio::test]
async fn a_bulkhead_per_host() {
    let registry = Registry::new(NonZeroUsize::new(16).unwrap(), |host: &str| {
        Bulkhead::builder()
            .name(format!("api:{host}"))
            .max_concurrent(NonZeroUsize::new(1).unwrap())
            .build()
    });
    let slow = registry.get("slow.example.com");
    let held = slow.try_acquire().unwrap();
    assert!(registry.get("slow.example.com").try_acquire().is_err());
    assert!(registry.get("fast.example.com").try_acquire().is_ok());
    drop(held);
    assert!(registry.get("slow.example.com").try_acquire().is_ok());
}

proptest! {
    /// Any sequence of lookups: never more than the bound, and a key looked up twice in a row
    /// gets the same value (a counter its factory numbered).
    #[test]
    fn bounded_and_stable(keys in prop::collection::vec(0u16..200, 1..400)) {
        let next = Arc::new(AtomicU32::new(0));
        let n = next.clone();
        let registry = Registry::new(NonZeroUsize::new(32).unwrap(), move |_: &str| {
            n.fetch_add(1, Ordering::SeqCst)
        });
        for k in keys {
            let key = format!("k{k}");
            let first = registry.get(&key);
            prop_assert_eq!(registry.get(&key), first);
            prop_assert!(registry.len() <= 32);
        }
    }
}

/// With tower: each request goes through its host's breaker; a dead host's open breaker
/// sheds only that host's requests.
#[tokio::test]
async fn a_keyed_layer_gives_each_host_its_own_breaker() {
    use floodwall_resilience::circuit_breaker::CircuitBreakerLayer;
    use floodwall_resilience::registry::KeyedLayer;
    use tower::{Layer, ServiceExt};

    let made = Arc::new(AtomicU32::new(0));
    let layers = breakers(64, made.clone());
    let per_host = Registry::new(NonZeroUsize::new(64).unwrap(), move |host: &str| {
        CircuitBreakerLayer::new(layers.get(host))
    });
    let reached = Arc::new(AtomicU32::new(0));
    let counter = reached.clone();
    let svc = KeyedLayer::new(per_host, |req: &&'static str| *req).layer(tower::service_fn(
        move |host: &'static str| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match host {
                    "dead" => Err(Error::Inner("503")),
                    _ => Ok(host),
                }
            }
        },
    ));
    let mut dead = Vec::new();
    for _ in 0..6 {
        dead.push(match svc.clone().oneshot("dead").await {
            Err(Error::CircuitOpen(_)) => "shed",
            Err(_) => "failed",
            Ok(_) => "ok",
        });
    }
    let live = svc.clone().oneshot("live").await;
    println!(
        "dead host: {dead:?}; live host: {live:?}; {} requests reached the service, {} breakers made",
        reached.load(Ordering::SeqCst),
        made.load(Ordering::SeqCst)
    );
    assert_eq!(
        dead,
        ["failed", "failed", "failed", "failed", "shed", "shed"]
    );
    assert_eq!(live, Ok("live"));
    assert_eq!(
        reached.load(Ordering::SeqCst),
        5,
        "shed requests never reach the service"
    );
    assert_eq!(made.load(Ordering::SeqCst), 2, "one breaker per host");
}

/// A small registry is one exact LRU map: it holds `max_entries` keys whatever their hashes,
/// and evicts the least recently used one.
#[test]
fn a_small_registry_holds_all_its_keys_and_evicts_the_least_recently_used() {
    let registry = Registry::new(NonZeroUsize::new(16).unwrap(), |key: &str| key.to_owned());
    for i in 0..16 {
        registry.get(&format!("host-{i}"));
    }
    assert_eq!(registry.len(), 16);
    registry.get("host-0"); // used again: host-1 is now the least recently used
    registry.get("host-16");
    let mut keys = registry.keys();
    keys.sort();
    println!("after 17 keys in a registry of 16: {} held", keys.len());
    assert_eq!(keys.len(), 16);
    assert!(keys.contains(&"host-0".to_string()));
    assert!(
        !keys.contains(&"host-1".to_string()),
        "the least recently used went"
    );
}

/// `generation` moves when a key is removed or evicted, and not when one is made or read:
/// what a cache kept outside the registry checks before serving a value it copied.
#[test]
fn the_generation_moves_on_removal_and_eviction_only() {
    let r = Registry::new(NonZeroUsize::new(2).unwrap(), |k: &str| k.len());
    let g0 = r.generation();
    r.get("a");
    r.get("bb");
    r.get("a");
    assert_eq!(r.generation(), g0, "making and reading keys leaves it");
    assert!(!r.remove("zz"));
    assert_eq!(r.generation(), g0, "removing an absent key leaves it");
    assert!(r.remove("a"));
    let g1 = r.generation();
    assert_ne!(g1, g0, "a removal moves it");
    r.get("a");
    assert_eq!(r.generation(), g1);
    r.get("ccc");
    let g2 = r.generation();
    assert_ne!(g2, g1, "an eviction moves it");
    println!(
        "generations: {g0} -> {g1} (removal) -> {g2} (eviction); keys {:?}",
        r.keys()
    );
}
