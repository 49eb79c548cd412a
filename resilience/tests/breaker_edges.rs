//! Breaker edges ported from resilience4j's own tests, each with resilience4j's expected
//! figure: the threshold events in METRICS_ONLY, `reset()` on a CLOSED breaker, the backoff
//! after a forced opening, and randomized jitter at its cap.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_resilience::circuit_breaker::{
    BreakerEvent, CircuitBreaker, OpenWait, SlidingWindow, State,
};
use floodwall_resilience::retry::{Backoff, Jitter, JitterState, Schedule};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// Every event the breaker publishes, in order.
fn log(b: &CircuitBreaker) -> Arc<Mutex<Vec<BreakerEvent>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    b.events()
        .on_event(move |e: &BreakerEvent| l.lock().unwrap().push(*e));
    log
}

/// resilience4j `CircuitBreakerStateMachineTest.shouldOnlyPublishThresholdsExceededEventOnce`
/// (METRICS_ONLY): crossing the failure-rate threshold, then the slow-call-rate threshold,
/// publishes each event once — and the breaker keeps admitting.
#[test]
fn metrics_only_publishes_each_threshold_event_once() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(4)))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .slow_call_rate_threshold(50.0)
        .slow_call_duration(Duration::from_secs(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    b.metrics_only();
    let log = log(&b);
    for _ in 0..12 {
        let p = b.try_acquire().unwrap();
        clock.advance(Duration::from_secs(2)); // slow, and failing
        p.failure();
    }
    let events = log.lock().unwrap().clone();
    let failure = events
        .iter()
        .filter(|e| matches!(e, BreakerEvent::FailureRateExceeded(_)))
        .count();
    let slow = events
        .iter()
        .filter(|e| matches!(e, BreakerEvent::SlowCallRateExceeded(_)))
        .count();
    println!(
        "METRICS_ONLY, 12 slow failures: {failure} failure-rate and {slow} slow-call-rate event(s)"
    );
    assert_eq!((failure, slow), (1, 1), "resilience4j publishes each once");
    assert_eq!(b.state(), State::MetricsOnly, "never rejects");
    // A new stay in METRICS_ONLY reports again.
    b.reset();
    b.metrics_only();
    for _ in 0..4 {
        b.try_acquire().unwrap().failure();
    }
    let again = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, BreakerEvent::FailureRateExceeded(_)))
        .count();
    assert_eq!(again, 2);
}

/// resilience4j `CircuitBreakerStateMachineTest.shouldResetMetrics` / `shouldResetToClosedState`:
/// `reset()` always starts a fresh CLOSED state — on a CLOSED breaker too, whose window
/// `(-1.0, 1, 2, 1, 0)` (rate unknown, 1 buffered failure, 2 calls, 1 success, 0 rejected)
/// becomes empty — and publishes a reset event (no state transition from CLOSED).
#[test]
fn reset_on_a_closed_breaker_empties_its_window() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(5)))
        .minimum_calls(5)
        .clock(clock.clone())
        .build()
        .unwrap();
    b.try_acquire().unwrap().failure();
    b.try_acquire().unwrap().success();
    let before = b.snapshot();
    // A call admitted before the reset records into nothing after it.
    let late = b.try_acquire().unwrap();
    let log = log(&b);
    b.reset();
    let events = log.lock().unwrap().clone();
    assert_eq!(events, vec![BreakerEvent::Reset], "a reset, no transition");
    late.failure();
    let after = b.snapshot();
    let fmt = |s: &floodwall_resilience::circuit_breaker::Snapshot| {
        (
            s.failure_rate.unwrap_or(-1.0),
            s.failures,
            s.calls,
            s.calls - s.failures,
            s.not_permitted,
        )
    };
    println!(
        "closed breaker before reset {:?}, after {:?}",
        fmt(&before),
        fmt(&after)
    );
    assert_eq!(fmt(&before), (-1.0, 1, 2, 1, 0));
    assert_eq!(fmt(&after), (-1.0, 0, 0, 0, 0));
    assert_eq!(b.state(), State::Closed);
    // From OPEN: a transition to CLOSED, then the reset.
    b.force_open();
    log.lock().unwrap().clear();
    b.reset();
    let events = log.lock().unwrap().clone();
    assert!(
        matches!(events.as_slice(), [BreakerEvent::StateTransition(t), BreakerEvent::Reset] if t.to == State::Closed),
        "{events:?}"
    );
}

/// resilience4j counts a forced opening as an attempt: with an exponential open wait of 5 s
/// × 1.5, open (5 s) → forced open → open waits 5 s × 1.5² = 11.25 s.
#[test]
fn a_forced_opening_counts_for_the_open_wait_backoff() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .open_wait(OpenWait::Backoff {
            initial: Duration::from_secs(5),
            multiplier: 1.5,
            max: Duration::from_secs(600),
        })
        .clock(clock.clone())
        .build()
        .unwrap();
    b.open();
    let first = b.try_acquire().unwrap_err().retry_after;
    b.force_open();
    b.open();
    let third = b.try_acquire().unwrap_err().retry_after;
    println!("open: {first:?}; open after a forced opening: {third:?}");
    assert_eq!(first, Some(Duration::from_secs(5)));
    assert_eq!(third, Some(Duration::from_millis(11_250)));
    // Metrics-only ends the run, as a close does.
    b.metrics_only();
    b.open();
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Some(Duration::from_secs(5))
    );
}

/// `Jitter::Randomized` follows its documented formula `min(cap, rand(b(1−f), b(1+f)))` near
/// the cap: with b = cap = 1 s and f = 0.5, a draw of 0.2 gives 0.7 s and every draw at or
/// above 0.5 gives the cap — half the delays sit at the cap.
#[test]
fn randomized_jitter_at_its_cap_follows_the_documented_formula() {
    let s = Schedule {
        backoff: Backoff::Constant(Duration::from_secs(1)),
        jitter: Jitter::Randomized { factor: 0.5 },
        cap: Duration::from_secs(1),
    };
    let at = |r: f64| s.delay(0, &mut JitterState::default(), &mut || r);
    println!(
        "draws 0.2 / 0.5 / 0.9 -> {:?} / {:?} / {:?}",
        at(0.2),
        at(0.5),
        at(0.9)
    );
    assert_eq!(at(0.2), Duration::from_millis(700));
    assert_eq!(at(0.5), Duration::from_secs(1));
    assert_eq!(at(0.9), Duration::from_secs(1));
    let d = s.delays(7, 4000);
    let capped = d.iter().filter(|x| **x == Duration::from_secs(1)).count();
    let share = capped as f64 / d.len() as f64;
    println!("4000 draws: {:.1} % at the cap", 100.0 * share);
    assert!((share - 0.5).abs() < 0.05, "{share}");
    assert!(d.iter().all(|x| *x >= Duration::from_millis(500)));
}

/// A transition says why: a trip carries the failure and slow-call rates of the window that
/// tripped it (75 % of 4 calls failed here); a forced or timed transition carries none.
#[test]
fn a_trip_reports_the_rates_that_tripped_it() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(4)))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .slow_call_duration(None)
        .open_wait(OpenWait::Fixed(Duration::from_secs(5)))
        .clock(ManualClock::new())
        .on_transition(move |t| {
            s.lock()
                .unwrap()
                .push((t.from, t.to, t.failure_rate, t.slow_call_rate))
        })
        .build()
        .unwrap();
    b.try_acquire().unwrap().success();
    for _ in 0..3 {
        b.try_acquire().unwrap().failure();
    }
    b.reset();
    b.force_open();
    let seen = seen.lock().unwrap().clone();
    println!("transitions (from, to, failure rate, slow-call rate): {seen:?}");
    assert_eq!(
        seen,
        [
            (State::Closed, State::Open, Some(75.0), Some(0.0)),
            (State::Open, State::Closed, None, None),
            (State::Closed, State::ForcedOpen, None, None),
        ]
    );
}
