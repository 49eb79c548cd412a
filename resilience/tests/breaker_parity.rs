//! Circuit breaker features that resilience4j and Polly users expect: manual opening for a
//! duration or until an instant, CLOSED after the half-open maximum wait, a break-duration
//! generator, the tripping error on the rejection, and event subscriptions. Each test names
//! the anchor and the option it reproduces.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodwall_core::ManualClock;
use floodwall_resilience::Error;
use floodwall_resilience::circuit_breaker::{
    BreakInfo, BreakerEvent, CircuitBreaker, CircuitBreakerBuilder, KeepCause, OpenWait,
    SlidingWindow, State,
};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A count window of 4, minimum 4 calls, 50 % failure threshold, 10 s open, 2 probes.
fn builder(clock: &ManualClock) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(4)))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .slow_call_duration(None)
        .open_wait(OpenWait::Fixed(Duration::from_secs(10)))
        .permitted_calls_in_half_open(nz(2))
        .clock(clock.clone())
}

fn trip(b: &CircuitBreaker) {
    for _ in 0..4 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(b.state(), State::Open);
}

/// resilience4j `CircuitBreaker.transitionToOpenStateFor(Duration)`: OPEN for exactly that
/// long, then HALF_OPEN; the configured wait does not apply.
#[test]
fn open_for_rejects_for_exactly_that_long_then_half_opens() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    b.open_for(Duration::from_secs(3));
    let r = b.try_acquire().unwrap_err();
    assert_eq!(r.state, State::Open);
    assert_eq!(r.retry_after, Some(Duration::from_secs(3)));
    clock.advance(Duration::from_millis(2999));
    assert_eq!(b.state(), State::Open);
    clock.advance(Duration::from_millis(1));
    assert_eq!(b.state(), State::HalfOpen);
    // Already open: a second open_for only moves the end of the wait.
    trip_from_half_open(&b);
    b.open_for(Duration::from_secs(1));
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Some(Duration::from_secs(1))
    );
}

fn trip_from_half_open(b: &CircuitBreaker) {
    for _ in 0..2 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(b.state(), State::Open);
}

/// resilience4j `CircuitBreaker.transitionToOpenStateUntil(Instant)`.
#[test]
fn open_until_an_instant() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    b.open_until(Instant::now() + Duration::from_secs(30));
    let wait = b.try_acquire().unwrap_err().retry_after.unwrap();
    assert!(
        wait <= Duration::from_secs(30) && wait > Duration::from_secs(29),
        "{wait:?}"
    );
    clock.advance(Duration::from_secs(30));
    assert_eq!(b.state(), State::HalfOpen);
    // An instant already past half-opens at the next look.
    let b = builder(&clock).build().unwrap();
    b.open_until(Instant::now() - Duration::from_secs(1));
    assert_eq!(b.state(), State::HalfOpen);
}

/// resilience4j `maxWaitDurationInHalfOpenState` with
/// `transitionToStateAfterWaitDuration(CLOSED)`: probes that never finish do not keep the
/// breaker half-open; after the wait it closes (and the backoff's run of openings ends).
#[test]
fn half_open_maximum_wait_can_close_the_breaker() {
    let clock = ManualClock::new();
    let b = builder(&clock)
        .max_wait_in_half_open(Some(Duration::from_secs(5)))
        .state_after_half_open_wait(State::Closed)
        .build()
        .unwrap();
    trip(&b);
    clock.advance(Duration::from_secs(10));
    let stuck = b.try_acquire().unwrap(); // a probe that never reports
    assert!(stuck.is_probe());
    clock.advance(Duration::from_secs(5));
    assert_eq!(b.state(), State::Closed);
    drop(stuck); // its outcome belongs to a state that is gone
    assert_eq!(b.snapshot().calls, 0);
    // The default target stays OPEN; anything but OPEN or CLOSED is a build error.
    let e = builder(&clock)
        .state_after_half_open_wait(State::ForcedOpen)
        .build()
        .unwrap_err();
    assert_eq!(e.field, "state_after_half_open_wait");
}

/// Polly `CircuitBreakerStrategyOptions.BreakDurationGenerator`: each opening's duration
/// comes from a function of the opening's number and failure figures.
#[test]
fn a_break_duration_generator_sizes_each_opening() {
    let clock = ManualClock::new();
    let seen: Arc<Mutex<Vec<BreakInfo>>> = Arc::default();
    let log = seen.clone();
    let b = builder(&clock)
        .break_duration_generator(move |info: &BreakInfo| {
            log.lock().unwrap().push(*info);
            Duration::from_secs(2 * u64::from(info.opening))
        })
        .build()
        .unwrap();
    trip(&b);
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Some(Duration::from_secs(2))
    );
    clock.advance(Duration::from_secs(2));
    trip_from_half_open(&b); // the second consecutive opening
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Some(Duration::from_secs(4))
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].opening, seen[0].calls, seen[0].failures),
        (1, 4, 4)
    );
    assert_eq!(seen[0].failure_rate, 100.0);
    assert_eq!(
        (seen[1].opening, seen[1].calls, seen[1].failures),
        (2, 2, 2)
    );
}

/// Polly's `BrokenCircuitException` carries the exception that broke the circuit: here the
/// rejection's `cause` (and `source()`) is the error that tripped the breaker.
#[tokio::test]
async fn the_error_that_tripped_the_breaker_comes_with_the_rejection() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    let keep = KeepCause::new();
    for i in 0..4 {
        let r: Result<(), Error<String>> = b
            .call_classified(&keep, || async move { Err(format!("db down #{i}")) })
            .await;
        assert!(matches!(r, Err(Error::Inner(_))));
    }
    let rejected = b
        .call_classified(&keep, || async { Ok::<_, String>(()) })
        .await
        .unwrap_err();
    let Error::CircuitOpen(r) = &rejected else {
        panic!("{rejected:?}")
    };
    assert_eq!(r.cause.as_ref().unwrap().to_string(), "db down #3");
    let source = std::error::Error::source(r).expect("the cause is the source");
    assert_eq!(source.to_string(), "db down #3");

    // Without a cause-keeping classifier, none is kept; a close forgets the old one.
    clock.advance(Duration::from_secs(10));
    for _ in 0..2 {
        b.try_acquire().unwrap().success();
    }
    assert_eq!(b.state(), State::Closed);
    trip(&b);
    assert!(b.try_acquire().unwrap_err().cause.is_none());

    // A permit can record its cause by hand.
    let b = builder(&clock).build().unwrap();
    for _ in 0..3 {
        b.try_acquire().unwrap().failure();
    }
    let io = std::io::Error::other("connection reset");
    b.try_acquire().unwrap().failure_with(Arc::new(io));
    let cause = b.try_acquire().unwrap_err().cause.unwrap();
    assert_eq!(cause.to_string(), "connection reset");
}

/// resilience4j's `CircuitBreaker.getEventPublisher()`: per-call events (success, error,
/// ignored, not permitted), failure-rate-exceeded, state transitions and reset, in order,
/// to a callback and to a broadcast receiver alike; a DISABLED breaker publishes no call
/// events.
#[tokio::test]
async fn events_follow_resilience4j() {
    let clock = ManualClock::new();
    let b = builder(&clock).build().unwrap();
    let seen: Arc<Mutex<Vec<BreakerEvent>>> = Arc::default();
    let log = seen.clone();
    b.events()
        .on_event(move |e: &BreakerEvent| log.lock().unwrap().push(*e));
    let mut rx = b.events().subscribe(64);

    b.try_acquire().unwrap().success();
    b.try_acquire().unwrap().ignore();
    for _ in 0..3 {
        b.try_acquire().unwrap().failure();
    }
    let _ = b.try_acquire().unwrap_err();
    b.reset();
    b.disable();
    b.try_acquire().unwrap().failure();

    let got = seen.lock().unwrap().clone();
    let names: Vec<String> = got
        .iter()
        .map(|e| match e {
            BreakerEvent::StateTransition(t) => format!("{:?}->{:?}", t.from, t.to),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            "Success",
            "Ignored",
            "Error",
            "Error",
            "Error",
            "FailureRateExceeded(75.0)",
            "Closed->Open",
            "NotPermitted(Open)",
            "Open->Closed",
            "Reset",
            "Closed->Disabled",
        ]
    );
    let mut from_channel = Vec::new();
    while let Ok(e) = rx.try_recv() {
        from_channel.push(e);
    }
    assert_eq!(from_channel, got, "the receiver sees what the callback saw");
    println!("events seen: {}", names.join(", "));
}

/// resilience4j `onSlowCallRateExceeded`.
#[test]
fn slow_call_rate_exceeded_is_published() {
    let clock = ManualClock::new();
    let b = builder(&clock)
        .slow_call_duration(Duration::from_secs(1))
        .slow_call_rate_threshold(50.0)
        .build()
        .unwrap();
    let seen: Arc<Mutex<Vec<BreakerEvent>>> = Arc::default();
    let log = seen.clone();
    b.events()
        .on_event(move |e: &BreakerEvent| log.lock().unwrap().push(*e));
    for _ in 0..4 {
        let p = b.try_acquire().unwrap();
        clock.advance(Duration::from_secs(2));
        p.success();
    }
    assert_eq!(b.state(), State::Open);
    assert!(
        seen.lock()
            .unwrap()
            .contains(&BreakerEvent::SlowCallRateExceeded(100.0))
    );
}
