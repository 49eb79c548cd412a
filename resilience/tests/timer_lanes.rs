//! The timers behind every timeout: the waiting calls of a thread, a runtime and a bound
//! share one timer task (a lane). Each call is still cut at its own bound; a runtime never
//! waits on another runtime's timer; the timer task ends once nothing waits.

mod common;

use common::paused_runtime;

use std::time::Duration;

use floodwall_resilience::Error;
use floodwall_resilience::timeout::Timeout;
use tokio::time::Instant;

/// Waits forever (a hung call).
async fn hang() -> Result<u32, ()> {
    std::future::pending().await
}

#[tokio::test(start_paused = true)]
async fn calls_sharing_a_timer_are_each_cut_at_their_own_bound() {
    let bound = Duration::from_millis(100);
    let t = Timeout::new(bound);
    let origin = Instant::now();
    // 60 calls, one starting every 3 ms: every third hangs, the others answer after
    // 10..=180 ms (those past the bound are cut too).
    let calls: Vec<_> = (0..60u64)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(3 * i)).await;
                let start = Instant::now();
                let answer_after = Duration::from_millis(10 + 17 * (i % 11));
                let r = match i % 3 {
                    0 => t.call(hang).await,
                    _ => {
                        t.call(|| async move {
                            tokio::time::sleep(answer_after).await;
                            Ok(1)
                        })
                        .await
                    }
                };
                (i, start - origin, start.elapsed(), answer_after, r)
            })
        })
        .collect();
    let (mut cut, mut answered) = (0, 0);
    for call in calls {
        let (i, started, took, answer_after, r) = call.await.unwrap();
        assert_eq!(started, Duration::from_millis(3 * i));
        let hung = i % 3 == 0 || answer_after >= bound;
        match r {
            Err(Error::Timeout(e)) if hung => {
                assert_eq!(e.after, bound);
                assert_eq!(took, bound, "call {i} cut at its own bound");
                cut += 1;
            }
            Ok(1) if !hung => {
                assert_eq!(took, answer_after, "call {i} answered in time");
                answered += 1;
            }
            other => panic!("call {i} (answers after {answer_after:?}): {other:?}"),
        }
    }
    println!("60 calls on one timer: {cut} cut at exactly 100ms, {answered} answered in time");
    assert_eq!(cut + answered, 60);
    assert!(cut >= 20 && answered >= 20);
}

#[test]
fn a_threads_second_runtime_does_not_wait_on_the_firsts_timer() {
    let bound = Duration::from_millis(200);
    let t = Timeout::new(bound);
    let first = paused_runtime();
    // A call waits on `first`, so this thread's timer for `bound` runs there; `first` is
    // then not driven while `second` runs.
    first.block_on(async {
        let r = tokio::time::timeout(Duration::from_millis(50), t.call(hang)).await;
        assert!(r.is_err(), "still waiting when dropped");
    });
    let second = paused_runtime();
    let (r, took) = second.block_on(async {
        let start = Instant::now();
        // The outer bound is a plain Tokio timer on `second`, in case ours never fires.
        let r = tokio::time::timeout(Duration::from_secs(10), t.call(hang)).await;
        (r, start.elapsed())
    });
    println!("second runtime: {r:?} after {took:?}");
    assert!(matches!(r, Ok(Err(Error::Timeout(_)))), "{r:?}");
    assert_eq!(took, bound);
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn the_timer_task_ends_once_nothing_waits() {
    let bound = Duration::from_millis(100);
    let t = Timeout::new(bound);
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_alive_tasks(), 0);
    // Answers at once: never waits, so no timer at all.
    assert_eq!(t.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
    assert_eq!(
        metrics.num_alive_tasks(),
        0,
        "a call that never waited started a timer"
    );

    let quick = t.call(|| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, ()>(2)
    });
    assert_eq!(quick.await, Ok(2));
    let after_wait = metrics.num_alive_tasks();
    // Armed at the call's deadline, the timer task finds nothing waiting then, and ends.
    tokio::time::sleep(bound).await;
    tokio::task::yield_now().await;
    let after_bound = metrics.num_alive_tasks();
    println!("timer tasks: {after_wait} after a call waited, {after_bound} one bound later");
    assert_eq!(after_wait, 1);
    assert_eq!(after_bound, 0);

    // The next waiting call starts a timer again, and is cut on time.
    let start = Instant::now();
    assert!(matches!(t.call(hang).await, Err(Error::Timeout(_))));
    assert_eq!(start.elapsed(), bound);
}

#[tokio::test(start_paused = true)]
async fn a_bound_too_long_for_the_clock_never_cuts_the_call() {
    let t = Timeout::new(Duration::MAX);
    let start = Instant::now();
    let r = t
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(86_400)).await;
            Ok::<_, ()>(7)
        })
        .await;
    println!("Duration::MAX bound: {r:?} after {:?}", start.elapsed());
    assert_eq!(r, Ok(7));
    assert_eq!(start.elapsed(), Duration::from_secs(86_400));
}

/// Real time, two worker threads: calls start, wait and end on whichever worker runs them,
/// so lanes are shared and left across threads. Every hung call ends by its bound, never
/// before it; every answered call gets its answer; no call is left waiting. (A paused clock
/// needs a current-thread runtime; nothing here depends on how long the machine takes — the
/// bound is checked from below only, and the outer 30 s only catches a call left waiting.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_worker_threads_each_call_ends_by_its_bound_or_its_answer() {
    let short = Duration::from_millis(20);
    let cut = Timeout::new(short);
    let answered = Timeout::new(Duration::from_secs(60));
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..400u32 {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (cut, answered) = (cut.clone(), answered.clone());
        senders.push(tx);
        calls.push(tokio::spawn(async move {
            let start = std::time::Instant::now();
            let r = match i % 2 {
                0 => cut.call(hang).await,
                _ => {
                    answered
                        .call(|| async move { rx.await.map_err(|_| ()) })
                        .await
                }
            };
            (i, start.elapsed(), r)
        }));
    }
    // Answered from another task, once the calls have had a chance to start waiting.
    tokio::spawn(async move {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        for (i, tx) in senders.into_iter().enumerate() {
            let _ = tx.send(i as u32);
        }
    });
    let all = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
        .await
        .expect("a call was left waiting");
    let (mut cuts, mut answers, mut slowest_cut) = (0, 0, Duration::ZERO);
    for joined in all {
        let (i, took, r) = joined.unwrap();
        match (i % 2, r) {
            (0, Err(Error::Timeout(e))) => {
                assert_eq!(e.after, short);
                assert!(
                    took >= short,
                    "call {i} cut after {took:?}, before its bound"
                );
                slowest_cut = slowest_cut.max(took);
                cuts += 1;
            }
            (1, Ok(v)) => {
                assert_eq!(v, i);
                answers += 1;
            }
            (_, other) => panic!("call {i}: {other:?}"),
        }
    }
    println!(
        "two workers: {cuts} calls cut at or after 20ms (slowest {slowest_cut:?}), {answers} answered"
    );
    assert_eq!((cuts, answers), (200, 200));
}

#[tokio::test(start_paused = true)]
async fn a_zero_bound_is_up_at_the_first_wait() {
    let t = Timeout::new(Duration::ZERO);
    let start = Instant::now();
    let r = t.call(hang).await;
    assert!(
        matches!(r, Err(Error::Timeout(e)) if e.after == Duration::ZERO),
        "{r:?}"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    // A call that answers without waiting is not cut.
    assert_eq!(t.call(|| async { Ok::<_, ()>(3) }).await, Ok(3));
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_alive_tasks(), 0, "a zero bound started a timer");
}
