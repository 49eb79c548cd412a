//! Circuit breaker behaviour: concurrency in half-open, slow calls, time windows, the tower
//! layer sharing state with the plain API, cancellation.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_resilience::circuit_breaker::{
    CircuitBreaker, CircuitBreakerLayer, OpenWait, Outcome, SlidingWindow, State, Transition,
};
use floodwall_resilience::{Error, ErrorLayer};
use floodwall_testkit::{Flaky, FlakyError, FlakyErrorKind};
use tower::{Layer, Service, ServiceExt};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn tripped_breaker(clock: &ManualClock, permitted: u32) -> CircuitBreaker {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(10)))
        .minimum_calls(10)
        .open_wait(OpenWait::Fixed(Duration::from_secs(5)))
        .permitted_calls_in_half_open(nz(permitted))
        .clock(clock.clone())
        .build()
        .unwrap();
    for _ in 0..10 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(b.state(), State::Open);
    b
}

#[test]
fn eight_threads_on_half_open_get_exactly_permitted_probes() {
    for round in 0..50 {
        let clock = ManualClock::new();
        let permitted = 1 + round % 5;
        let breaker = tripped_breaker(&clock, permitted);
        clock.advance(Duration::from_secs(5)); // half-open is due; nobody has looked yet

        let admitted = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, admitted, start) = (breaker.clone(), admitted.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..1000 {
                        // Hold every permit (no outcome yet): a probe slot stays taken.
                        if let Ok(p) = b.try_acquire() {
                            assert!(p.is_probe());
                            admitted.fetch_add(1, Ordering::SeqCst);
                            std::mem::forget(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            admitted.load(Ordering::SeqCst),
            permitted as usize,
            "round {round}: exactly the permitted probes got through"
        );
        assert_eq!(breaker.state(), State::HalfOpen);
        assert_eq!(
            breaker.snapshot().not_permitted,
            8000 - u64::from(permitted)
        );
    }
}

#[test]
fn probes_decide_close_or_reopen_and_backoff_grows() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(4)))
        .minimum_calls(4)
        .open_wait(OpenWait::Backoff {
            initial: Duration::from_secs(1),
            multiplier: 3.0,
            max: Duration::from_secs(5),
        })
        .permitted_calls_in_half_open(nz(2))
        .clock(clock.clone())
        .build()
        .unwrap();
    for _ in 0..4 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Some(Duration::from_secs(1))
    );
    clock.advance(Duration::from_secs(1));
    let (p1, p2) = (b.try_acquire().unwrap(), b.try_acquire().unwrap());
    p1.success();
    p2.failure(); // 50% of probes failed: re-open, with a longer wait
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Some(Duration::from_secs(3))
    );
    clock.advance(Duration::from_secs(3));
    b.try_acquire().unwrap().failure();
    b.try_acquire().unwrap().failure();
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Some(Duration::from_secs(5)),
        "capped"
    );
    clock.advance(Duration::from_secs(5));
    b.try_acquire().unwrap().success();
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
    // Closing reset the backoff.
    for _ in 0..4 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after,
        Some(Duration::from_secs(1))
    );
}

#[test]
fn slow_calls_trip_on_a_time_window() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Time(nz(10)))
        .minimum_calls(5)
        .slow_call_duration(Duration::from_millis(200))
        .slow_call_rate_threshold(60.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    for i in 0..5 {
        let p = b.try_acquire().unwrap();
        clock.advance(Duration::from_millis(if i < 3 { 200 } else { 10 }));
        p.success();
    }
    let snap = b.snapshot();
    assert_eq!(snap.state, State::Open, "{snap:?}");
}

#[test]
fn ignored_and_dropped_probes_hand_their_slot_back() {
    let clock = ManualClock::new();
    let b = tripped_breaker(&clock, 1);
    clock.advance(Duration::from_secs(5));
    b.try_acquire().unwrap().ignore();
    let p = b.try_acquire().unwrap();
    assert_eq!(b.try_acquire().unwrap_err().state, State::HalfOpen);
    drop(p); // e.g. a cancelled request
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn transitions_reach_the_hook() {
    let clock = ManualClock::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(2)))
        .minimum_calls(2)
        .permitted_calls_in_half_open(nz(1))
        .open_wait(OpenWait::Fixed(Duration::from_secs(1)))
        .clock(clock.clone())
        .on_transition(move |t: &Transition| log.lock().unwrap().push((t.from, t.to)))
        .build()
        .unwrap();
    b.try_acquire().unwrap().failure();
    b.try_acquire().unwrap().failure();
    clock.advance(Duration::from_secs(1));
    b.try_acquire().unwrap().success();
    b.force_open();
    b.reset();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn layer_and_plain_api_share_one_breaker() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(4)))
        .minimum_calls(4)
        .build()
        .unwrap();
    let downstream = Flaky::always_failing(FlakyErrorKind::Transient);
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(ErrorLayer.layer(downstream.clone()));

    for _ in 0..2 {
        let r = ServiceExt::<()>::ready(&mut svc)
            .await
            .unwrap()
            .call(())
            .await;
        assert!(matches!(r, Err(Error::Inner(FlakyError { .. }))));
    }
    for _ in 0..2 {
        let r = b.call(|| downstream.call()).await;
        assert!(matches!(r, Err(Error::Inner(_))));
    }
    // Four failures across both faces: open for both.
    let r = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert!(
        matches!(r, Err(Error::CircuitOpen(ref rej)) if rej.state == State::Open),
        "{r:?}"
    );
    assert!(matches!(
        b.call(|| downstream.call()).await,
        Err(Error::CircuitOpen(_))
    ));
    assert_eq!(
        downstream.calls(),
        4,
        "rejected calls never reach the downstream"
    );
}

#[tokio::test(start_paused = true)]
async fn classifier_counts_ok_values_as_failures() {
    let b = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(nz(2)))
        .minimum_calls(2)
        .build()
        .unwrap();
    // An "HTTP status" service: Ok(503) is a failure, Ok(404) says nothing about health.
    let classify = |r: &Result<u16, ()>| match r {
        Ok(s) if *s >= 500 => Outcome::Failure,
        Ok(s) if *s >= 400 => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(()) => Outcome::Failure,
    };
    for _ in 0..5 {
        assert_eq!(
            b.call_classified(&classify, || async { Ok::<u16, ()>(404) })
                .await,
            Ok(404)
        );
    }
    assert_eq!(b.snapshot().calls, 0);
    b.call_classified(&classify, || async { Ok::<u16, ()>(503) })
        .await
        .unwrap();
    b.call_classified(&classify, || async { Ok::<u16, ()>(503) })
        .await
        .unwrap();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_layer_call_counts_as_ignored() {
    let clock = ManualClock::new();
    let b = tripped_breaker(&clock, 1);
    clock.advance(Duration::from_secs(5));
    let mut svc = CircuitBreakerLayer::new(b.clone())
        .layer(ErrorLayer.layer(Flaky::slow(Duration::from_secs(60))));
    let fut = ServiceExt::<()>::ready(&mut svc).await.unwrap().call(());
    assert_eq!(
        b.try_acquire().unwrap_err().state,
        State::HalfOpen,
        "the one probe is taken"
    );
    drop(fut);
    assert!(
        b.try_acquire().is_ok(),
        "dropping the future handed the probe back"
    );
}

#[test]
fn manual_states() {
    let clock = ManualClock::new();
    let b = tripped_breaker(&clock, 1);
    b.disable();
    for _ in 0..100 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.snapshot().calls, 0, "disabled records nothing");
    b.metrics_only();
    for _ in 0..20 {
        b.try_acquire().unwrap().failure();
    }
    let snap = b.snapshot();
    assert_eq!(
        (snap.state, snap.calls, snap.failure_rate),
        (State::MetricsOnly, 10, Some(100.0))
    );
    b.force_open();
    let r = b.try_acquire().unwrap_err();
    assert_eq!((r.state, r.retry_after), (State::ForcedOpen, None));
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        b.state(),
        State::ForcedOpen,
        "forced open does not time out"
    );
    b.reset();
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn automatic_half_open_fires_without_traffic() {
    use floodwall_resilience::TokioClock;
    for automatic in [false, true] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let b = CircuitBreaker::builder()
            .sliding_window(SlidingWindow::Count(nz(2)))
            .minimum_calls(2)
            .open_wait(OpenWait::Fixed(Duration::from_secs(5)))
            .automatic_half_open(automatic)
            .clock(TokioClock::new())
            .on_transition(move |t: &Transition| log.lock().unwrap().push(t.to))
            .build()
            .unwrap();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::yield_now().await;
        let transitions = seen.lock().unwrap().clone();
        if automatic {
            assert_eq!(
                transitions,
                vec![State::Open, State::HalfOpen],
                "on time, no call needed"
            );
        } else {
            assert_eq!(
                transitions,
                vec![State::Open],
                "lazy: nothing until observed"
            );
            assert_eq!(b.state(), State::HalfOpen);
            assert_eq!(*seen.lock().unwrap(), vec![State::Open, State::HalfOpen]);
        }
    }
}

#[test]
fn a_breaker_gates_a_store_node_by_health() {
    use floodwall_core::health::{Health, HealthGate};

    let breaker = CircuitBreaker::builder()
        .sliding_window(SlidingWindow::Count(NonZeroU32::new(4).unwrap()))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    // Neutral outcomes (OOM) neither open nor close it.
    for _ in 0..10 {
        let t = breaker.try_pass().unwrap();
        breaker.report(t, Health::Neutral);
    }
    assert_eq!(breaker.state(), State::Closed);
    for h in [
        Health::Healthy,
        Health::Healthy,
        Health::Unhealthy,
        Health::Unhealthy,
    ] {
        let t = breaker.try_pass().unwrap();
        breaker.report(t, h);
    }
    assert_eq!(breaker.state(), State::Open);
    let refused = breaker.try_pass().unwrap_err();
    assert!(refused.retry_after.is_some());
}

/// resilience4j rejects a zero slow-call threshold and a zero open wait; so does `build()`,
/// naming the field.
#[test]
fn zero_thresholds_that_make_no_sense_are_build_errors() {
    let err = CircuitBreaker::builder()
        .slow_call_duration(Some(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(err.field, "slow_call_duration");
    let err = CircuitBreaker::builder()
        .open_wait(OpenWait::Fixed(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(err.field, "open_wait");
}

/// Manual transitions: one to the current state is a no-op (no event, the wait not
/// restarted, the backoff not raised); a forced opening counts as a consecutive opening and a
/// close resets the count (resilience4j's attempts in `transitionTo…State`); only OPEN
/// half-opens (resilience4j's `IllegalStateTransitionException`).
#[test]
fn manual_transitions_follow_the_state_machine() {
    let clock = ManualClock::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let breaker = CircuitBreaker::builder()
        .open_wait(OpenWait::Backoff {
            initial: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(60),
        })
        .clock(clock.clone())
        .on_transition(move |t: &Transition| seen.lock().unwrap().push(t.to))
        .build()
        .unwrap();
    let wait = |b: &CircuitBreaker| b.try_acquire().unwrap_err().retry_after;

    assert_eq!(
        breaker.half_open().unwrap_err(),
        floodwall_resilience::circuit_breaker::IllegalTransition {
            from: State::Closed,
            to: State::HalfOpen
        }
    );
    breaker.open();
    assert_eq!(wait(&breaker), Some(Duration::from_secs(1)));
    clock.advance(Duration::from_millis(400));
    breaker.open(); // already open: nothing happens
    assert_eq!(
        wait(&breaker),
        Some(Duration::from_millis(600)),
        "not restarted"
    );
    breaker.force_open(); // counts as the second consecutive opening (resilience4j)
    breaker.force_open(); // already forced open: nothing happens
    breaker.open(); // the third consecutive opening: 4 s
    assert_eq!(
        wait(&breaker),
        Some(Duration::from_secs(4)),
        "force_open counted once"
    );
    breaker.reset();
    breaker.open(); // a close in between: the first opening again
    assert_eq!(wait(&breaker), Some(Duration::from_secs(1)));
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            State::Open,
            State::ForcedOpen,
            State::Open,
            State::Closed,
            State::Open
        ],
        "one event per real transition"
    );
}
