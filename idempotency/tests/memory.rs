//! The memory store against the reference model, fencing after a crash, the plain API and
//! the deduplicator — on a manual clock.

mod model;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_idempotency::{
    Abort, Begin, Deduplicator, Fingerprint, Finish, Idempotency, MemoryStore, OnConflict, Outcome,
    Processed, RunError, Store,
};
use model::{drive, ops};
use proptest::prelude::*;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Random interleavings of begin / complete / release / record / clock advance: the
    /// memory store answers exactly as the model does.
    #[test]
    fn memory_store_agrees_with_the_model(ops in ops(true)) {
        let clock = ManualClock::new();
        let store = MemoryStore::with_clock(clock.clone(), 1_000);
        block_on(drive(
            &store,
            ops,
            |k| format!("k{k}"),
            |ms| clock.advance(Duration::from_millis(ms)),
            Duration::ZERO,
        ))?;
    }
}

#[tokio::test]
async fn a_crashed_holder_is_fenced_after_its_lease_is_taken_over() {
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone(), 100);
    let fp = Fingerprint::of(b"charge 42");
    let lease = Duration::from_secs(10);
    let Begin::Claimed(crashed) = store.begin("pay-1", &fp, lease).await.unwrap() else {
        panic!("first claim")
    };
    // The holder hangs. Until its lease ends, retries are told to wait.
    clock.advance(Duration::from_secs(9));
    assert_eq!(
        store.begin("pay-1", &fp, lease).await.unwrap(),
        Begin::InProgress {
            retry_after: Duration::from_secs(1)
        }
    );
    clock.advance(Duration::from_secs(1));
    let Begin::Claimed(retry) = store.begin("pay-1", &fp, lease).await.unwrap() else {
        panic!("the retry claims the key after the lease")
    };
    assert!(retry > crashed);
    // The old holder wakes up while the retry runs: its result is refused...
    assert_eq!(
        store
            .complete("pay-1", crashed, b"receipt-1", Duration::from_secs(60))
            .await
            .unwrap(),
        Finish::Fenced
    );
    assert_eq!(
        store
            .complete("pay-1", retry, b"receipt-2", Duration::from_secs(60))
            .await
            .unwrap(),
        Finish::Done
    );
    // The old holder wakes up and tries to store its result: refused, the stored one stays.
    assert_eq!(
        store
            .complete("pay-1", crashed, b"receipt-1", Duration::from_secs(60))
            .await
            .unwrap(),
        Finish::Fenced
    );
    assert_eq!(
        store.abort("pay-1", crashed, Abort::Release).await.unwrap(),
        Finish::Fenced
    );
    assert_eq!(
        store.begin("pay-1", &fp, lease).await.unwrap(),
        Begin::Completed(b"receipt-2".to_vec())
    );
}

#[tokio::test]
async fn run_replays_refuses_mismatches_and_releases_on_error() {
    let idem = Idempotency::new(MemoryStore::with_clock(ManualClock::new(), 100));
    let runs = AtomicU32::new(0);
    let fp = Fingerprint::of(b"a");
    let op = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(vec![1u8, 2, 3])
    };
    assert_eq!(
        idem.run("k", &fp, op).await.unwrap(),
        Outcome::Fresh(vec![1, 2, 3])
    );
    assert_eq!(
        idem.run("k", &fp, op).await.unwrap(),
        Outcome::Replayed(vec![1, 2, 3])
    );
    assert!(matches!(
        idem.run("k", &Fingerprint::of(b"b"), op).await,
        Err(RunError::FingerprintMismatch)
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A failure releases the claim: the retry runs.
    let failing = || async { Err::<u32, _>("card declined") };
    assert!(matches!(
        idem.run("e", &fp, failing).await,
        Err(RunError::Operation("card declined"))
    ));
    assert_eq!(
        idem.run("e", &fp, || async { Ok::<_, String>(7u32) })
            .await
            .unwrap(),
        Outcome::Fresh(7)
    );
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_duplicate_gets_a_conflict_or_waits_for_the_result() {
    let store = MemoryStore::with_clock(ManualClock::new(), 100);
    let fp = Fingerprint::NONE;
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, String>("done".to_string())
    };
    let reject = Idempotency::new(store.clone());
    let wait = Idempotency::builder(store.clone())
        .on_conflict(OnConflict::Wait(Duration::from_secs(2)))
        .build()
        .unwrap();
    let first = tokio::spawn({
        let reject = reject.clone();
        async move { reject.run("k", &fp, slow).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(matches!(
        reject.run("k", &fp, slow).await,
        Err(RunError::InProgress { .. })
    ));
    let waited = wait.run("k", &fp, slow).await.unwrap();
    assert_eq!(waited, Outcome::Replayed("done".to_string()));
    assert_eq!(
        first.await.unwrap().unwrap(),
        Outcome::Fresh("done".to_string())
    );
}

#[tokio::test]
async fn the_deduplicator_processes_each_message_once_within_its_window() {
    let clock = ManualClock::new();
    let dedup = Deduplicator::new(
        MemoryStore::with_clock(clock.clone(), 100),
        Duration::from_secs(60),
    );
    let processed = Arc::new(AtomicU32::new(0));
    let handle = |p: Arc<AtomicU32>| async move {
        p.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(())
    };
    assert_eq!(
        dedup
            .process("m1", || handle(processed.clone()))
            .await
            .unwrap(),
        Processed::Done(())
    );
    assert_eq!(
        dedup
            .process("m1", || handle(processed.clone()))
            .await
            .unwrap(),
        Processed::Duplicate
    );
    // A failed processing releases the id for the redelivery.
    assert!(
        dedup
            .process("m2", || async { Err::<(), _>("boom") })
            .await
            .is_err()
    );
    assert_eq!(
        dedup
            .process("m2", || handle(processed.clone()))
            .await
            .unwrap(),
        Processed::Done(())
    );
    // After the window the id is forgotten.
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        dedup
            .process("m1", || handle(processed.clone()))
            .await
            .unwrap(),
        Processed::Done(())
    );
    assert_eq!(processed.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_full_memory_store_refuses_new_claims_but_keeps_results() {
    let clock = ManualClock::new();
    let store = MemoryStore::with_clock(clock.clone(), 16);
    let idem = Idempotency::builder(store.clone())
        .retention(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut refused = 0;
    for i in 0..200 {
        match idem
            .run(&format!("k{i}"), &Fingerprint::NONE, || async {
                Ok::<_, String>(i)
            })
            .await
        {
            Ok(_) => {}
            Err(RunError::Store(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(store.len() <= 16 + 16, "{} records", store.len());
    assert!(refused > 0);
    // Once results expire, room comes back.
    clock.advance(Duration::from_secs(61));
    assert!(
        idem.run("late", &Fingerprint::NONE, || async { Ok::<_, String>(1) })
            .await
            .is_ok()
    );
}

/// `Duration::MAX` means "unbounded" for a conflict wait and a lease: no overflow, no panic.
#[tokio::test(start_paused = true)]
async fn unbounded_waits_and_leases_do_not_panic() {
    let store = MemoryStore::new();
    let idem = Idempotency::builder(store.clone())
        .lease(Duration::MAX)
        .on_conflict(OnConflict::Wait(Duration::MAX))
        .build()
        .unwrap();
    let fp = Fingerprint::of(b"x");
    let first = idem
        .run("k", &fp, || async { Ok::<_, ()>(1) })
        .await
        .unwrap();
    assert!(matches!(first, Outcome::Fresh(1)));
    let again = idem
        .run("k", &fp, || async { Ok::<_, ()>(2) })
        .await
        .unwrap();
    assert!(matches!(again, Outcome::Replayed(1)));
    assert_eq!(
        Idempotency::builder(store)
            .lease(Duration::ZERO)
            .build()
            .unwrap_err()
            .field,
        "lease"
    );
}
