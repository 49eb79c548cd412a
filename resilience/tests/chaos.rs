//! Fault injection: seeded and reproducible, at the configured rates, through the layer.

use std::time::Duration;

use floodwall_resilience::chaos::{Chaos, ChaosLayer, Faults};
use floodwall_resilience::{Error, ErrorLayer};
use floodwall_testkit::Flaky;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn chaos(seed: u64) -> Chaos {
    Chaos::builder()
        .error_rate(0.1)
        .latency(Duration::from_millis(250), 0.3)
        .seed(seed)
        .build()
        .unwrap()
}

#[test]
fn a_seed_replays_the_same_faults() {
    let a: Vec<Faults> = {
        let c = chaos(42);
        (0..1000).map(|_| c.draw()).collect()
    };
    let b: Vec<Faults> = {
        let c = chaos(42);
        (0..1000).map(|_| c.draw()).collect()
    };
    let other: Vec<Faults> = {
        let c = chaos(43);
        (0..1000).map(|_| c.draw()).collect()
    };
    assert_eq!(a, b);
    assert_ne!(a, other);
}

#[test]
fn faults_come_at_their_rates() {
    let c = chaos(9);
    let n = 100_000;
    let draws: Vec<Faults> = (0..n).map(|_| c.draw()).collect();
    let errors = draws.iter().filter(|f| f.error.is_some()).count() as f64 / n as f64;
    let slow = draws.iter().filter(|f| f.latency.is_some()).count() as f64 / n as f64;
    println!("error rate {errors:.4} (want 0.1), latency rate {slow:.4} (want 0.3)");
    assert!((0.095..=0.105).contains(&errors), "{errors}");
    assert!((0.29..=0.31).contains(&slow), "{slow}");
    assert!(Chaos::builder().error_rate(1.5).build().is_err());
    assert!(
        Chaos::builder()
            .latency(Duration::ZERO, -0.1)
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn the_layer_injects_latency_and_errors() {
    let always = Chaos::builder()
        .error_rate(1.0)
        .latency(Duration::from_millis(100), 1.0)
        .build()
        .unwrap();
    let downstream = Flaky::healthy();
    let mut svc = ChaosLayer::new(always.clone()).layer(ErrorLayer.layer(downstream.clone()));
    let start = Instant::now();
    let r = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert!(matches!(r, Err(Error::Injected(i)) if i.call == 0), "{r:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(
        downstream.calls(),
        0,
        "an injected error never reaches the downstream"
    );

    let slow_only = Chaos::builder()
        .latency(Duration::from_millis(40), 1.0)
        .build()
        .unwrap();
    let mut svc = ChaosLayer::new(slow_only).layer(ErrorLayer.layer(downstream.clone()));
    let start = Instant::now();
    let r = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert_eq!(r, Ok(1));
    assert_eq!(start.elapsed(), Duration::from_millis(40));

    always.set_enabled(false);
    let mut svc = ChaosLayer::new(always).layer(ErrorLayer.layer(downstream.clone()));
    assert_eq!(
        ServiceExt::<()>::ready(&mut svc)
            .await
            .unwrap()
            .call(())
            .await,
        Ok(2)
    );
}
