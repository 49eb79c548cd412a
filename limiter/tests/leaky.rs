//! Leaky bucket: the meter makes GCRA's decisions; the queue spaces departures by `T`,
//! bounds waits, and rejects past its bound.

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall_core::TokioClock;
use floodwall_core::{Clock, ManualClock};
use floodwall_limiter::Quota;
use floodwall_limiter::gcra::Gcra;
use floodwall_limiter::leaky::{LeakyBucket, LeakyQueue};
use proptest::prelude::*;

proptest! {
    #[test]
    fn the_meter_makes_gcras_decisions(
        limit in 1u32..10,
        burst in 1u32..10,
        steps in prop::collection::vec((1u32..3, 0u64..300), 1..100),
    ) {
        let q = Quota::per_second(NonZeroU32::new(limit).unwrap()).allow_burst(NonZeroU32::new(burst).unwrap());
        let clock = ManualClock::new();
        let meter = LeakyBucket::with_clock(q, clock.clone());
        let gcra = Gcra::with_clock(q, clock.clone());
        for (n, ms) in steps {
            let n = NonZeroU32::new(n).unwrap();
            prop_assert_eq!(meter.check_n(n), gcra.check_n(n));
            clock.advance(Duration::from_millis(ms));
        }
    }

    #[test]
    fn queue_reservations_follow_the_model(
        max_queued in 0u32..6,
        steps in prop::collection::vec((1u32..3, 0u64..400), 1..100),
    ) {
        // 10 per second: T = 100 ms.
        let t = 100_000_000u64;
        let clock = ManualClock::new();
        let queue = LeakyQueue::with_clock(Quota::per_second(NonZeroU32::new(10).unwrap()), max_queued, clock.clone());
        let mut next_free = 0u64;
        let mut departures = Vec::new();
        for (n, ms) in steps {
            let now = clock.now_nanos();
            let depart = next_free.max(now);
            let got = queue.reserve(NonZeroU32::new(n).unwrap());
            if depart - now <= t * u64::from(max_queued) {
                prop_assert_eq!(got, Ok(Duration::from_nanos(depart - now)));
                departures.push((depart, n));
                next_free = depart + t * u64::from(n);
            } else {
                let e = got.unwrap_err();
                prop_assert_eq!(e.retry_after, Duration::from_nanos(depart - now - t * u64::from(max_queued)));
            }
            clock.advance(Duration::from_millis(ms));
        }
        for w in departures.windows(2) {
            prop_assert!(w[1].0 >= w[0].0 + t * u64::from(w[0].1), "departures {:?} too close", w);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn until_ready_waits_its_turn_and_rejects_past_the_bound() {
    let queue = LeakyQueue::with_clock(
        Quota::per_second(NonZeroU32::new(10).unwrap()),
        3,
        TokioClock::new(),
    );
    let start = tokio::time::Instant::now();
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let q = queue.clone();
            tokio::spawn(async move { q.until_ready().await.map(|()| start.elapsed()) })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut rejected = 0;
    for c in callers {
        match c.await.unwrap() {
            Ok(at) => admitted.push(at),
            Err(e) => {
                assert!(e.retry_after > Duration::ZERO);
                rejected += 1;
            }
        }
    }
    admitted.sort();
    let ms = |x| Duration::from_millis(x);
    assert_eq!(
        admitted,
        vec![ms(0), ms(100), ms(200), ms(300)],
        "one every 100 ms, at most 3 waiting"
    );
    assert_eq!(rejected, 2);
}
