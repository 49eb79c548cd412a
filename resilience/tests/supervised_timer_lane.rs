//! A timeout lane's timer task is supervised: killed (it panics at its next wake, as a bug
//! would), it is replaced by a new one armed at the lane's earliest deadline, so every hung
//! call is still cut — 50 ms (the first restart's backoff) after its bound instead of never.
//! Alone in its binary: a kill reaches every lane of the process.

use std::time::Duration;

use floodwall_core::task::{self, Task};
use floodwall_resilience::Error;
use floodwall_resilience::timeout::Timeout;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_killed_lane_timer_is_replaced_and_every_hung_call_is_still_cut() {
    let bound = Duration::from_millis(100);
    let t = Timeout::new(bound);
    let before = task::restarts(Task::TimerLane);
    let start = Instant::now();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                let r = t.call(std::future::pending::<Result<(), ()>>).await;
                (r, start.elapsed())
            })
        })
        .collect();
    tokio::task::yield_now().await;
    // The timer task panics when it wakes at the bound, instead of cutting the calls.
    task::kill(Task::TimerLane);
    let mut latest = Duration::ZERO;
    for c in calls {
        let (r, took) = c.await.unwrap();
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
        latest = latest.max(took);
    }
    let restarts = task::restarts(Task::TimerLane) - before;
    println!(
        "lane timer killed: {restarts} restart(s); 10 hung calls cut by {latest:?} (bound {bound:?})"
    );
    assert_eq!(restarts, 1);
    assert!(
        latest >= bound && latest <= bound + Duration::from_millis(50),
        "{latest:?}"
    );
    // The lane works on: a new hung call is cut at its bound.
    let again = Instant::now();
    let r = t.call(std::future::pending::<Result<(), ()>>).await;
    assert!(matches!(r, Err(Error::Timeout(_))));
    assert_eq!(again.elapsed(), bound);
}
