//! Adaptive concurrency: AIMD against its formula, the limit is never exceeded, Gradient2
//! finds a simulated server's capacity, and the layer rejects over the limit.

use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_resilience::adaptive::{
    AdaptiveLimit, AdaptiveLimitLayer, Aimd, Gradient2, Gradient2Config, LimitAlgorithm, Sample,
    Vegas,
};
use floodwall_resilience::circuit_breaker::Outcome;
use floodwall_resilience::{Error, ErrorLayer};
use floodwall_testkit::Flaky;
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt};

proptest! {
    #[test]
    fn aimd_follows_its_formula(
        samples in prop::collection::vec((1u64..10_000, 1usize..300, any::<bool>()), 1..200),
        ratio in 0.5f64..0.99,
    ) {
        let mut algo = Aimd { initial: 20, min: 2, max: 150, backoff_ratio: ratio, timeout: Duration::from_millis(5000) };
        let mut limit = algo.initial_limit();
        for (ms, in_flight, dropped) in samples {
            let want = if dropped || ms > 5000 {
                ((limit as f64 * ratio).floor() as usize).clamp(2, 150)
            } else if in_flight * 2 >= limit {
                (limit + 1).clamp(2, 150)
            } else {
                limit
            };
            limit = algo.update(limit, Sample { rtt: Duration::from_millis(ms), in_flight, dropped });
            prop_assert_eq!(limit, want);
        }
    }

    #[test]
    fn gradient2_stays_within_bounds(samples in prop::collection::vec((1u64..1000, 1usize..400, any::<bool>()), 1..300)) {
        let mut algo = Gradient2::new(Gradient2Config { min: 5, max: 120, ..Gradient2Config::default() });
        let mut limit = algo.initial_limit();
        for (ms, in_flight, dropped) in samples {
            limit = algo.update(limit, Sample { rtt: Duration::from_millis(ms), in_flight, dropped });
            prop_assert!((5..=120).contains(&limit));
        }
    }
}

/// A limit that never moves, to check admission alone.
struct Fixed(usize);

impl LimitAlgorithm for Fixed {
    fn initial_limit(&self) -> usize {
        self.0
    }
    fn update(&mut self, limit: usize, _: Sample) -> usize {
        limit
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_more_in_flight_than_the_limit() {
    let limit = AdaptiveLimit::builder(Fixed(8)).build();
    let downstream = Flaky::slow(Duration::from_millis(2));
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let (l, d) = (limit.clone(), downstream.clone());
            tokio::spawn(async move { l.call(|| d.call()).await })
        })
        .collect();
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => {}
            Err(Error::Limited(r)) => {
                assert_eq!(r.limit, 8);
                rejected += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "400 callers, limit 8: {} admitted, {rejected} rejected, max in flight {}",
        400 - rejected,
        downstream.max_in_flight()
    );
    assert!(downstream.max_in_flight() <= 8);
    assert_eq!(limit.in_flight(), 0);
}

/// A server that serves `capacity` calls at `base` latency; beyond that, calls queue and
/// latency grows in proportion. Each round, the client fills the limit, time passes by the
/// round's latency, and every call succeeds.
fn simulate(algo: impl LimitAlgorithm, capacity: usize, rounds: usize) -> Vec<usize> {
    let clock = ManualClock::new();
    let limit = AdaptiveLimit::builder(algo).clock(clock.clone()).build();
    let base = Duration::from_millis(10);
    let mut history = Vec::new();
    for _ in 0..rounds {
        let mut permits = Vec::new();
        while let Ok(p) = limit.try_acquire() {
            permits.push(p);
        }
        let load = permits.len();
        let rtt = base.mul_f64((load as f64 / capacity as f64).max(1.0));
        clock.advance(rtt);
        for p in permits {
            p.record(Outcome::Success);
        }
        history.push(limit.limit());
    }
    history
}

#[test]
fn vegas_settles_just_above_a_servers_capacity() {
    let history = simulate(Vegas::new(20, 1, 1000), 100, 300);
    let tail = &history[200..];
    let (lo, hi) = (*tail.iter().min().unwrap(), *tail.iter().max().unwrap());
    println!("Vegas, capacity 100: limit over the last 100 rounds in [{lo}, {hi}]");
    // Equilibrium: estimated queue (limit - capacity here) within [3 log10 L, 6 log10 L].
    assert!(lo >= 100 && hi <= 115, "[{lo}, {hi}]");
}

#[test]
fn gradient2_follows_a_latency_regime_change() {
    let clock = ManualClock::new();
    let limit = AdaptiveLimit::builder(Gradient2::new(Gradient2Config {
        initial: 50,
        min: 5,
        max: 1000,
        ..Gradient2Config::default()
    }))
    .clock(clock.clone())
    .build();
    let round = |latency: Duration| {
        let mut permits = Vec::new();
        while let Ok(p) = limit.try_acquire() {
            permits.push(p);
        }
        clock.advance(latency);
        for p in permits {
            p.record(Outcome::Success);
        }
        limit.limit()
    };
    let mut before = 0;
    for _ in 0..3 {
        before = round(Duration::from_millis(10));
    }
    let after_spike = round(Duration::from_millis(50));
    println!("Gradient2: limit {before} at 10 ms, {after_spike} after one round at 50 ms");
    assert!(after_spike < before, "a 5x latency spike shrinks the limit");
    assert!(after_spike >= 5);
}

#[test]
fn aimd_backs_off_on_drops() {
    let clock = ManualClock::new();
    let limit = AdaptiveLimit::builder(Aimd {
        initial: 40,
        ..Aimd::default()
    })
    .clock(clock)
    .build();
    let permits: Vec<_> = (0..40).map(|_| limit.try_acquire().unwrap()).collect();
    for p in permits {
        p.record(Outcome::Failure);
    }
    assert!(
        limit.limit() < 40 && limit.limit() >= 1,
        "{}",
        limit.limit()
    );
    let p = limit.try_acquire().unwrap();
    drop(p); // cancelled: no sample
    assert_eq!(limit.in_flight(), 0);
}

#[tokio::test]
async fn the_layer_rejects_over_the_limit() {
    let limit = AdaptiveLimit::builder(Fixed(1)).build();
    let mut svc = AdaptiveLimitLayer::new(limit.clone())
        .layer(ErrorLayer.layer(Flaky::slow(Duration::from_millis(50))));
    let first = ServiceExt::<()>::ready(&mut svc).await.unwrap().call(());
    let second = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert!(
        matches!(second, Err(Error::Limited(r)) if r.limit == 1),
        "{second:?}"
    );
    assert_eq!(first.await, Ok(1));
    assert_eq!(limit.in_flight(), 0);
}
