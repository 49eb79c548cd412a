use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::{Elapsed, Watch};

/// A call that never ends is cut off at its deadline, to the millisecond of the paused clock.
#[tokio::test(start_paused = true)]
async fn a_call_that_never_ends_is_cut_off_at_its_deadline() {
    let watch = Arc::new(Watch::default());
    let start = Instant::now();
    let r = watch
        .within(Duration::from_millis(100), pending::<()>())
        .await;
    let took = start.elapsed();
    println!("cut off after {took:?} (bound 100 ms)");
    assert!(matches!(r, Err(Elapsed)));
    assert!(
        took >= Duration::from_millis(100) && took <= Duration::from_millis(101),
        "{took:?}"
    );
}

/// Calls that end in time answer their own result; once their deadlines have passed, the
/// queue is empty and the watchdog has ended (nothing is left running while no call waits).
#[tokio::test(start_paused = true)]
async fn calls_that_end_in_time_leave_nothing_behind() {
    let watch = Arc::new(Watch::default());
    for i in 0..1_000u32 {
        let r = watch
            .within(Duration::from_millis(100), async move {
                tokio::task::yield_now().await;
                i
            })
            .await;
        assert_eq!(r.unwrap(), i);
    }
    let held = watch.lock().entries.len();
    println!("entries held after 1000 calls: {held}");
    assert!(
        held <= 1,
        "done entries are dropped as calls register: {held}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!watch.alive.load(Ordering::Acquire), "the watchdog ended");
    assert!(watch.lock().entries.is_empty());
}

/// A deadline earlier than the one the watchdog sleeps until re-arms it: the short call ends
/// at its own deadline, not the long one's.
#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_rearms_the_watchdog() {
    let watch = Arc::new(Watch::default());
    let start = Instant::now();
    let long = tokio::spawn({
        let watch = watch.clone();
        async move {
            let r = watch.within(Duration::from_secs(1), pending::<()>()).await;
            (r.is_err(), start.elapsed())
        }
    });
    tokio::task::yield_now().await;
    let r = watch
        .within(Duration::from_millis(10), pending::<()>())
        .await;
    let short = start.elapsed();
    let (long_cut, long_took) = long.await.unwrap();
    println!("short cut off after {short:?}, long after {long_took:?}");
    assert!(r.is_err() && long_cut);
    assert!(short <= Duration::from_millis(11), "{short:?}");
    assert!(long_took >= Duration::from_secs(1) && long_took <= Duration::from_millis(1_001));
}

/// The runtime that ran the watchdog shuts down while a call of another runtime waits: the
/// call is still cut off (a watchdog starts on its runtime), it does not wait forever.
#[test]
fn a_watchdog_whose_runtime_ends_is_replaced() {
    let watch = Arc::new(Watch::default());
    let a = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Runtime A starts the watchdog with a call that waits 60 s.
    let waiting = a.spawn({
        let watch = watch.clone();
        async move { watch.within(Duration::from_secs(60), pending::<()>()).await }
    });
    a.block_on(tokio::task::yield_now());
    assert!(watch.alive.load(Ordering::Acquire), "A's watchdog runs");
    let b = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(waiting);
        a.shutdown_background();
    });
    let started = std::time::Instant::now();
    let r = b.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            watch.within(Duration::from_millis(300), pending::<()>()),
        )
        .await
    });
    stopper.join().unwrap();
    println!(
        "B's call ended after {:?} (bound 300 ms) with A shut down at 50 ms",
        started.elapsed()
    );
    assert!(
        matches!(r, Ok(Err(Elapsed))),
        "cut off by a watchdog, not by the test's own 10 s bound"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Calls of random lengths, bounds and starts on one connection end as a timer of their
    /// own would end them (the model): a call shorter than its bound answers, a longer one is
    /// cut off at its deadline (within the timer's 1 ms). Lengths and bounds differ by 2 ms or
    /// more, so no call ends on its deadline's tick.
    #[test]
    fn calls_end_as_the_model_says(
        calls in prop::collection::vec((0u64..50, 1u64..200, 1u64..200), 1..40)
    ) {
        let calls: Vec<(u64, u64, u64)> = calls
            .into_iter()
            .filter(|&(_, len, bound)| len.abs_diff(bound) >= 2)
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let outcomes = rt.block_on(async {
            let watch = Arc::new(Watch::default());
            let tasks: Vec<_> = calls
                .iter()
                .map(|&(at, len, bound)| {
                    let watch = watch.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(at)).await;
                        let start = Instant::now();
                        let r = watch
                            .within(
                                Duration::from_millis(bound),
                                tokio::time::sleep(Duration::from_millis(len)),
                            )
                            .await;
                        (r.is_ok(), start.elapsed())
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        for (&(_, len, bound), (answered, took)) in calls.iter().zip(outcomes) {
            let model = len < bound;
            prop_assert_eq!(answered, model, "length {} ms, bound {} ms", len, bound);
            let due = Duration::from_millis(len.min(bound));
            prop_assert!(
                took >= due && took <= due + Duration::from_millis(1),
                "length {} ms, bound {} ms: ended after {:?}", len, bound, took
            );
        }
    }
}

/// Many tasks on two worker threads register, end and get cut off at once, their bounds
/// and lengths mixed: no call is cut off before its bound, none waits past it for good (each
/// ends well within a generous outer bound), and once all have ended the queue is empty and
/// the watchdog gone. Real time: it checks only what the scheduler's lateness cannot move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_two_threads_are_each_bounded() {
    let watch = Arc::new(Watch::default());
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let watch = watch.clone();
            tokio::spawn(async move {
                let (mut answered, mut cut) = (0u32, 0u32);
                for i in 0..40u64 {
                    let bound = Duration::from_millis(5 + (t * 7 + i * 3) % 20);
                    let len = Duration::from_millis((t * 11 + i * 5) % 30);
                    let start = std::time::Instant::now();
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        watch.within(bound, tokio::time::sleep(len)),
                    )
                    .await
                    .expect("ended by its own bound, not the test's");
                    match r {
                        Ok(()) => answered += 1,
                        Err(Elapsed) => {
                            assert!(start.elapsed() >= bound, "cut off before its bound");
                            cut += 1;
                        }
                    }
                }
                (answered, cut)
            })
        })
        .collect();
    let (mut answered, mut cut) = (0, 0);
    for t in tasks {
        let (a, c) = t.await.unwrap();
        answered += a;
        cut += c;
    }
    println!("64 tasks x 40 calls on 2 threads: {answered} answered, {cut} cut off");
    assert!(answered > 0 && cut > 0, "both outcomes were exercised");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while watch.alive.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!watch.alive.load(Ordering::Acquire), "the watchdog ended");
    assert!(watch.lock().entries.is_empty(), "no entry left behind");
}

/// A call that ended lets go of its task's waker at once, though its entry may wait in the
/// queue until a later call or the watchdog drops it.
#[tokio::test(start_paused = true)]
async fn an_ended_call_holds_no_waker() {
    let watch = Arc::new(Watch::default());
    let r = watch
        .within(Duration::from_millis(100), async {
            tokio::task::yield_now().await;
            7
        })
        .await;
    assert_eq!(r.unwrap(), 7);
    let q = watch.lock();
    assert_eq!(q.entries.len(), 1, "the ended call's entry is still queued");
    let (_, slot) = &q.entries[0];
    assert_eq!(slot.state.load(Ordering::Acquire), super::DONE);
    assert!(slot.waker.lock().unwrap().is_none(), "its waker was let go");
}

/// Under steady load the watchdog wakes about once per bound, not once per call: 2,000 calls
/// of 1 ms each, one after another, with a 100 ms bound, take about 2 s of the paused clock,
/// and no call's deadline is ever the earliest pending one.
#[tokio::test(start_paused = true)]
async fn the_watchdog_wakes_about_once_per_bound_under_steady_load() {
    let watch = Arc::new(Watch::default());
    for _ in 0..2_000 {
        let r = watch
            .within(
                Duration::from_millis(100),
                tokio::time::sleep(Duration::from_millis(1)),
            )
            .await;
        assert!(r.is_ok());
    }
    let passes = watch.passes.load(Ordering::Relaxed);
    println!("2000 calls of 1 ms over about 2 s, bound 100 ms: {passes} watchdog passes");
    // One pass when it starts, then about one per 100 ms of the 2 s.
    assert!(passes <= 2 * 2_000 / 100 + 2, "{passes} passes");
}
