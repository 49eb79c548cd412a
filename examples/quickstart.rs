//! floodwall in one screen, with no server: run `cargo run --example quickstart`.
//!
//! A tour of the family, all in memory: a circuit breaker with retry around a failing
//! payment API, a per-user rate limit, a cache stampede coalesced into one load, and an
//! idempotent payment replayed instead of charged twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodwall::cache::TieredCache;
use floodwall::core::ManualClock;
use floodwall::idempotency::{Fingerprint, Idempotency, MemoryStore};
use floodwall::limiter::{Algorithm, Limit, Quota, RateLimiter};
use floodwall::nonzero;
use floodwall::resilience::Error;
use floodwall::resilience::circuit_breaker::{CircuitBreaker, OpenWait, SlidingWindow};
use floodwall::resilience::retry::{Backoff, Decision, Jitter, Retry};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("1. circuit breaker + retry around a payment API");
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .name("payments")
        .sliding_window(SlidingWindow::Count(nonzero!(4)))
        .minimum_calls(4)
        .open_wait(OpenWait::Fixed(Duration::from_secs(30)))
        .permitted_calls_in_half_open(nonzero!(1))
        .clock(clock.clone())
        .build()?;
    let retry = Retry::builder()
        .max_attempts(nonzero!(3))
        .backoff(Backoff::Exponential {
            initial: Duration::from_millis(2),
            multiplier: 2.0,
        })
        .jitter(Jitter::Full)
        .build();
    // A 503 is retried; a rejection by the open breaker is not (it says when to come back).
    let retry_503s = |r: &Result<&str, Error<&str>>| match r {
        Err(Error::Inner(_)) => Decision::Retry,
        _ => Decision::Done,
    };
    let api_calls = Arc::new(AtomicU32::new(0));
    for request in 1..=4 {
        let r = retry
            .call_with(&retry_503s, || {
                let (b, calls) = (breaker.clone(), api_calls.clone());
                async move {
                    b.call(|| async move {
                        // The API answers its 2nd call, then goes down.
                        let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
                        if n == 2 { Ok("charged") } else { Err("503") }
                    })
                    .await
                }
            })
            .await;
        let shown = match &r {
            Ok(v) => v.to_string(),
            Err(Error::CircuitOpen(rej)) => format!("shed by the open breaker ({:?})", rej.state),
            Err(e) => format!("failed: {e}"),
        };
        let calls = api_calls.load(Ordering::Relaxed);
        println!("   request {request}: {shown}; API calls so far: {calls}");
    }
    clock.advance(Duration::from_secs(30));
    let probe = breaker.call(|| async { Ok::<_, &str>("charged") }).await;
    println!(
        "   30 s later one probe: {probe:?}; breaker {:?}",
        breaker.state()
    );

    println!("2. a rate limit: 3 requests per minute per user (GCRA)");
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new("per-user", Algorithm::Gcra, Quota::per_minute(nonzero!(3)))
                .keyed_by("user"),
        )
        .build()?;
    for (user, tries) in [("ann", 4), ("bob", 1)] {
        let mut answers = Vec::new();
        for _ in 0..tries {
            let v = limiter.check(&[("user", user)]).await?;
            answers.push(if v.allowed {
                "allowed".to_string()
            } else {
                format!(
                    "denied (retry in {:.0?})",
                    v.retry_after().unwrap_or_default()
                )
            });
        }
        println!("   {user}: {}", answers.join(", "));
    }

    println!("3. a cache stampede: 100 concurrent misses on one key");
    let cache: TieredCache<String, String> = TieredCache::builder()
        .name("profiles")
        .ttl(Duration::from_secs(60))
        .build();
    let loads = Arc::new(AtomicU32::new(0));
    let gets = (0..100).map(|_| {
        let (cache, loads) = (cache.clone(), loads.clone());
        async move {
            let load = || async move {
                loads.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await; // the slow database
                Ok::<_, String>(Some("Ann, Berlin".to_string()))
            };
            cache.get_or_load("user:42".to_string(), load).await
        }
    });
    let answers = futures::future::join_all(gets).await;
    let stats = cache.stats();
    println!(
        "   {} answers, {} load(s); {} callers joined the load in flight",
        answers.iter().filter(|a| a.is_ok()).count(),
        loads.load(Ordering::Relaxed),
        stats.coalesced
    );

    println!("4. an idempotent payment: the client retries after a lost response");
    let payments = Idempotency::new(MemoryStore::new());
    let charged = AtomicU32::new(0);
    let fp = Fingerprint::of(br#"{"amount":4200}"#);
    for attempt in ["first try", "retry"] {
        let outcome = payments
            .run("ann:order-7", &fp, || async {
                let id = charged.fetch_add(1, Ordering::Relaxed) + 1;
                Ok::<_, String>(format!("ch_{id}"))
            })
            .await?;
        let how = if outcome.is_replayed() {
            "replayed"
        } else {
            "ran"
        };
        println!("   {attempt}: {how}, {}", outcome.into_inner());
    }
    println!("   cards charged: {}", charged.load(Ordering::Relaxed));
    Ok(())
}
