//! Bulkhead: the concurrency limit under 1000 callers, queue overflow, max wait on a paused
//! clock, and the tower layer holding its slot until the response future ends.

use std::num::NonZeroUsize;
use std::time::Duration;

use floodwall_resilience::bulkhead::{Bulkhead, BulkheadLayer, RejectReason};
use floodwall_resilience::{Error, ErrorLayer};
use floodwall_testkit::Flaky;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_more_than_max_concurrent_under_1000_callers() {
    let bulkhead = Bulkhead::builder()
        .max_concurrent(nz(10))
        .max_wait(Duration::from_secs(60))
        .build();
    let downstream = Flaky::slow(Duration::from_millis(1));
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let (b, d) = (bulkhead.clone(), downstream.clone());
            tokio::spawn(async move {
                b.call(|| async {
                    assert!(b.in_flight() <= 10);
                    d.call().await
                })
                .await
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap().unwrap();
    }
    println!(
        "1000 callers, limit 10: at most {} ran at once",
        downstream.max_in_flight()
    );
    assert!(downstream.max_in_flight() <= 10);
    assert_eq!(downstream.calls(), 1000);
    assert_eq!((bulkhead.in_flight(), bulkhead.waiting()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn callers_beyond_the_queue_are_rejected_at_once() {
    let bulkhead = Bulkhead::builder()
        .max_concurrent(nz(2))
        .max_waiting(3)
        .max_wait(Duration::from_secs(10))
        .build();
    let a = bulkhead.try_acquire().unwrap();
    let b = bulkhead.try_acquire().unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let bh = bulkhead.clone();
            tokio::spawn(async move { bh.call(|| async { Ok::<_, ()>(()) }).await })
        })
        .collect();
    tokio::task::yield_now().await;
    while bulkhead.waiting() < 3 {
        tokio::task::yield_now().await;
    }
    let start = Instant::now();
    let err = bulkhead.acquire().await.unwrap_err();
    assert_eq!(err.reason, RejectReason::QueueFull);
    assert_eq!(start.elapsed(), Duration::ZERO, "rejected without waiting");

    drop((a, b));
    for w in waiters {
        assert_eq!(
            w.await.unwrap(),
            Ok(()),
            "queued callers get the freed slots"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_past_max_wait_are_rejected_on_time() {
    let bulkhead = Bulkhead::builder()
        .max_concurrent(nz(1))
        .max_wait(Duration::from_millis(250))
        .build();
    let _held = bulkhead.try_acquire().unwrap();
    let start = Instant::now();
    let err = bulkhead.acquire().await.unwrap_err();
    assert_eq!(err.reason, RejectReason::WaitTimedOut);
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(bulkhead.waiting(), 0);

    // A slot freed during the wait is taken at that moment.
    let bh = bulkhead.clone();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let p = bh.acquire().await.map(drop);
        (p, start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(_held);
    let (got, waited) = waiter.await.unwrap();
    assert!(got.is_ok());
    assert_eq!(waited, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn layer_holds_the_slot_until_the_response_future_ends() {
    let bulkhead = Bulkhead::builder().max_concurrent(nz(1)).build();
    let mut svc = BulkheadLayer::new(bulkhead.clone())
        .layer(ErrorLayer.layer(Flaky::slow(Duration::from_secs(1))));
    let first = ServiceExt::<()>::ready(&mut svc).await.unwrap().call(());
    assert_eq!(bulkhead.in_flight(), 1);
    let second = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert!(matches!(second, Err(Error::BulkheadFull(r)) if r.reason == RejectReason::Full));
    drop(first); // cancelled: the slot comes back
    assert_eq!(bulkhead.in_flight(), 0);
    let third = ServiceExt::<()>::ready(&mut svc)
        .await
        .unwrap()
        .call(())
        .await;
    assert!(third.is_ok());
    assert_eq!(bulkhead.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn layer_calls_wait_for_a_slot() {
    let bulkhead = Bulkhead::builder()
        .max_concurrent(nz(1))
        .max_wait(Duration::from_secs(5))
        .build();
    let downstream = Flaky::slow(Duration::from_secs(1));
    let svc = BulkheadLayer::new(bulkhead.clone()).layer(ErrorLayer.layer(downstream.clone()));
    let start = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut s = svc.clone();
            tokio::spawn(async move {
                ServiceExt::<()>::ready(&mut s)
                    .await
                    .unwrap()
                    .call(())
                    .await
            })
        })
        .collect();
    for c in calls {
        assert!(c.await.unwrap().is_ok());
    }
    assert_eq!(start.elapsed(), Duration::from_secs(3), "one at a time");
    assert_eq!(downstream.max_in_flight(), 1);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        TryAcquire,
        Release(usize),
    }

    proptest! {
        /// Against the plain model "admit while held < max": same admit/reject, same count.
        #[test]
        fn try_acquire_agrees_with_a_counter(
            max in 1usize..6,
            ops in prop::collection::vec(prop_oneof![Just(Op::TryAcquire), any::<usize>().prop_map(Op::Release)], 0..200),
        ) {
            let bulkhead = Bulkhead::builder().max_concurrent(nz(max)).build();
            let mut held = Vec::new();
            for op in ops {
                match op {
                    Op::TryAcquire => {
                        let admitted = bulkhead.try_acquire();
                        prop_assert_eq!(admitted.is_ok(), held.len() < max);
                        if let Ok(p) = admitted {
                            held.push(p);
                        } else {
                            prop_assert_eq!(admitted.unwrap_err().reason, RejectReason::Full);
                        }
                    }
                    Op::Release(i) => {
                        if !held.is_empty() {
                            drop(held.swap_remove(i % held.len()));
                        }
                    }
                }
                prop_assert_eq!(bulkhead.in_flight(), held.len());
            }
        }
    }
}

/// `max_wait(Duration::MAX)` waits without bound and never overflows.
#[tokio::test(start_paused = true)]
async fn an_unbounded_wait_waits_for_a_slot_without_panicking() {
    let bulkhead = Bulkhead::builder()
        .max_concurrent(nz(1))
        .max_wait(Duration::MAX)
        .build();
    let held = bulkhead.try_acquire().unwrap();
    let bh = bulkhead.clone();
    let waiter = tokio::spawn(async move { bh.call(|| async { Ok::<_, ()>(7) }).await });
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(bulkhead.waiting(), 1, "still waiting a day later");
    drop(held);
    assert_eq!(waiter.await.unwrap(), Ok(7));
}

/// Controlled delay: the first waiter joins an empty queue and may wait `max_wait` (1 s); a
/// caller who joins after the queue has stood non-empty for the 100 ms interval waits at most
/// the 5 ms target; once the queue empties, waits are long again.
#[tokio::test(start_paused = true)]
async fn a_standing_queue_gives_late_joiners_the_short_target_until_it_empties() {
    let bulkhead = Bulkhead::builder()
        .max_concurrent(nz(1))
        .max_wait(Duration::from_secs(1))
        .codel(Duration::from_millis(5), Duration::from_millis(100))
        .build();
    let held = bulkhead.acquire_owned().await.unwrap();
    let early = {
        let b = bulkhead.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let p = b.acquire_owned().await;
            (p, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let start = Instant::now();
    let late = bulkhead.acquire_owned().await;
    let late_waited = start.elapsed();
    println!(
        "late joiner of a queue standing 150 ms: {:?} after {late_waited:?}",
        late.as_ref().err().map(|r| r.reason)
    );
    assert!(matches!(late, Err(r) if r.reason == RejectReason::WaitTimedOut));
    assert_eq!(late_waited, Duration::from_millis(5));
    drop(held);
    let (early, early_waited) = early.await.unwrap();
    assert!(early.is_ok(), "the first waiter kept its long wait");
    assert_eq!(early_waited, Duration::from_millis(155));
    // The queue emptied when the early waiter left it: a new waiter may wait long again.
    let second = {
        let b = bulkhead.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            (b.acquire_owned().await, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(early);
    let (second, waited) = second.await.unwrap();
    assert!(second.is_ok());
    assert_eq!(waited, Duration::from_millis(300));
}
