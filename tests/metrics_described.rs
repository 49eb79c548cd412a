//! Every metric floodwall emits has a description and a unit once described, and metrics work
//! whichever came first: a breaker built before the recorder was installed reports once it is
//! used after, and a primitive built after it has its series from construction, at zero.
//! The described names are the ones exporters show with `# HELP`.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use floodwall::cache::TieredCache;
use floodwall::idempotency::{Fingerprint, Idempotency, MemoryStore};
use floodwall::limiter::{Algorithm, Limit, Quota, RateLimiter};
use floodwall::resilience::bulkhead::Bulkhead;
use floodwall::resilience::circuit_breaker::CircuitBreaker;
use floodwall::resilience::retry::{Backoff, Retry};
use metrics_util::debugging::DebuggingRecorder;

/// The retry's backoff is zero, so nothing here waits.
#[tokio::test]
async fn every_emitted_metric_is_described() {
    // Built before any recorder exists: its descriptions went nowhere.
    let early = CircuitBreaker::builder().name("early").build().unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");
    floodwall::describe_metrics();
    // Used after the recorder came: its handles bind now, its state gauge brought up to date.
    let _ = early.call(|| async { Ok::<_, ()>(()) }).await;
    early.force_open();

    let breaker = CircuitBreaker::builder().name("payments").build().unwrap();
    let _ = breaker.call(|| async { Ok::<_, ()>(()) }).await;
    breaker.force_open();
    let _ = breaker.call(|| async { Ok::<_, ()>(()) }).await;

    let retry = Retry::builder()
        .max_attempts(NonZeroU32::new(2).unwrap())
        .backoff(Backoff::Constant(Duration::ZERO))
        .build();
    let _ = retry.call(|| async { Err::<(), _>("503") }).await;

    let bulkhead = Bulkhead::builder()
        .max_concurrent(NonZeroUsize::new(1).unwrap())
        .build();
    let held = bulkhead.try_acquire().unwrap();
    assert!(bulkhead.try_acquire().is_err());
    drop(held);

    let limiter = RateLimiter::builder()
        .limit(Limit::new(
            "api",
            Algorithm::Gcra,
            Quota::per_hour(NonZeroU32::new(1).unwrap()),
        ))
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = limiter.check(&[]).await.unwrap();
    }

    // Two named caches and two unnamed ones report apart; a limiter never used has its
    // series, at zero.
    let profiles: TieredCache<u32, u32> = TieredCache::builder().name("profiles").build();
    let sessions: TieredCache<u32, u32> = TieredCache::builder().name("sessions").build();
    for (cache, times) in [(&profiles, 3), (&sessions, 1)] {
        for _ in 0..times {
            let _ = cache
                .get_or_load(1, || async { Ok::<_, String>(Some(1)) })
                .await;
        }
    }
    let unnamed: Vec<TieredCache<u32, u32>> =
        (0..2).map(|_| TieredCache::builder().build()).collect();
    let _idle = RateLimiter::builder()
        .limit(Limit::new(
            "idle",
            Algorithm::Gcra,
            Quota::per_hour(NonZeroU32::new(1).unwrap()),
        ))
        .build()
        .unwrap();
    let cache: TieredCache<u32, u32> = TieredCache::builder().build();
    for _ in 0..2 {
        let _ = cache
            .get_or_load(1, || async { Ok::<_, String>(Some(7)) })
            .await;
    }

    let orders = Idempotency::builder(MemoryStore::new())
        .name("orders")
        .build()
        .unwrap();
    orders
        .run("o", &Fingerprint::NONE, || async { Ok::<_, String>(1u8) })
        .await
        .unwrap();
    let idem = Idempotency::new(MemoryStore::new());
    for _ in 0..2 {
        idem.run("k", &Fingerprint::NONE, || async { Ok::<_, String>(1u8) })
            .await
            .unwrap();
    }

    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, labels: &[(&str, &str)]| {
        snapshot.iter().find_map(|(k, _, _, v)| {
            let key = k.key();
            let matches = key.name() == name
                && labels
                    .iter()
                    .all(|(l, want)| key.labels().any(|x| x.key() == *l && x.value() == *want));
            matches.then(|| format!("{v:?}"))
        })
    };
    let early_success = value(
        "floodwall_circuit_breaker_calls_total",
        &[("breaker", "early"), ("outcome", "success")],
    );
    let early_state = value("floodwall_circuit_breaker_state", &[("breaker", "early")]);
    println!("breaker built before the recorder: success {early_success:?}, state {early_state:?}");
    assert_eq!(early_success.as_deref(), Some("Counter(1)"));
    assert_eq!(early_state.as_deref(), Some("Gauge(4.0)"), "forced open");
    // A series exists from construction, at zero: the failures of a breaker that saw none.
    let zero = value(
        "floodwall_circuit_breaker_calls_total",
        &[("breaker", "payments"), ("outcome", "failure")],
    );
    println!("payments failures, never counted: {zero:?}");
    assert_eq!(zero.as_deref(), Some("Counter(0)"));
    let hits = |cache: &str| value("floodwall_cache_l1_hits_total", &[("cache", cache)]);
    let (p, q) = (hits("profiles"), hits("sessions"));
    println!("L1 hits: profiles {p:?}, sessions {q:?}");
    assert_eq!(p.as_deref(), Some("Counter(2)"));
    assert_eq!(q.as_deref(), Some("Counter(0)"));
    let labels: Vec<String> = snapshot
        .iter()
        .filter(|(k, _, _, _)| k.key().name() == "floodwall_cache_loads_total")
        .flat_map(|(k, _, _, _)| {
            k.key()
                .labels()
                .map(|l| l.value().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    println!("caches reporting loads: {labels:?}");
    assert_eq!(unnamed.len(), 2);
    let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
    assert_eq!(
        distinct.len(),
        labels.len(),
        "every cache has a name of its own"
    );
    assert!(
        labels.len() >= 5,
        "profiles, sessions, two unnamed, one more: {labels:?}"
    );
    let runs = |name: &str| {
        value(
            "floodwall_idempotency_executions_total",
            &[("idempotency", name)],
        )
    };
    let replays = |name: &str| {
        value(
            "floodwall_idempotency_replays_total",
            &[("idempotency", name)],
        )
    };
    println!(
        "idempotency \"orders\": executions {:?}, replays {:?}; the unnamed one: executions {:?}, replays {:?}",
        runs("orders"),
        replays("orders"),
        runs(idem.name()),
        replays(idem.name())
    );
    assert_eq!(runs("orders").as_deref(), Some("Counter(1)"));
    assert_eq!(replays("orders").as_deref(), Some("Counter(0)"));
    assert_eq!(runs(idem.name()).as_deref(), Some("Counter(1)"));
    assert_eq!(replays(idem.name()).as_deref(), Some("Counter(1)"));
    let idle = value("floodwall_limiter_allowed_total", &[("limit", "idle")]);
    let idle_denied = value("floodwall_limiter_denied_total", &[("limit", "idle")]);
    println!("a limiter never used: allowed {idle:?}, denied {idle_denied:?}");
    assert_eq!(idle.as_deref(), Some("Counter(0)"));
    assert_eq!(idle_denied.as_deref(), Some("Counter(0)"));
    let mut names: Vec<String> = snapshot
        .iter()
        .map(|(key, _, _, _)| key.key().name().to_owned())
        .collect();
    names.sort();
    names.dedup();
    let undescribed: Vec<&String> = names
        .iter()
        .filter(|n| {
            !snapshot
                .iter()
                .any(|(k, _, d, _)| k.key().name() == n.as_str() && d.is_some())
        })
        .collect();
    println!("{} metric names emitted: {names:?}", names.len());
    for want in [
        "floodwall_circuit_breaker_calls_total",
        "floodwall_circuit_breaker_state",
        "floodwall_retry_retries_total",
        "floodwall_bulkhead_rejected_total",
        "floodwall_limiter_denied_total",
        "floodwall_cache_loads_total",
        "floodwall_cache_l1_hits_total",
        "floodwall_idempotency_executions_total",
        "floodwall_idempotency_replays_total",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} was emitted");
    }
    assert!(
        undescribed.is_empty(),
        "without a description: {undescribed:?}"
    );
}
