//! Six instances of a service call a payment API that starts failing. Alone, each breaker
//! learns it by itself; joined to a fleet, they open together after a fraction of the calls,
//! a seventh instance starts open, and one instance probes for all when the wait is over.
//!
//! `cargo run --example fleet_breaker` (the fleet in this process; across processes, give
//! each instance a `RedisFleet` on the same Redis instead of the `MemoryFleet`).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use floodwall::resilience::circuit_breaker::fleet::{FleetBreaker, MemoryFleet, Quorum};
use floodwall::resilience::circuit_breaker::{CircuitBreaker, OpenWait, SlidingWindow, State};

const MINIMUM_CALLS: u32 = 20;

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder()
        .name("payments-api")
        .sliding_window(SlidingWindow::Count(
            NonZeroU32::new(MINIMUM_CALLS).unwrap(),
        ))
        .minimum_calls(MINIMUM_CALLS)
        .slow_call_duration(None)
        .open_wait(OpenWait::Fixed(Duration::from_millis(300)))
        .permitted_calls_in_half_open(NonZeroU32::new(2).unwrap())
        .build()
        .unwrap()
}

/// Each breaker calls the API every 10 ms until every one of them is open; the calls the API
/// got by then.
async fn calls_until_all_open(breakers: &[CircuitBreaker], api_down: &AtomicBool) -> u64 {
    let mut calls = 0u64;
    loop {
        for b in breakers {
            if let Ok(permit) = b.try_acquire() {
                calls += 1;
                if api_down.load(Ordering::Relaxed) {
                    permit.failure();
                } else {
                    permit.success();
                }
            }
        }
        if breakers.iter().all(|b| b.state() == State::Open) {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() {
    let api_down = AtomicBool::new(true);

    let alone: Vec<CircuitBreaker> = (0..6).map(|_| breaker()).collect();
    let calls = calls_until_all_open(&alone, &api_down).await;
    println!("six breakers alone: {calls} calls to the failing API before all were open");

    let fleet = MemoryFleet::new();
    let mut members = Vec::new();
    for _ in 0..6 {
        let member = FleetBreaker::builder(breaker(), fleet.clone())
            .quorum(Quorum::Count(3))
            .sync_interval(Duration::from_millis(50))
            .join()
            .await
            .unwrap();
        members.push(member);
    }
    let breakers: Vec<CircuitBreaker> = members.iter().map(|m| m.breaker().clone()).collect();
    let calls = calls_until_all_open(&breakers, &api_down).await;
    println!(
        "six breakers in a fleet (quorum 3): {calls} calls before all were open \
         (one breaker's minimum_calls: {MINIMUM_CALLS})"
    );

    let seventh = FleetBreaker::builder(breaker(), fleet.clone())
        .join()
        .await
        .unwrap();
    println!(
        "a seventh instance joins: {:?} before its first call",
        seventh.breaker().state()
    );

    // The API comes back; after the fleet's wait one instance probes, and its passing
    // probes close every instance.
    api_down.store(false, Ordering::Relaxed);
    let mut rounds = 0;
    while members.iter().any(|m| m.breaker().state() != State::Closed) {
        for m in &members {
            if let Ok(permit) = m.breaker().try_acquire() {
                permit.success();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        rounds += 1;
    }
    let view = members[0].sync_now().await.unwrap();
    println!(
        "the API is back: every instance closed after {} ms; the fleet: {} live, open: {}",
        rounds * 10,
        view.live,
        view.open
    );
}
