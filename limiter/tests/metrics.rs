//! With the `metrics` feature, denials (enforced and shadow) are counted under the documented
//! name.

use std::num::NonZeroU32;

use floodwall_core::ManualClock;
use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::test]
async fn denials_are_counted_by_limit_and_shadow() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");

    let one = Quota::per_minute(NonZeroU32::new(1).unwrap());
    let limiter = RateLimiter::builder()
        .limit(Limit::new("enforced", Algorithm::FixedWindow, one).keyed_by("user"))
        .limit(Limit::new("trial", Algorithm::Gcra, one).shadow(true))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    assert!(limiter.check(&[("user", "a")]).await.unwrap().allowed);
    // Denied by "enforced"; "trial" (shadow, global) would also deny.
    assert!(!limiter.check(&[("user", "a")]).await.unwrap().allowed);
    // Admitted ("b" has room), but "trial" would deny it.
    let v = limiter.check(&[("user", "b")]).await.unwrap();
    assert!(v.allowed && v.shadow_denied.is_some());

    let snap = snapshotter.snapshot().into_vec();
    let count = |limit: &str, shadow: &str| {
        snap.iter()
            .find_map(|(key, _, _, v)| {
                let k = key.key();
                let ok = k.name() == "floodwall_limiter_denied_total"
                    && k.labels().any(|l| l.key() == "limit" && l.value() == limit)
                    && k.labels()
                        .any(|l| l.key() == "shadow" && l.value() == shadow);
                match v {
                    DebugValue::Counter(c) if ok => Some(*c),
                    _ => None,
                }
            })
            .unwrap_or(0)
    };
    assert_eq!(count("enforced", "false"), 1);
    assert_eq!(
        count("trial", "true"),
        1,
        "the shadow denial of b (a's stopped at enforced)"
    );
}
