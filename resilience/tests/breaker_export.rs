//! A breaker's exported state, imported into a new breaker: random histories on a count and a
//! time window (manual clock) export, import and export again to the same value; the new
//! breaker then behaves as the old one for the calls that follow; a mismatched window is
//! refused naming it; the value survives serde (JSON).

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_resilience::circuit_breaker::{
    CircuitBreaker, ExportedState, OpenWait, Outcome, SlidingWindow, State,
};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Call(Outcome, u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![Just(Outcome::Success), Just(Outcome::Failure)], 0u64..30)
            .prop_map(|(o, ms)| Op::Call(o, ms)),
        1 => (0u64..3_000).prop_map(Op::Advance),
    ]
}

fn breaker(window: SlidingWindow, clock: &ManualClock) -> CircuitBreaker {
    CircuitBreaker::builder()
        .sliding_window(window)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .slow_call_duration(Some(Duration::from_millis(20)))
        .open_wait(OpenWait::Backoff {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(8),
        })
        .permitted_calls_in_half_open(NonZeroU32::new(2).unwrap())
        .automatic_half_open(false)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// One call through `b` taking `ms` of the clock, or a rejection.
fn call(b: &CircuitBreaker, clock: &ManualClock, outcome: Outcome, ms: u64) {
    if let Ok(permit) = b.try_acquire() {
        clock.advance(Duration::from_millis(ms));
        permit.record(outcome);
    }
}

fn window() -> impl Strategy<Value = SlidingWindow> {
    prop_oneof![
        (1u32..12).prop_map(|n| SlidingWindow::Count(NonZeroU32::new(n).unwrap())),
        (1u32..6).prop_map(|n| SlidingWindow::Time(NonZeroU32::new(n).unwrap())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Export → import → export gives the same value; afterwards both breakers see the same
    /// calls and stay in step: state, window totals and rates after every one.
    #[test]
    fn an_imported_breaker_continues_where_the_exported_one_was(
        window in window(),
        history in prop::collection::vec(op(), 0..60),
        after in prop::collection::vec(op(), 0..40),
    ) {
        let clock = ManualClock::new();
        let old = breaker(window, &clock);
        for op in &history {
            match *op {
                Op::Call(o, ms) => call(&old, &clock, o, ms),
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
            }
        }
        let exported = old.export();
        let new = breaker(window, &clock);
        new.import(&exported).unwrap();
        prop_assert_eq!(&new.export(), &exported);
        let view = |b: &CircuitBreaker| {
            let s = b.snapshot();
            (s.state, s.calls, s.failures, s.slow_calls, s.failure_rate)
        };
        prop_assert_eq!(view(&new), view(&old));
        for op in &after {
            match *op {
                Op::Call(o, ms) => {
                    // One clock for both: each call's time passes once, around both.
                    let (a, b) = (old.try_acquire(), new.try_acquire());
                    prop_assert_eq!(a.is_ok(), b.is_ok());
                    clock.advance(Duration::from_millis(ms));
                    if let (Ok(a), Ok(b)) = (a, b) {
                        a.record(o);
                        b.record(o);
                    }
                }
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
            }
            prop_assert_eq!(view(&new), view(&old));
        }
    }
}

#[test]
fn an_open_breaker_exports_its_remaining_wait_and_backoff_count() {
    let clock = ManualClock::new();
    let window = SlidingWindow::Count(NonZeroU32::new(4).unwrap());
    let old = breaker(window, &clock);
    for _ in 0..4 {
        call(&old, &clock, Outcome::Failure, 1);
    }
    assert_eq!(old.state(), State::Open);
    clock.advance(Duration::from_millis(400));
    let exported = old.export();
    println!("{exported:?}");
    assert_eq!(exported.consecutive_opens, 1);
    // Opened at 4 ms (four 1 ms calls) for 1 s; 400 ms later, 600 ms are left.
    assert_eq!(exported.open_remaining, Some(Duration::from_millis(600)));
    let new = breaker(window, &clock);
    new.import(&exported).unwrap();
    assert_eq!(new.state(), State::Open, "a new instance starts OPEN");
    assert!(new.try_acquire().is_err(), "no call reaches the dependency");
    clock.advance(Duration::from_millis(600));
    assert_eq!(new.state(), State::HalfOpen, "when the old one would have");
}

#[test]
fn a_mismatched_window_is_refused_naming_it() {
    let clock = ManualClock::new();
    let exported = breaker(SlidingWindow::Count(NonZeroU32::new(4).unwrap()), &clock).export();
    let other = breaker(SlidingWindow::Count(NonZeroU32::new(8).unwrap()), &clock);
    let e = other.import(&exported).unwrap_err();
    println!("{e}");
    assert_eq!(e.field, "window");
    let mut newer = exported.clone();
    newer.version += 1;
    let same = breaker(SlidingWindow::Count(NonZeroU32::new(4).unwrap()), &clock);
    assert_eq!(same.import(&newer).unwrap_err().field, "version");
}

#[test]
fn an_exported_state_survives_json() {
    let clock = ManualClock::new();
    let b = breaker(SlidingWindow::Time(NonZeroU32::new(3).unwrap()), &clock);
    call(&b, &clock, Outcome::Failure, 25);
    clock.advance(Duration::from_millis(1200));
    call(&b, &clock, Outcome::Success, 5);
    let exported = b.export();
    let json = serde_json::to_string(&exported).unwrap();
    println!("{json}");
    let back: ExportedState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, exported);
}
