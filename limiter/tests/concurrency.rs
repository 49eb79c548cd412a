//! The fleet concurrency limit on servers these tests start: four instances (own
//! connections) × 64 tasks on one key never hold more than `N` at once, on a standalone server
//! and a 3-master Cluster; a holder cut off from Redis (its heartbeat and release lost, as
//! when its instance is killed) gives its slot back within its lease; a blackholed Redis is
//! answered by each failure policy within the call bound; the HTTP layer answers `429`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodwall_core::Keyspace;
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_limiter::concurrency::{
    ConcurrencyError, ConcurrencyLimit, ConcurrencyLimitLayer, FailurePolicy,
};
use floodwall_testkit::{FaultProxy, RedisServer, on_each_topology};
use tower::{Layer, ServiceExt, service_fn};

mod common;
use common::{connect, standalone};

fn options(conn: RedisConnection, ns: &str) -> StoreOptions {
    StoreOptions::new(conn)
        .keyspace(Keyspace::new(ns, 1).unwrap())
        .call_timeout(Duration::from_secs(5))
}

/// The most requests the "handler" saw in flight at once, and how many it served.
async fn fleet(urls: Vec<String>, cluster: bool) {
    const N: u32 = 10;
    let in_flight = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let limit = ConcurrencyLimit::builder(N)
            .lease(Duration::from_secs(5))
            .on_store_failure(FailurePolicy::FailClosed)
            .redis(options(connect(&urls, cluster).await, "conc-fleet"))
            .build()
            .unwrap();
        for _ in 0..64 {
            let (limit, in_flight, most) = (limit.clone(), in_flight.clone(), most.clone());
            let (served, refused) = (served.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..8 {
                    let permit = loop {
                        match limit.acquire("report-export").await {
                            Ok(p) => break p,
                            Err(ConcurrencyError::Full { .. }) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            Err(e) => panic!("{e}"),
                        }
                    };
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    // The handler is done before the slot is given back.
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                    served.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (most, served) = (most.load(Ordering::SeqCst), served.load(Ordering::Relaxed));
    println!(
        "{}: 4 instances x 64 tasks, N = {N}: {served} requests served, at most {most} in flight \
         at once; {} refusals retried",
        if cluster { "cluster" } else { "standalone" },
        refused.load(Ordering::Relaxed)
    );
    assert_eq!(served, 4 * 64 * 8);
    assert!(most <= N, "{most} in flight");
    assert!(most >= N / 2, "the limit was reached, not starved: {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_never_hold_more_than_the_fleet_limit() {
    on_each_topology("four_instances_never_hold_more_than_the_fleet_limit", |t| {
        fleet(t.urls, t.cluster)
    })
    .await;
}

/// A holder whose connection goes dark (heartbeat and release lost, as when its instance is
/// killed) keeps the slot at most one lease after its last renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holders_slot_is_free_within_its_lease() {
    let Some(server) =
        RedisServer::start_or_skip("a_cut_off_holders_slot_is_free_within_its_lease")
    else {
        return;
    };
    let lease = Duration::from_millis(900);
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let build = |conn| {
        ConcurrencyLimit::builder(1)
            .lease(lease)
            .on_store_failure(FailurePolicy::FailClosed)
            .redis(
                StoreOptions::new(conn)
                    .keyspace(Keyspace::new("conc-crash", 1).unwrap())
                    .call_timeout(Duration::from_millis(300)),
            )
            .build()
            .unwrap()
    };
    let doomed = build(standalone(proxy.redis_url()).await);
    let other = build(standalone(server.url()).await);
    let held = doomed.acquire("tenant-1").await.unwrap();
    // Let a renewal or two land, then cut the holder off.
    tokio::time::sleep(lease).await;
    proxy.blackhole();
    let cut = Instant::now();
    let first = other.acquire("tenant-1").await;
    assert!(
        matches!(first, Err(ConcurrencyError::Full { .. })),
        "still held right after the cut: {first:?}"
    );
    let mut last_refused = Duration::ZERO;
    let freed = loop {
        let asked = cut.elapsed();
        match other.acquire("tenant-1").await {
            Ok(_) => break cut.elapsed(),
            Err(ConcurrencyError::Full { .. }) => last_refused = asked,
            Err(e) => panic!("{e}"),
        }
        assert!(cut.elapsed() < lease * 4, "never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "a cut-off holder's slot: still held {last_refused:?} after the cut, free by {freed:?} \
         (lease {lease:?})"
    );
    // At the last refusal the slot was still held: at most one lease after the last renewal,
    // which landed before the cut.
    assert!(last_refused <= lease, "{last_refused:?}");
    drop(held);
}

/// The slot a holder takes in [`holder_process`] (a child process), with a 900 ms lease.
fn crash_limit(conn: RedisConnection) -> ConcurrencyLimit {
    ConcurrencyLimit::builder(1)
        .lease(Duration::from_millis(900))
        .on_store_failure(FailurePolicy::FailClosed)
        .redis(
            StoreOptions::new(conn)
                .keyspace(Keyspace::new("conc-kill", 1).unwrap())
                .call_timeout(Duration::from_millis(300)),
        )
        .build()
        .unwrap()
}

/// Run as a child process by `a_killed_holders_slot_is_free_within_its_lease`: takes the slot,
/// says so, and holds it (renewing its lease) until it is killed.
#[test]
#[ignore = "a child process of a_killed_holders_slot_is_free_within_its_lease"]
fn holder_process() {
    let Ok(url) = std::env::var("FW_CONCURRENCY_HOLDER_URL") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let limit = crash_limit(standalone(url).await);
        let _held = limit.acquire("tenant-1").await.unwrap();
        println!("HELD");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        std::future::pending::<()>().await;
    });
}

/// A holder process killed with SIGKILL (no release, no more renewals): its slot is taken
/// until at most one lease after its last renewal, then free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_slot_is_free_within_its_lease() {
    use std::io::BufRead;
    let Some(server) = RedisServer::start_or_skip("a_killed_holders_slot_is_free_within_its_lease")
    else {
        return;
    };
    let lease = Duration::from_millis(900);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "holder_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FW_CONCURRENCY_HOLDER_URL", server.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let held = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("HELD"))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .unwrap()
            .unwrap(),
        "the child took the slot"
    );
    let other = crash_limit(standalone(server.url()).await);
    // Let renewals land, then kill -9.
    tokio::time::sleep(lease * 2).await;
    assert!(matches!(
        other.acquire("tenant-1").await,
        Err(ConcurrencyError::Full { .. })
    ));
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    let mut last_refused = Duration::ZERO;
    let freed = loop {
        let asked = killed.elapsed();
        match other.acquire("tenant-1").await {
            Ok(_) => break killed.elapsed(),
            Err(ConcurrencyError::Full { .. }) => last_refused = asked,
            Err(e) => panic!("{e}"),
        }
        assert!(killed.elapsed() < lease * 4, "never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "killed holder (SIGKILL): slot still held {last_refused:?} after the kill, free by \
         {freed:?} (lease {lease:?})"
    );
    // At the last refusal the slot was still held: at most one lease after the kill.
    assert!(last_refused <= lease, "{last_refused:?}");
}

/// Behind a blackholed connection with a 200 ms call bound: fail-open admits, fail-closed
/// refuses, insurance holds each key to its share — each answer within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_is_answered_by_each_policy_within_the_call_bound() {
    let Some(server) = RedisServer::start_or_skip(
        "a_blackholed_redis_is_answered_by_each_policy_within_the_call_bound",
    ) else {
        return;
    };
    let bound = Duration::from_millis(200);
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = standalone(proxy.redis_url()).await;
    let build = |policy| {
        ConcurrencyLimit::builder(4)
            .on_store_failure(policy)
            .redis(
                StoreOptions::new(conn.clone())
                    .keyspace(Keyspace::new("conc-dark", 1).unwrap())
                    .call_timeout(bound),
            )
            .build()
            .unwrap()
    };
    let open = build(FailurePolicy::FailOpen);
    let closed = build(FailurePolicy::FailClosed);
    let insured = build(FailurePolicy::Insurance {
        instances: std::num::NonZeroU32::new(2).unwrap(),
    });
    assert!(
        !open.acquire("k").await.unwrap().is_degraded(),
        "healthy: a Redis slot"
    );
    proxy.blackhole();
    let mut slowest = Duration::ZERO;
    let mut timed = async |limit: &ConcurrencyLimit| {
        let t = Instant::now();
        let r = limit.acquire("k").await;
        slowest = slowest.max(t.elapsed());
        r
    };
    let a = timed(&open).await.unwrap();
    assert!(a.is_degraded());
    let b = timed(&closed).await;
    assert!(
        matches!(b, Err(ConcurrencyError::Unavailable { .. })),
        "{b:?}"
    );
    let share: Vec<_> = [
        timed(&insured).await,
        timed(&insured).await,
        timed(&insured).await,
    ]
    .into_iter()
    .collect();
    assert!(share[0].as_ref().is_ok_and(|p| p.is_degraded()));
    assert!(share[1].is_ok());
    assert!(
        matches!(
            share[2],
            Err(ConcurrencyError::Full {
                limit: 4,
                in_flight: 2,
                ..
            })
        ),
        "insurance holds the key to 4 / 2 instances: {:?}",
        share[2]
    );
    println!("blackholed Redis: slowest answer {slowest:?} (call bound {bound:?})");
    assert!(slowest <= bound + Duration::from_millis(150), "{slowest:?}");
}

#[tokio::test]
async fn the_http_layer_answers_429_with_retry_after_for_a_full_key() {
    let limit = ConcurrencyLimit::builder(1)
        .retry_after(Duration::from_millis(1500))
        .build()
        .unwrap();
    let svc = ConcurrencyLimitLayer::new(limit.clone(), |parts| {
        parts
            .headers
            .get("x-tenant")?
            .to_str()
            .ok()
            .map(str::to_owned)
    })
    .layer(service_fn(|_req: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    }));
    let request = |tenant: &str| {
        http::Request::builder()
            .header("x-tenant", tenant)
            .body(String::new())
            .unwrap()
    };
    let held = limit.acquire("acme").await.unwrap();
    let refused = svc.clone().oneshot(request("acme")).await.unwrap();
    assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "2");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    println!("{}", refused.body());
    let other = svc.clone().oneshot(request("globex")).await.unwrap();
    assert_eq!(other.status(), http::StatusCode::OK);
    drop(held);
    let served = svc.oneshot(request("acme")).await.unwrap();
    assert_eq!(served.status(), http::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_the_limit_holds_under_many_tasks() {
    let limit = ConcurrencyLimit::builder(3).build().unwrap();
    let in_flight = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (limit, in_flight, most) = (limit.clone(), in_flight.clone(), most.clone());
            tokio::spawn(async move {
                let mut served = 0;
                while served < 20 {
                    let Ok(permit) = limit.acquire("k").await else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                    served += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    println!("memory: 32 tasks x 20 requests, N = 3: at most {most} in flight");
    assert!((2..=3).contains(&most), "{most}");
}

/// `FLUSHALL` (Redis losing its data): the forgotten holders no longer count, so up to `N`
/// more are admitted while they run — at most `2N` — and the next one is refused again; the
/// forgotten permits are dropped without harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_holders_at_most_twice_the_limit_run() {
    let Some(server) =
        RedisServer::start_or_skip("after_redis_loses_its_holders_at_most_twice_the_limit_run")
    else {
        return;
    };
    let limit = ConcurrencyLimit::builder(2)
        .on_store_failure(FailurePolicy::FailClosed)
        .redis(options(standalone(server.url()).await, "conc-flush"))
        .build()
        .unwrap();
    let forgotten = [
        limit.acquire("k").await.unwrap(),
        limit.acquire("k").await.unwrap(),
    ];
    assert!(matches!(
        limit.acquire("k").await,
        Err(ConcurrencyError::Full { .. })
    ));
    server.command(&["FLUSHALL"]).unwrap();
    let again = [
        limit.acquire("k").await.unwrap(),
        limit.acquire("k").await.unwrap(),
    ];
    let third = limit.acquire("k").await;
    println!(
        "after FLUSHALL: 2 forgotten holders still running, 2 more admitted, the next: {}",
        third
            .as_ref()
            .map_or_else(|e| e.to_string(), |_| "admitted".into())
    );
    assert!(matches!(
        third,
        Err(ConcurrencyError::Full { in_flight: 2, .. })
    ));
    drop(forgotten);
    assert!(
        matches!(limit.acquire("k").await, Err(ConcurrencyError::Full { .. })),
        "dropping the forgotten permits frees none of the new holders' slots"
    );
    drop(again);
}
