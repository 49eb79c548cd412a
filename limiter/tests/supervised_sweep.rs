//! The lease sweep is supervised: killed (it panics at its next tick, as a bug would), it is
//! started again, and an idle instance's unused lease tokens still go back to Redis.
//! Alone in its binary: a kill reaches every sweep of the process.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use floodwall_core::redis::StoreOptions;
use floodwall_core::task::{self, Task};
use floodwall_limiter::Lease;
use floodwall_limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};
use floodwall_testkit::RedisServer;

mod common;
use common::standalone;

/// Script calls the server has run: when the instance is idle, only its sweep's give-backs.
fn script_calls(server: &RedisServer) -> u64 {
    server.command_calls(&["evalsha", "eval"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sweep_is_restarted_and_idle_leases_still_go_back() {
    let Some(server) =
        RedisServer::start_or_skip("a_killed_sweep_is_restarted_and_idle_leases_still_go_back")
    else {
        return;
    };
    let lifetime = Duration::from_millis(100);
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new(
                "hot",
                Algorithm::Gcra,
                Quota::per_second(NonZeroU32::new(1000).unwrap()),
            )
            .keyed_by("user")
            .lease(Lease::new(NonZeroU32::new(64).unwrap(), lifetime)),
        )
        .redis(
            StoreOptions::new(standalone(&server.url()).await).call_timeout(Duration::from_secs(5)),
        )
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    assert!(limiter.check(&[("user", "idle")]).await.unwrap().allowed);
    let before = task::restarts(Task::LeaseSweep);
    task::kill(Task::LeaseSweep);
    for _ in 0..300 {
        assert!(limiter.check(&[("user", "idle")]).await.unwrap().allowed);
    }
    let idle_from = Instant::now();
    let started = Instant::now();
    while task::restarts(Task::LeaseSweep) == before {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the sweep never restarted"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Idle: the only script calls now are the restarted sweep giving the lease back.
    let idle_calls = script_calls(&server);
    let returned = loop {
        let calls = script_calls(&server);
        if calls > idle_calls {
            break calls - idle_calls;
        }
        assert!(
            idle_from.elapsed() < Duration::from_secs(5),
            "nothing given back after the sweep was killed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    println!(
        "lease sweep killed: {} restart(s); the idle lease given back ({returned} call) {:?} after the last decision",
        task::restarts(Task::LeaseSweep) - before,
        idle_from.elapsed()
    );
}
