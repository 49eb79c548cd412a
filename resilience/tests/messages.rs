//! What a refusal says when printed: plain words a log reader or an HTTP error page can show
//! — the state in lower case, the wait rounded up to the millisecond — never `Some(…)` or a
//! `Debug` variant name.

use std::num::NonZeroUsize;
use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_resilience::bulkhead::Bulkhead;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, OpenWait};

fn readable(text: &str) {
    for debug in [
        "Some(",
        "None",
        "ForcedOpen",
        "HalfOpen",
        "WaitTimedOut",
        "QueueFull",
    ] {
        assert!(!text.contains(debug), "{text:?} shows {debug:?}");
    }
}

#[test]
fn breaker_refusals_read_plainly() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .open_wait(OpenWait::Fixed(Duration::from_secs(10)))
        .clock(clock.clone())
        .build()
        .unwrap();
    b.open();
    clock.advance(Duration::from_nanos(4_500_000_001));
    let open = b.try_acquire().unwrap_err().to_string();
    b.force_open();
    let forced = b.try_acquire().unwrap_err().to_string();
    println!("{open}\n{forced}");
    assert_eq!(
        open,
        "circuit breaker open: call not admitted; retry after 5.5s"
    );
    assert_eq!(forced, "circuit breaker forced open: call not admitted");
    readable(&open);
    readable(&forced);
}

#[tokio::test]
async fn bulkhead_refusals_read_plainly() {
    let b = Bulkhead::builder()
        .max_concurrent(NonZeroUsize::new(2).unwrap())
        .build();
    let _held = (b.try_acquire().unwrap(), b.try_acquire().unwrap());
    let full = b.try_acquire().unwrap_err().to_string();
    println!("{full}");
    assert_eq!(
        full,
        "bulkhead full: every slot is taken and calls do not wait (limit 2 at once)"
    );
    readable(&full);
}
