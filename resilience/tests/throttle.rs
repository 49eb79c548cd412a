//! Client-side adaptive throttling against a backend that accepts at most one request per
//! 10 ms tick while its client offers ten: the client's sent/accepted ratio settles near `K`
//! (not the ten it would be without the throttle), and once the backend heals the client
//! sends everything again. Time is a manual clock.

use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_resilience::throttle::AdaptiveThrottle;

/// `ticks` ticks of 10 ms, `offered` calls per tick, the backend accepting at most
/// `capacity` per tick: `(sent, accepted)`.
fn drive(
    throttle: &AdaptiveThrottle,
    clock: &ManualClock,
    ticks: u32,
    offered: u32,
    capacity: u32,
) -> (u64, u64) {
    let (mut sent, mut accepted) = (0, 0);
    for _ in 0..ticks {
        let mut served = 0;
        for _ in 0..offered {
            let Ok(permit) = throttle.try_acquire() else {
                continue;
            };
            sent += 1;
            if served < capacity {
                served += 1;
                accepted += 1;
                permit.accepted();
            } else {
                permit.rejected();
            }
        }
        clock.advance(Duration::from_millis(10));
    }
    (sent, accepted)
}

#[test]
fn an_overloaded_backend_gets_about_k_times_what_it_accepts_and_everything_once_healed() {
    let clock = ManualClock::new();
    let throttle = AdaptiveThrottle::builder()
        .k(2.0)
        .window(Duration::from_secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    // Warm-up: one window of overload, then measure the next.
    drive(&throttle, &clock, 1_000, 10, 1);
    let (sent, accepted) = drive(&throttle, &clock, 1_000, 10, 1);
    let ratio = sent as f64 / accepted as f64;
    println!(
        "backend at 10 % of the offered load: {sent} sent, {accepted} accepted (ratio {ratio:.2}, K = 2); rejecting {:.0} % locally",
        throttle.reject_probability() * 100.0
    );
    assert!(ratio <= 2.0 + 0.3, "{ratio}");
    // A tick whose ten calls are all rejected locally leaves the backend idle: at the ~83 %
    // rejection rate that settles, about 0.83^10 ≈ 16 % of ticks (binomial: 845 ± 11 of 1000).
    assert!(accepted >= 780, "the backend is kept busy: {accepted}");

    // Healed: the share sent climbs window by window (the window still remembers the
    // calls it rejected while the backend was overloaded), until nothing is rejected.
    let climb: Vec<u64> = (0..3)
        .map(|_| drive(&throttle, &clock, 1_000, 10, 10).0)
        .collect();
    println!("healed: sent per window of 10,000 offered: {climb:?}");
    assert!(climb.windows(2).all(|w| w[0] <= w[1]), "{climb:?}");
    let (sent, accepted) = drive(&throttle, &clock, 100, 10, 10);
    println!(
        "healed: {sent} of 1000 sent, {accepted} accepted; rejecting {:.0} % locally",
        throttle.reject_probability() * 100.0
    );
    assert_eq!(sent, 1_000);
    assert_eq!(throttle.reject_probability(), 0.0);
}

#[test]
fn settings_that_make_no_sense_are_refused_naming_them() {
    for (k, window, field) in [
        (0.5, Duration::from_secs(1), "k"),
        (f64::NAN, Duration::from_secs(1), "k"),
        (2.0, Duration::from_millis(1), "window"),
    ] {
        let err = AdaptiveThrottle::builder()
            .k(k)
            .window(window)
            .build()
            .unwrap_err();
        println!("{err}");
        assert_eq!(err.field, field);
        assert!(err.to_string().contains(&format!("`{field}`")));
    }
    assert!(
        AdaptiveThrottle::builder()
            .window(Duration::MAX)
            .build()
            .is_ok()
    );
}
