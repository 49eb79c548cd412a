//! floodwall in one page, with no server: run `cargo run --example quickstart`.
//!
//! Shows what exists so far: injectable clocks, collision-free hash-tagged keys, the circuit
//! breaker, and retry with jitter and a retry budget.

use std::num::NonZeroU32;
use std::time::Duration;

use floodwall::core::{Clock, Keyspace, ManualClock, SystemClock};
use floodwall::resilience::Error;
use floodwall::resilience::circuit_breaker::{CircuitBreaker, OpenWait, SlidingWindow};
use floodwall::resilience::retry::{Backoff, Decision, Jitter, Retry, RetryBudget};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Time: production reads the system clock; tests move a manual clock by hand.
    let system = SystemClock::new();
    let t0 = system.now_nanos();
    let manual = ManualClock::new();
    let component_view = manual.clone(); // clones share one time
    manual.advance(Duration::from_secs(30));
    println!(
        "manual clock after advance(30s): {:?} (system clock moved {:?} meanwhile)",
        Duration::from_nanos(component_view.now_nanos()),
        system.elapsed_since(t0)
    );

    // Keys: namespace + version + hash-tagged routing part + parts, safe for user input.
    let users = Keyspace::new("user", 2)?;
    let plain = users.key("42").part("profile").build();
    let hostile = users.key("evil}{tag").part("a:b").build();
    let huge = users.key("x".repeat(5000)).build();
    println!(
        "plain key:    {plain}   (Redis Cluster hash tag: {:?})",
        plain.hash_tag()
    );
    println!(
        "hostile key:  {hostile}   (hash tag: {:?})",
        hostile.hash_tag()
    );
    println!("5 KB input:   {huge}   ({} bytes)", huge.as_str().len());
    let v3 = users.with_version(3).key("42").part("profile").build();
    println!("after a schema bump: {v3} (old keys are never read again)");

    // Circuit breaker: a payment API that fails; after 5 calls at >= 50% failures it opens.
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .name("payments")
        .sliding_window(SlidingWindow::Count(NonZeroU32::new(5).expect("non-zero")))
        .minimum_calls(5)
        .open_wait(OpenWait::Fixed(Duration::from_secs(30)))
        .permitted_calls_in_half_open(NonZeroU32::new(1).expect("non-zero"))
        .clock(clock.clone())
        .build()?;
    for attempt in 1..=7 {
        let result = breaker
            .call(|| async move {
                if attempt % 3 == 0 {
                    Ok("charged")
                } else {
                    Err("503")
                }
            })
            .await;
        match result {
            Ok(v) => println!("call {attempt}: {v}"),
            Err(Error::Inner(e)) => println!("call {attempt}: downstream failed ({e})"),
            Err(Error::CircuitOpen(r)) => println!(
                "call {attempt}: rejected, breaker {:?}, retry after {:?}",
                r.state, r.retry_after
            ),
            Err(other) => println!("call {attempt}: {other}"),
        }
    }
    clock.advance(Duration::from_secs(30));
    let probe = breaker.call(|| async { Ok::<_, &str>("charged") }).await;
    println!(
        "after 30 s, one probe: {probe:?}; breaker is now {:?}",
        breaker.state()
    );

    // Retry: exponential backoff with full jitter, 4 attempts, behind a shared 20% budget.
    let budget = RetryBudget::builder().min_per_sec(1).build()?;
    let retry = Retry::builder()
        .max_attempts(NonZeroU32::new(4).expect("non-zero"))
        .backoff(Backoff::Exponential {
            initial: Duration::from_millis(5),
            multiplier: 2.0,
        })
        .jitter(Jitter::Full)
        .budget(budget.clone())
        .on_retry(|e| println!("  attempt {} failed; retrying in {:?}", e.attempt, e.delay))
        .build();
    let mut attempts = 0;
    let flaky = retry
        .call(|| {
            attempts += 1;
            let n = attempts;
            async move { if n < 3 { Err("503") } else { Ok("charged") } }
        })
        .await;
    println!("flaky payment API: {flaky:?} after {attempts} attempts");

    // Retry around the breaker, against a dead API: a 503 is retried, a rejection from the
    // open breaker is not (it says when to come back); the budget caps retries overall.
    let dont_retry_rejections = |r: &Result<(), Error<&str>>| match r {
        Err(Error::Inner(_)) => Decision::Retry,
        _ => Decision::Done,
    };
    let mut reached = 0;
    for i in 1..=4 {
        let r = retry
            .call_with(&dont_retry_rejections, || {
                let b = breaker.clone();
                async move { b.call(|| async { Err::<(), _>("503") }).await }
            })
            .await;
        if let Err(Error::Inner(_)) = r {
            reached += 1;
        }
        println!("dead API, request {i}: {r:?}");
    }
    println!(
        "breaker is {:?}; {reached} requests ended on a real 503, the rest were shed; {} retries left in the budget",
        breaker.state(),
        budget.available()
    );
    Ok(())
}
