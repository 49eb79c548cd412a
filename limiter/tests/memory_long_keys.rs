//! A flood of 1,000,000 distinct 10 KB keys into the memory store (the store without Redis,
//! and the insurance limiter beside Redis) stays within the documented bound, which no
//! longer depends on key length: keys over 46 bytes are kept as their SHA-256, inside the
//! table's entries. Unhashed, the
//! keys alone would take 10 GB. Its own test binary, so no other test's allocations blur the
//! resident-memory figure.

use std::fmt::Write;
use std::num::NonZeroU32;

use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};

mod rss;

use rss::resident_bytes;

#[tokio::test]
async fn a_million_10_kb_keys_stay_within_the_bound_for_short_keys() {
    const KEY_LEN: usize = 10 * 1024;
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new(
                "api",
                Algorithm::Gcra,
                Quota::per_minute(NonZeroU32::new(10).unwrap()),
            )
            .keyed_by("key"),
        )
        .build()
        .unwrap();
    let bound = limiter.memory_bound(KEY_LEN);
    assert_eq!(
        bound,
        limiter.memory_bound(usize::MAX),
        "the bound stops growing with key length"
    );
    let pad = "k".repeat(KEY_LEN);
    let mut key = String::with_capacity(KEY_LEN);
    let before = resident_bytes();
    let mut peak_bytes = 0;
    for i in 0..1_000_000u32 {
        key.clear();
        let _ = write!(key, "{i}:");
        let fill = KEY_LEN - key.len();
        key.push_str(&pad[..fill]);
        let v = limiter.check(&[("key", &key)]).await.unwrap();
        assert!(v.allowed, "each new key has its whole burst");
        if i % 100_000 == 0 {
            peak_bytes = peak_bytes.max(limiter.memory_bytes());
        }
    }
    peak_bytes = peak_bytes.max(limiter.memory_bytes());
    let keys = limiter.memory_keys();
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "1,000,000 distinct 10 KB keys: {keys} held at the end (idle ones swept), store {:.1} MB, resident growth {:.1} MB, \
         documented bound {:.1} MB (the keys themselves: {:.1} GB)",
        peak_bytes as f64 / 1e6,
        grown as f64 / 1e6,
        bound as f64 / 1e6,
        (KEY_LEN as f64 * 1e6) / 1e9
    );
    assert!(keys <= floodwall_limiter::keyed::DEFAULT_MAX_KEYS);
    assert!(peak_bytes <= bound, "{peak_bytes} > {bound}");
    if before > 0 {
        assert!(
            grown <= bound,
            "resident memory grew {grown} bytes > {bound}"
        );
    }
}
