//! With the `metrics` feature, executions, replays, conflicts, mismatches and duplicates are
//! counted under the documented names, each instance under its own `idempotency` label.

use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_idempotency::{Deduplicator, Fingerprint, Idempotency, MemoryStore, RunError, Store};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test]
async fn every_path_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");

    let store = MemoryStore::with_clock(ManualClock::new(), 100);
    let idem = Idempotency::new(store.clone());
    let ok = || async { Ok::<_, String>(1u8) };
    idem.run("a", &Fingerprint::NONE, ok).await.unwrap();
    idem.run("a", &Fingerprint::NONE, ok).await.unwrap();
    assert!(matches!(
        idem.run("a", &Fingerprint::of(b"x"), ok).await,
        Err(RunError::FingerprintMismatch)
    ));
    store
        .begin("held", &Fingerprint::NONE, Duration::from_secs(9))
        .await
        .unwrap();
    assert!(matches!(
        idem.run("held", &Fingerprint::NONE, ok).await,
        Err(RunError::InProgress { .. })
    ));
    let dedup = Deduplicator::new(store, Duration::from_secs(60)).name("queue");
    dedup.process("m", ok).await.unwrap();
    dedup.process("m", ok).await.unwrap();

    let snap = snapshotter.snapshot().into_vec();
    // Each instance counts under its own name.
    let count = |name: &str, instance: &str| {
        snap.iter().find_map(|(k, _, _, v)| match v {
            DebugValue::Counter(c)
                if k.key().name() == name
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "idempotency" && l.value() == instance) =>
            {
                Some(*c)
            }
            _ => None,
        })
    };
    let me = idem.name();
    assert!(me.starts_with("idempotency-"), "{me}");
    assert_eq!(count("floodwall_idempotency_executions_total", me), Some(1));
    assert_eq!(count("floodwall_idempotency_replays_total", me), Some(1));
    assert_eq!(count("floodwall_idempotency_mismatches_total", me), Some(1));
    assert_eq!(count("floodwall_idempotency_conflicts_total", me), Some(1));
    assert_eq!(
        count("floodwall_idempotency_duplicates_total", "queue"),
        Some(1)
    );
    // Series that saw nothing exist, at zero.
    assert_eq!(count("floodwall_idempotency_duplicates_total", me), Some(0));
    assert_eq!(
        count("floodwall_idempotency_unrecorded_total", "queue"),
        Some(0)
    );
}
