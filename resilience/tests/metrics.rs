//! With the `metrics` feature, every primitive reports under its documented names.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use floodwall_resilience::adaptive::{AdaptiveLimit, Aimd};
use floodwall_resilience::bulkhead::Bulkhead;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow};
use floodwall_resilience::hedge::{Hedge, HedgeDelay};
use floodwall_resilience::retry::{Backoff, Jitter, Retry, RetryBudget};
use floodwall_testkit::{Flaky, FlakyErrorKind, Step};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

type Snap = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The recorder's values since the previous snapshot (taking one resets them).
fn take(snap: &Snapshotter) -> Snap {
    snap.snapshot().into_vec()
}

fn value(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    snap.iter().find_map(|(key, _, _, v)| {
        let k = key.key();
        let same_labels = labels.iter().all(|(l, want)| {
            k.labels()
                .any(|lab| lab.key() == *l && lab.value() == *want)
        });
        (k.name() == name && same_labels).then(|| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        })
    })
}

struct Prims {
    breaker: CircuitBreaker,
    retry: Retry,
    bulkhead: Bulkhead,
    hedge: Hedge,
    limit: AdaptiveLimit,
}

#[tokio::test(start_paused = true)]
async fn primitives_report_their_metrics() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let p = metrics::with_local_recorder(&recorder, || Prims {
        breaker: CircuitBreaker::builder()
            .name("pay")
            .sliding_window(SlidingWindow::Count(NonZeroU32::new(2).unwrap()))
            .minimum_calls(2)
            .build()
            .unwrap(),
        retry: Retry::builder()
            .name("pay")
            .max_attempts(NonZeroU32::new(3).unwrap())
            .backoff(Backoff::Constant(Duration::from_millis(1)))
            .jitter(Jitter::None)
            .budget(
                RetryBudget::builder()
                    .min_per_sec(0)
                    .ratio(0.5)
                    .build()
                    .unwrap(),
            )
            .build(),
        bulkhead: Bulkhead::builder()
            .name("pay")
            .max_concurrent(NonZeroUsize::new(1).unwrap())
            .max_waiting(1)
            .max_wait(Duration::from_secs(1))
            .build(),
        hedge: Hedge::builder()
            .name("pay")
            .delay(HedgeDelay::Fixed(Duration::from_millis(5)))
            .build(),
        limit: AdaptiveLimit::builder(Aimd {
            initial: 3,
            ..Aimd::default()
        })
        .name("pay")
        .build(),
    });

    // Breaker: one success, one failure (50%: opens), then two rejections.
    let ok = Flaky::healthy();
    let bad = Flaky::always_failing(FlakyErrorKind::Transient);
    p.breaker.call(|| ok.call()).await.unwrap();
    let _ = p.breaker.call(|| bad.call()).await;
    let _ = p.breaker.call(|| bad.call()).await;
    let _ = p.breaker.call(|| ok.call()).await;
    let s1 = take(&snap);
    let calls = |outcome| {
        value(
            &s1,
            "floodwall_circuit_breaker_calls_total",
            &[("breaker", "pay"), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("success"), Some(1.0));
    assert_eq!(calls("failure"), Some(1.0));
    assert_eq!(calls("rejected"), Some(2.0));
    assert_eq!(
        value(
            &s1,
            "floodwall_circuit_breaker_state",
            &[("breaker", "pay")]
        ),
        Some(1.0),
        "1 = open"
    );
    assert_eq!(
        value(&s1, "floodwall_adaptive_limit", &[("limiter", "pay")]),
        Some(3.0),
        "set at build"
    );

    // Retry: two requests deposit 1 token; the first retry spends it, the next is refused.
    let _ = p.retry.call(|| bad.call()).await;
    let _ = p.retry.call(|| bad.call()).await;
    let s2 = take(&snap);
    assert_eq!(
        value(&s2, "floodwall_retry_retries_total", &[("retry", "pay")]),
        Some(1.0)
    );
    assert!(
        value(
            &s2,
            "floodwall_retry_budget_exhausted_total",
            &[("retry", "pay")]
        ) >= Some(1.0)
    );

    // Bulkhead: one in flight, one rejected as full, one waiting (queue depth 1).
    let held = p.bulkhead.try_acquire().unwrap();
    assert!(p.bulkhead.try_acquire().is_err());
    let bh = p.bulkhead.clone();
    let waiter = tokio::spawn(async move { bh.acquire().await.map(drop) });
    while p.bulkhead.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    let s3 = take(&snap);
    assert_eq!(
        value(&s3, "floodwall_bulkhead_in_flight", &[("bulkhead", "pay")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s3,
            "floodwall_bulkhead_queue_depth",
            &[("bulkhead", "pay")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s3,
            "floodwall_bulkhead_rejected_total",
            &[("bulkhead", "pay"), ("reason", "full")]
        ),
        Some(1.0)
    );
    drop(held);
    waiter.await.unwrap().unwrap();

    // Hedge: a stalled first attempt triggers one hedge.
    let stall = Flaky::scripted([Step::ok().after(Duration::from_secs(1))], Step::ok());
    p.hedge.call(|| stall.call()).await.unwrap();
    // Adaptive limit: a fourth caller over the limit of 3 is rejected.
    let permits: Vec<_> = (0..3).map(|_| p.limit.try_acquire().unwrap()).collect();
    assert!(p.limit.try_acquire().is_err());
    drop(permits);
    let s4 = take(&snap);
    assert_eq!(
        value(&s4, "floodwall_hedge_attempts_total", &[("hedge", "pay")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s4,
            "floodwall_adaptive_rejected_total",
            &[("limiter", "pay")]
        ),
        Some(1.0)
    );
}

/// A disabled breaker records nothing: no outcome counts (resilience4j's DISABLED).
#[tokio::test]
async fn a_disabled_breaker_counts_no_outcomes() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let breaker = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::builder().name("off").build().unwrap()
    });
    breaker.disable();
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..5 {
            breaker.try_acquire().unwrap().failure();
            breaker.try_acquire().unwrap().success();
        }
    });
    let s = take(&snap);
    for outcome in ["success", "failure"] {
        let counted = value(
            &s,
            "floodwall_circuit_breaker_calls_total",
            &[("outcome", outcome)],
        );
        assert!(counted.is_none_or(|n| n == 0.0), "{outcome}: {counted:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_named_timeout_measures_calls_in_time_and_counts_calls_cut() {
    use floodwall_resilience::timeout::{Timeout, TimeoutLayer};
    use tower::{Layer, ServiceExt};

    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let (named, unnamed) = metrics::with_local_recorder(&recorder, || {
        (
            Timeout::new(Duration::from_millis(100)).name("upstream"),
            Timeout::new(Duration::from_millis(100)),
        )
    });
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, ()>(0)
    };
    assert!(named.call(|| async { Ok::<_, ()>(1) }).await.is_ok());
    assert!(named.call(slow).await.is_err());
    assert!(unnamed.call(slow).await.is_err());
    let svc = TimeoutLayer::new(named.clone()).layer(tower::service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, floodwall_resilience::Error<()>>(ms)
    }));
    assert_eq!(svc.clone().oneshot(10).await, Ok(10));
    assert!(svc.oneshot(500).await.is_err());

    let s = take(&snap);
    let labels = [("timeout", "upstream")];
    let in_time = value(&s, "floodwall_timeout_call_duration_seconds", &labels);
    let cut = value(&s, "floodwall_timeout_timeouts_total", &labels);
    println!("timeout=upstream: {in_time:?} calls in time, {cut:?} cut");
    assert_eq!(in_time, Some(2.0), "two calls finished in time");
    assert_eq!(cut, Some(2.0), "two calls were cut");
    let series = s
        .iter()
        .filter(|(k, ..)| k.key().name().starts_with("floodwall_timeout_"))
        .count();
    assert_eq!(series, 2, "the unnamed timeout adds no series");
}

/// A named adaptive throttle counts the calls it rejects locally.
#[test]
fn a_named_throttle_counts_its_local_rejections() {
    use floodwall_resilience::throttle::AdaptiveThrottle;
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let throttle = metrics::with_local_recorder(&recorder, || {
        AdaptiveThrottle::builder()
            .name("upstream")
            .build()
            .unwrap()
    });
    // A backend that accepts nothing: after the first calls, nearly all are rejected.
    let mut rejected = 0u64;
    for _ in 0..200 {
        match throttle.try_acquire() {
            Ok(permit) => permit.rejected(),
            Err(_) => rejected += 1,
        }
    }
    let s = take(&snap);
    let counted = value(
        &s,
        "floodwall_throttle_rejected_total",
        &[("throttle", "upstream")],
    );
    println!("{rejected} of 200 calls rejected locally; the counter says {counted:?}");
    assert!(rejected > 150, "{rejected}");
    assert_eq!(counted, Some(rejected as f64));
}

#[test]
fn a_named_shedder_reports_its_level_pressure_reserve_and_shed_requests_by_priority() {
    use floodwall_resilience::shed::{LoadShedder, MemoryPressure, Priority};
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let shedder = metrics::with_local_recorder(&recorder, || {
        LoadShedder::builder()
            .name("api")
            .signal(|| 1.5)
            .signal(MemoryPressure::from_fn(|| Some((45, 100))).threshold(0.9))
            .capacity(10)
            .manual_sampling()
            .build()
            .unwrap()
    });
    // 8 default requests fill the non-critical share; 1 critical one uses the reserve.
    let mut held: Vec<_> = (0..8)
        .map(|_| shedder.try_acquire(Priority::Default).unwrap())
        .collect();
    held.push(shedder.try_acquire(Priority::Critical).unwrap());
    for _ in 0..5 {
        shedder.sample_now();
    }
    let shed = (0..100)
        .filter(|_| shedder.try_acquire(Priority::Sheddable).is_err())
        .count();
    let s = take(&snap);
    let api = [("shedder", "api")];
    let read = |name| value(&s, name, &api);
    println!(
        "level {:?}, pressure {:?}, in flight {:?}, reserve in use {:?}; {shed} sheddable shed",
        read("floodwall_shed_level"),
        read("floodwall_shed_pressure"),
        read("floodwall_shed_in_flight"),
        read("floodwall_shed_reserved_in_use")
    );
    assert_eq!(read("floodwall_shed_level"), Some(0.5));
    assert_eq!(read("floodwall_shed_pressure"), Some(1.5));
    assert_eq!(read("floodwall_shed_in_flight"), Some(9.0));
    assert_eq!(read("floodwall_shed_reserved_in_use"), Some(1.0));
    // Each signal's own reading, by its name.
    let signal = |name| {
        value(
            &s,
            "floodwall_shed_signal_pressure",
            &[("shedder", "api"), ("signal", name)],
        )
    };
    println!(
        "signals: custom {:?}, memory {:?}",
        signal("custom"),
        signal("memory")
    );
    assert_eq!(signal("custom"), Some(1.5));
    assert_eq!(signal("memory"), Some(0.5));
    let sheddable = value(
        &s,
        "floodwall_shed_rejected_total",
        &[("shedder", "api"), ("priority", "sheddable")],
    );
    assert_eq!(sheddable, Some(shed as f64));
    drop(held);
}

/// A fleet store that never answers, standing in for an unreachable Redis.
struct Unreachable;

impl floodwall_resilience::circuit_breaker::fleet::FleetStore for Unreachable {
    fn sync<'a>(
        &'a self,
        _: &'a str,
        _: &'a floodwall_resilience::circuit_breaker::fleet::MemberReport,
        _: &'a floodwall_resilience::circuit_breaker::fleet::FleetRules,
    ) -> futures::future::BoxFuture<
        'a,
        Result<floodwall_resilience::circuit_breaker::fleet::FleetView, floodwall_core::StoreError>,
    > {
        Box::pin(async {
            Err(floodwall_core::StoreError::unavailable(
                "connection refused",
            ))
        })
    }

    fn leave<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), floodwall_core::StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn a_fleet_breaker_reports_its_fleet_and_whether_its_store_answers() {
    use floodwall_resilience::circuit_breaker::fleet::{FleetBreaker, MemoryFleet, Quorum};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let fleet = MemoryFleet::new();
    let member = |name: &'static str, store: MemoryFleet| {
        let b = CircuitBreaker::builder()
            .name(name)
            .sliding_window(SlidingWindow::Count(NonZeroU32::new(2).unwrap()))
            .minimum_calls(2)
            .build()
            .unwrap();
        FleetBreaker::builder(b, store)
            .quorum(Quorum::Count(2))
            .join()
    };
    let (a, b, alone) = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let a = member("orders", fleet.clone()).await.unwrap();
            let b = member("orders", fleet.clone()).await.unwrap();
            let alone = FleetBreaker::builder(
                CircuitBreaker::builder().name("ledger").build().unwrap(),
                Unreachable,
            )
            .join()
            .await
            .unwrap();
            (a, b, alone)
        })
    });
    rt.block_on(async {
        for m in [&a, &b] {
            for _ in 0..2 {
                m.breaker().try_acquire().unwrap().failure();
            }
            m.sync_now().await.unwrap();
        }
        assert!(alone.sync_now().await.is_err());
    });
    let s = take(&snap);
    let orders = [("breaker", "orders")];
    let ledger = [("breaker", "ledger")];
    let read = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    println!(
        "orders: connected {:?}, open {:?}, instances {:?}; ledger: connected {:?}, sync errors {:?}",
        read("floodwall_circuit_breaker_fleet_connected", &orders),
        read("floodwall_circuit_breaker_fleet_open", &orders),
        read("floodwall_circuit_breaker_fleet_instances", &orders),
        read("floodwall_circuit_breaker_fleet_connected", &ledger),
        read("floodwall_circuit_breaker_fleet_sync_errors_total", &ledger),
    );
    assert_eq!(
        read("floodwall_circuit_breaker_fleet_connected", &orders),
        Some(1.0)
    );
    assert_eq!(
        read("floodwall_circuit_breaker_fleet_open", &orders),
        Some(1.0)
    );
    assert_eq!(
        read("floodwall_circuit_breaker_fleet_instances", &orders),
        Some(2.0)
    );
    assert_eq!(
        read("floodwall_circuit_breaker_fleet_connected", &ledger),
        Some(0.0)
    );
    assert_eq!(
        read("floodwall_circuit_breaker_fleet_sync_errors_total", &ledger),
        Some(2.0),
        "the first sync at join and the one after"
    );
}
