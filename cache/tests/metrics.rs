//! With the `metrics` feature, the cache reports hits, misses, loads, coalesced waiters and
//! stale values under the documented names.

use std::time::Duration;

use floodwall_cache::TieredCache;
use floodwall_core::TokioClock;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test(start_paused = true)]
async fn the_cache_reports_its_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");

    let cache: TieredCache<u32, u32> = TieredCache::builder()
        .ttl(Duration::from_secs(10))
        .soft_ttl(Duration::from_secs(5))
        .clock(TokioClock::new())
        .build();
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, std::io::Error>(Some(1))
    };
    let (a, b) = tokio::join!(cache.get_or_load(1, slow), cache.get_or_load(1, slow));
    assert_eq!((a.unwrap(), b.unwrap()), (Some(1), Some(1)));
    cache.get(&1).await;
    tokio::time::advance(Duration::from_secs(6)).await;
    cache.get_or_load(1, slow).await.unwrap();
    // Let the background refresh run.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let snap = snapshotter.snapshot().into_vec();
    let count = |name: &str| {
        snap.iter()
            .find_map(|(k, _, _, v)| match v {
                DebugValue::Counter(c) if k.key().name() == name => Some(*c),
                _ => None,
            })
            .unwrap_or(0)
    };
    assert_eq!(count("floodwall_cache_l1_misses_total"), 2);
    assert_eq!(
        count("floodwall_cache_loads_total"),
        2,
        "the first load and the refresh"
    );
    assert_eq!(count("floodwall_cache_coalesced_waiters_total"), 1);
    assert_eq!(count("floodwall_cache_l1_hits_total"), 2);
    assert_eq!(count("floodwall_cache_stale_served_total"), 1);
    assert_eq!(cache.stats().loads, 2);
}
