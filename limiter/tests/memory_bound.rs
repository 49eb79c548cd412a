//! A flood of 1,000,000 distinct keys (rotating IPv6 addresses) into the memory store stays
//! within the documented memory bound — by the store's own accounting and by the process's
//! resident memory. Its own test binary, so no other test's allocations blur the figure.

use std::net::Ipv6Addr;
use std::num::NonZeroU32;

use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter};

mod rss;

use rss::resident_bytes;

#[tokio::test]
async fn a_million_distinct_keys_stay_within_the_documented_bound() {
    let max_keys = 250_000;
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new(
                "ip",
                Algorithm::Gcra,
                Quota::per_minute(NonZeroU32::new(10).unwrap()),
            )
            .keyed_by("ip"),
        )
        .max_keys(max_keys)
        .build()
        .unwrap();
    let bound = limiter.memory_bound(39);
    let before = resident_bytes();
    let mut peak_keys = 0;
    let mut peak_bytes = 0;
    for i in 0..1_000_000u128 {
        let ip =
            Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 | (i * 7919)).to_string();
        let v = limiter.check(&[("ip", &ip)]).await.unwrap();
        assert!(v.allowed, "each new key has its whole burst");
        if i % 50_000 == 0 {
            peak_keys = peak_keys.max(limiter.memory_keys());
            peak_bytes = peak_bytes.max(limiter.memory_bytes());
        }
    }
    peak_keys = peak_keys.max(limiter.memory_keys());
    peak_bytes = peak_bytes.max(limiter.memory_bytes());
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "1,000,000 distinct keys, max_keys {max_keys}: peak {peak_keys} keys, store {:.1} MB, \
         resident growth {:.1} MB, documented bound {:.1} MB",
        peak_bytes as f64 / 1e6,
        grown as f64 / 1e6,
        bound as f64 / 1e6
    );
    assert!(peak_keys <= max_keys + 256, "{peak_keys} keys");
    assert!(peak_bytes <= bound, "{peak_bytes} > {bound}");
    if before > 0 {
        assert!(
            grown <= bound,
            "resident memory grew {grown} bytes > {bound}"
        );
    }
}
