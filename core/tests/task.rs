//! The supervisor of floodwall's background tasks, on Tokio's paused clock: a panic and an
//! unexpected end are counted and started again after 50, 100, 200 ms ...; a run that ends as
//! it should, or an owner that is gone, ends the supervisor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_core::task::{self, Exit, Task};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn panics_and_unexpected_ends_are_restarted_with_backoff_until_done_or_owner_gone() {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let before = task::restarts(Task::Custom);
    let started = Instant::now();
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = starts.clone();
    tokio::spawn(task::supervised(Task::Custom, move || {
        let n = r.fetch_add(1, Ordering::SeqCst);
        s.lock().unwrap().push(started.elapsed());
        Some(async move {
            match n {
                0 => panic!("a bug"),
                1 => Exit::Unexpected("its input closed"),
                2 => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    panic!("another bug after a while")
                }
                _ => Exit::Done,
            }
        })
    }))
    .await
    .unwrap();
    let starts = starts.lock().unwrap().clone();
    println!("runs started at {starts:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert_eq!(task::restarts(Task::Custom) - before, 3);
    let ms = |n| Duration::from_millis(n);
    assert_eq!(starts, vec![ms(0), ms(50), ms(150), ms(360)]);

    // A run that lasted a minute resets the backoff: the next restart waits 50 ms again,
    // not 200 ms.
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (s, n) = (starts.clone(), Arc::new(AtomicU32::new(0)));
    let origin = Instant::now();
    tokio::spawn(task::supervised(Task::Custom, move || {
        let run = n.fetch_add(1, Ordering::SeqCst);
        s.lock().unwrap().push(origin.elapsed());
        Some(async move {
            match run {
                0 | 1 => Exit::Unexpected("quick failure"),
                2 => {
                    tokio::time::sleep(Duration::from_secs(61)).await;
                    Exit::Unexpected("failure after a healthy minute")
                }
                _ => Exit::Done,
            }
        })
    }))
    .await
    .unwrap();
    let starts = starts.lock().unwrap().clone();
    println!("with a healthy run: starts at {starts:?}");
    assert_eq!(starts, vec![ms(0), ms(50), ms(150), ms(150 + 61_000 + 50)]);

    // An owner that is gone ends the supervisor (in the same test: the counts are the
    // process's).
    let owner = Arc::new(());
    let weak = Arc::downgrade(&owner);
    let supervisor = tokio::spawn(task::supervised(Task::Custom, move || {
        weak.upgrade()?;
        Some(async { Exit::Unexpected("lost") })
    }));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        !supervisor.is_finished(),
        "restarting while the owner lives"
    );
    drop(owner);
    tokio::time::timeout(Duration::from_secs(10), supervisor)
        .await
        .expect("the supervisor ended")
        .unwrap();
}
