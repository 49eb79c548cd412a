//! The in-process tier on Tokio's paused clock: coalescing, soft and hard TTL with one
//! background refresh, fail-safe with its throttle, soft and hard loader timeouts, negative
//! caching, jitter bounds and XFetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall_cache::{CacheError, TieredCache};
use floodwall_core::TokioClock;
use tokio::time::{Instant, advance, sleep};

type Cache = TieredCache<&'static str, u32>;

type Loaded =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<u32>, String>> + Send>>;

/// A loader that counts its calls, takes `took`, and answers `answer(call number)`.
fn loader(
    calls: &Arc<AtomicU32>,
    took: Duration,
    answer: fn(u32) -> Result<Option<u32>, &'static str>,
) -> impl FnOnce() -> Loaded + Send + 'static {
    let calls = calls.clone();
    move || {
        Box::pin(async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            sleep(took).await;
            answer(n).map_err(str::to_owned)
        })
    }
}

fn ok(n: u32) -> Result<Option<u32>, &'static str> {
    Ok(Some(n))
}

fn fail(_: u32) -> Result<Option<u32>, &'static str> {
    Err("source down")
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_cold_key_stampede_runs_the_loader_once() {
    let cache: Cache = TieredCache::builder().clock(TokioClock::new()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (cache, l) = (cache.clone(), loader(&calls, Duration::from_millis(50), ok));
        tasks.push(tokio::spawn(
            async move { cache.get_or_load("hot", l).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Some(1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!(s.loads, 1);
    assert_eq!(s.coalesced, 999);
}

#[tokio::test(start_paused = true)]
async fn stale_values_are_served_while_exactly_one_refresh_runs() {
    let cache: Cache = TieredCache::builder()
        .ttl(Duration::from_secs(10))
        .soft_ttl(Duration::from_secs(5))
        .clock(TokioClock::new())
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    assert_eq!(
        cache
            .get_or_load("k", loader(&calls, Duration::ZERO, ok))
            .await
            .unwrap(),
        Some(1)
    );
    advance(Duration::from_secs(4)).await;
    assert_eq!(
        cache
            .get_or_load("k", loader(&calls, Duration::ZERO, ok))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "fresh: no load");

    advance(Duration::from_secs(2)).await; // t = 6 s: stale
    let started = Instant::now();
    for _ in 0..50 {
        let v = cache
            .get_or_load("k", loader(&calls, Duration::from_secs(1), ok))
            .await
            .unwrap();
        assert_eq!(v, Some(1), "the stale value, at once");
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "exactly one background refresh"
    );
    assert_eq!(
        cache.stats().coalesced,
        0,
        "the 49 refreshes that found one in flight waited for nothing: none is a coalesced waiter"
    );
    advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(cache.get(&"k").await, Some(2), "the refresh landed");

    // Past the hard TTL of the refreshed value (written at 7 s): a caller waits for a load.
    advance(Duration::from_secs(11)).await;
    assert_eq!(cache.get(&"k").await, None);
    let started = Instant::now();
    let v = cache
        .get_or_load("k", loader(&calls, Duration::from_millis(300), ok))
        .await
        .unwrap();
    assert_eq!(
        (v, started.elapsed()),
        (Some(3), Duration::from_millis(300))
    );
}

#[tokio::test(start_paused = true)]
async fn fail_safe_serves_the_last_value_and_throttles_the_loader() {
    let cache: Cache = TieredCache::builder()
        .ttl(Duration::from_secs(10))
        .fail_safe(Duration::from_secs(60), Duration::from_secs(5))
        .clock(TokioClock::new())
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    cache
        .get_or_load("k", loader(&calls, Duration::ZERO, ok))
        .await
        .unwrap();
    advance(Duration::from_secs(11)).await; // expired
    assert_eq!(
        cache
            .get_or_load("k", loader(&calls, Duration::ZERO, fail))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Within the throttle: the stale value, no loader call.
    advance(Duration::from_secs(4)).await;
    assert_eq!(
        cache
            .get_or_load("k", loader(&calls, Duration::ZERO, fail))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // After it: the loader is tried again.
    advance(Duration::from_secs(2)).await;
    assert_eq!(
        cache
            .get_or_load("k", loader(&calls, Duration::ZERO, fail))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Past max-stale (expired at 10 s + 60 s): the failure surfaces.
    advance(Duration::from_secs(60)).await;
    let err = cache
        .get_or_load("k", loader(&calls, Duration::ZERO, fail))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Loader(_)), "{err}");
    // And a recovered source serves again.
    assert_eq!(
        cache
            .get_or_load("k", loader(&calls, Duration::ZERO, ok))
            .await
            .unwrap(),
        Some(5)
    );
}

#[tokio::test(start_paused = true)]
async fn a_soft_timeout_answers_the_old_value_and_the_load_finishes_later() {
    let cache: Cache = TieredCache::builder()
        .ttl(Duration::from_secs(10))
        .fail_safe(Duration::from_secs(600), Duration::from_secs(1))
        .soft_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_secs(30))
        .clock(TokioClock::new())
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    cache
        .get_or_load("k", loader(&calls, Duration::ZERO, ok))
        .await
        .unwrap();
    advance(Duration::from_secs(11)).await;
    let started = Instant::now();
    let v = cache
        .get_or_load("k", loader(&calls, Duration::from_secs(5), ok))
        .await
        .unwrap();
    assert_eq!(
        (v, started.elapsed()),
        (Some(1), Duration::from_millis(100))
    );
    sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(
        cache.get(&"k").await,
        Some(2),
        "the slow load finished in the background"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hard_timeout_cuts_the_load() {
    let cache: Cache = TieredCache::builder()
        .hard_timeout(Duration::from_secs(2))
        .clock(TokioClock::new())
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let err = cache
        .get_or_load("k", loader(&calls, Duration::from_secs(60), ok))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Timeout(d) if d == Duration::from_secs(2)));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(cache.get(&"k").await, None);
}

#[tokio::test(start_paused = true)]
async fn not_found_is_cached_for_the_negative_ttl() {
    let cache: Cache = TieredCache::builder()
        .negative_ttl(Duration::from_secs(3))
        .clock(TokioClock::new())
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    let none = |_| Ok(None);
    assert_eq!(
        cache
            .get_or_load("gone", loader(&calls, Duration::ZERO, none))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        cache
            .get_or_load("gone", loader(&calls, Duration::ZERO, none))
            .await
            .unwrap(),
        None
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the miss was cached");
    advance(Duration::from_secs(3)).await;
    assert_eq!(
        cache
            .get_or_load("gone", loader(&calls, Duration::ZERO, ok))
            .await
            .unwrap(),
        Some(2)
    );

    // Without a negative TTL nothing is cached for a miss.
    let plain: Cache = TieredCache::builder().clock(TokioClock::new()).build();
    plain
        .get_or_load("gone", loader(&calls, Duration::ZERO, none))
        .await
        .unwrap();
    plain
        .get_or_load("gone", loader(&calls, Duration::ZERO, none))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn jittered_ttls_stay_within_their_bounds() {
    let cache: TieredCache<u32, u32> = TieredCache::builder()
        .max_capacity(1_000)
        .ttl(Duration::from_secs(10))
        .jitter(0.5)
        .clock(TokioClock::new())
        .build();
    for k in 0..200 {
        cache.set(k, k).await;
    }
    advance(Duration::from_secs(10) - Duration::from_nanos(1)).await;
    for k in 0..200 {
        assert_eq!(
            cache.get(&k).await,
            Some(k),
            "no entry expires before the TTL"
        );
    }
    advance(Duration::from_millis(2_500)).await;
    let mut alive = 0;
    for k in 0..200 {
        alive += u32::from(cache.get(&k).await.is_some());
    }
    assert!(
        alive > 0 && alive < 200,
        "expiries spread out: {alive} of 200 alive at 12.5 s"
    );
    advance(Duration::from_millis(2_500)).await;
    for k in 0..200 {
        assert_eq!(
            cache.get(&k).await,
            None,
            "every entry expires by TTL x 1.5"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn xfetch_refreshes_early_only_when_enabled() {
    for (beta, refreshes) in [(None, 0), (Some(1.0), 1)] {
        let mut b = TieredCache::builder()
            .ttl(Duration::from_secs(10))
            .clock(TokioClock::new());
        if let Some(beta) = beta {
            b = b.xfetch(beta);
        }
        let cache: Cache = b.build();
        let calls = Arc::new(AtomicU32::new(0));
        // A load that took 1 s: XFetch's delta.
        cache
            .get_or_load("k", loader(&calls, Duration::from_secs(1), ok))
            .await
            .unwrap();
        // 1 ms before expiry, the head start (delta * beta * -ln u) is almost surely larger.
        advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
        for _ in 0..20 {
            assert_eq!(
                cache
                    .get_or_load("k", loader(&calls, Duration::from_secs(1), ok))
                    .await
                    .unwrap(),
                Some(1)
            );
        }
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1 + refreshes, "beta {beta:?}");
    }
}
