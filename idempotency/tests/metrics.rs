//! With the `metrics` feature, executions, replays, conflicts, mismatches and duplicates are
//! counted under the documented names.

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
    let dedup = Deduplicator::new(store, Duration::from_secs(60));
    dedup.process("m", ok).await.unwrap();
    dedup.process("m", ok).await.unwrap();

    let snap = snapshotter.snapshot().into_vec();
    let count = |name: &str| {
        snap.iter()
            .find_map(|(k, _, _, v)| match v {
                DebugValue::Counter(c) if k.key().name() == name => Some(*c),
                _ => None,
            })
            .unwrap_or(0)
    };
    assert_eq!(count("floodwall_idempotency_executions_total"), 1);
    assert_eq!(count("floodwall_idempotency_replays_total"), 1);
    assert_eq!(count("floodwall_idempotency_mismatches_total"), 1);
    assert_eq!(count("floodwall_idempotency_conflicts_total"), 1);
    assert_eq!(count("floodwall_idempotency_duplicates_total"), 1);
}
