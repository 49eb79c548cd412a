//! Prioritized load shedding on a controlled signal (manual sampling, no wall clock): the
//! classes are shed in order, the level holds inside its hysteresis band, the capacity keeps
//! its reserved share for critical requests, the tower and HTTP layers answer as documented,
//! and the scheduling-delay probe sees a runtime that does not yield.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodwall_resilience::Error;
use floodwall_resilience::shed::{
    HttpShedLayer, LoadShedder, Priority, SchedulingDelay, ShedLayer, ShedReason, Signal,
};
use tower::{Layer, Service, ServiceExt, service_fn};

/// A pressure the test sets.
#[derive(Clone, Default)]
struct Dial(Arc<AtomicU64>);

impl Dial {
    fn set(&self, p: f64) {
        self.0.store(p.to_bits(), Ordering::Relaxed);
    }
}

impl Signal for Dial {
    fn pressure(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

fn shedder(dial: &Dial) -> LoadShedder {
    LoadShedder::builder()
        .signal(dial.clone())
        .manual_sampling()
        .build()
        .unwrap()
}

/// Shares of 10,000 requests per class that were shed.
fn shed_shares(shedder: &LoadShedder) -> [f64; 3] {
    [Priority::Sheddable, Priority::Default, Priority::Critical].map(|p| {
        let shed = (0..10_000)
            .filter(|_| shedder.try_acquire(p).is_err())
            .count();
        shed as f64 / 10_000.0
    })
}

#[test]
fn critical_is_admitted_while_sheddable_is_shed_on_a_controlled_signal() {
    let dial = Dial::default();
    let shedder = shedder(&dial);
    dial.set(0.5);
    shedder.sample_now();
    assert_eq!(shed_shares(&shedder), [0.0, 0.0, 0.0], "not overloaded");

    dial.set(1.5);
    for _ in 0..3 {
        shedder.sample_now();
    }
    let [sheddable, default, critical] = shed_shares(&shedder);
    println!(
        "level {:.2}: shed sheddable {:.1} %, default {:.1} %, critical {:.1} %",
        shedder.level(),
        sheddable * 100.0,
        default * 100.0,
        critical * 100.0
    );
    assert!((shedder.level() - 0.3).abs() < 1e-9);
    assert!(
        (0.56..0.64).contains(&sheddable),
        "2 × 0.3 of sheddable: {sheddable}"
    );
    assert_eq!((default, critical), (0.0, 0.0));

    for _ in 0..5 {
        shedder.sample_now();
    }
    let [sheddable, default, critical] = shed_shares(&shedder);
    println!(
        "level {:.2}: shed sheddable {:.1} %, default {:.1} %, critical {:.1} %",
        shedder.level(),
        sheddable * 100.0,
        default * 100.0,
        critical * 100.0
    );
    assert_eq!(sheddable, 1.0);
    assert!(
        (0.52..0.68).contains(&default),
        "2 × 0.8 − 1 of default: {default}"
    );
    assert_eq!(critical, 0.0);

    for _ in 0..5 {
        shedder.sample_now();
    }
    assert_eq!(
        shed_shares(&shedder),
        [1.0, 1.0, 0.0],
        "level 1: only critical"
    );
    let refused = shedder.try_acquire(Priority::Default).unwrap_err();
    assert!(matches!(refused.reason, ShedReason::Overload { .. }));
    assert_eq!(
        refused.to_string(),
        "request shed (default priority): overloaded, shedding at level 1.00; retry after 1s"
    );
}

#[test]
fn the_level_holds_inside_the_hysteresis_band_and_falls_below_it() {
    let dial = Dial::default();
    let shedder = shedder(&dial);
    let mut trace = Vec::new();
    for (pressure, samples) in [(1.2, 5), (0.9, 10), (0.5, 4), (0.85, 3), (0.5, 10)] {
        dial.set(pressure);
        for _ in 0..samples {
            shedder.sample_now();
        }
        trace.push((pressure, (shedder.level() * 100.0).round() / 100.0));
    }
    println!("(pressure, level after its samples): {trace:?}");
    assert_eq!(
        trace,
        [(1.2, 0.5), (0.9, 0.5), (0.5, 0.3), (0.85, 0.3), (0.5, 0.0)]
    );
}

#[test]
fn the_capacity_keeps_its_reserved_share_for_critical_requests() {
    let shedder = LoadShedder::builder()
        .capacity(10)
        .reserved_for_critical(0.2)
        .manual_sampling()
        .build()
        .unwrap();
    let mut held: Vec<_> = (0..8)
        .map(|_| shedder.try_acquire(Priority::Default).unwrap())
        .collect();
    let refused = shedder.try_acquire(Priority::Default).unwrap_err();
    assert_eq!(
        refused.reason,
        ShedReason::Capacity {
            in_flight: 8,
            limit: 8
        }
    );
    assert!(shedder.try_acquire(Priority::Sheddable).is_err());
    held.push(shedder.try_acquire(Priority::Critical).unwrap());
    held.push(shedder.try_acquire(Priority::Critical).unwrap());
    assert!(
        shedder.try_acquire(Priority::Critical).is_err(),
        "all 10 in use"
    );
    assert_eq!(shedder.in_flight(), 10);
    held.truncate(7);
    assert_eq!(shedder.in_flight(), 7);
    assert!(
        shedder.try_acquire(Priority::Default).is_ok(),
        "a slot came back"
    );
}

#[test]
fn bad_settings_name_their_field() {
    let e = LoadShedder::builder()
        .capacity(0)
        .manual_sampling()
        .build()
        .unwrap_err();
    assert_eq!(e.field, "capacity");
    let e = LoadShedder::builder()
        .reserved_for_critical(1.0)
        .manual_sampling()
        .build()
        .unwrap_err();
    assert_eq!(e.field, "reserved_for_critical");
    let e = LoadShedder::builder().build().unwrap_err();
    assert_eq!(
        e.field, "sample_every",
        "background sampling outside a runtime: {e}"
    );
}

#[tokio::test]
async fn the_tower_layer_fails_a_shed_call_without_calling_the_service() {
    let dial = Dial::default();
    let shedder = shedder(&dial);
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let inner = service_fn(move |x: u32| {
        counted.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<u32, std::io::Error>(x) }
    });
    let by_parity = |x: &u32| {
        if x.is_multiple_of(2) {
            Priority::Critical
        } else {
            Priority::Sheddable
        }
    };
    let mut svc = ShedLayer::new(shedder.clone(), by_parity).layer(inner);
    dial.set(2.0);
    for _ in 0..5 {
        shedder.sample_now();
    }
    assert_eq!(svc.ready().await.unwrap().call(2).await.unwrap(), 2);
    let shed = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert!(matches!(shed, Error::Shed(s) if s.priority == Priority::Sheddable));
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "the shed call never reached the service"
    );
}

#[tokio::test]
async fn the_http_layer_answers_503_with_retry_after_by_the_priority_header() {
    let dial = Dial::default();
    let shedder = LoadShedder::builder()
        .signal(dial.clone())
        .manual_sampling()
        .retry_after(Duration::from_millis(2500))
        .build()
        .unwrap();
    let inner = service_fn(|_req: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    });
    let svc = HttpShedLayer::new(shedder.clone()).layer(inner);
    dial.set(3.0);
    for _ in 0..10 {
        shedder.sample_now();
    }
    let request = |priority: Option<&str>| {
        let mut b = http::Request::builder().uri("/pay");
        if let Some(p) = priority {
            b = b.header("x-priority", p);
        }
        b.body(String::new()).unwrap()
    };
    let shed = svc.clone().oneshot(request(None)).await.unwrap();
    assert_eq!(shed.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "3");
    assert_eq!(shed.headers()["content-type"], "application/problem+json");
    println!("{}", shed.body());
    assert!(
        shed.body().contains("\"priority\":\"default\""),
        "{}",
        shed.body()
    );
    let served = svc
        .clone()
        .oneshot(request(Some("critical")))
        .await
        .unwrap();
    assert_eq!(
        (served.status(), served.body().as_str()),
        (http::StatusCode::OK, "ok")
    );
    // An extension set by an earlier layer wins over the header.
    let mut req = request(Some("critical"));
    req.extensions_mut().insert(Priority::Sheddable);
    let shed = svc.oneshot(req).await.unwrap();
    assert_eq!(shed.status(), http::StatusCode::SERVICE_UNAVAILABLE);
}

/// A task that runs 40 ms at a time without yielding holds up the probe's next poll by at
/// least that much (a lower bound: a busier machine only makes it later).
#[tokio::test(flavor = "current_thread")]
async fn the_scheduling_delay_probe_sees_a_runtime_that_does_not_yield() {
    let probe =
        SchedulingDelay::spawn(Duration::from_millis(20), Duration::from_millis(5)).unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let hog = tokio::spawn(async {
        for _ in 0..8 {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(40) {
                std::hint::spin_loop();
            }
            tokio::task::yield_now().await;
        }
    });
    hog.await.unwrap();
    let delay = probe.delay();
    let pressure = probe.pressure();
    println!("largest scheduling delay seen by the probe: {delay:?}; pressure {pressure:.1}");
    assert!(delay >= Duration::from_millis(35), "{delay:?}");
    assert!(pressure >= 1.75, "{pressure}");
}

/// A worker kept busy between two samples reads as busy: pressure near 1 / threshold on a
/// one-worker runtime (a lower bound: a busier machine only lengthens the busy time).
#[tokio::test(flavor = "current_thread")]
async fn the_worker_busy_signal_reads_a_busy_worker() {
    use floodwall_resilience::shed::WorkerBusy;
    let busy = WorkerBusy::current().unwrap().threshold(1.0);
    assert_eq!(busy.pressure(), 0.0, "the first sample reads none");
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(60) {
        std::hint::spin_loop();
    }
    // Tokio adds a worker's busy time when it parks.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let p = busy.pressure();
    println!("one worker spinning 60 ms: busy share {p:.2}");
    assert!(p >= 0.5, "{p}");
}
