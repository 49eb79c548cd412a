//! Resilience hot paths, ours beside the peer crates in the same run.
//!
//! - `circuit_breaker/closed`: admit one call and record its success on a closed breaker.
//!   floodwall's permit API against recloser's and failsafe's `call`. The peers detect no slow
//!   calls, so the like-for-like row is floodwall with `slow_call_duration(None)`; the row
//!   with slow-call detection (floodwall's default, two clock reads) is shown too. Also with
//!   two threads sharing one breaker. The `floodwall fleet member` row is the same breaker
//!   joined to a fleet (on a Redis server the bench starts, with the `redis` feature; in
//!   memory otherwise), its sync task running beside the bench: the healthy call path of a
//!   fleet breaker against a plain one; their ratio is also printed from alternating rounds
//!   (the median of 41), which a drifting machine moves less than two criterion runs.
//! - `circuit_breaker/layer`: one request through a closed breaker layer around an
//!   always-ready service — floodwall's `CircuitBreakerLayer` against tower-resilience's.
//! - `retry/no_retry_needed`: one successful request through floodwall's `RetryLayer` and
//!   through tower's `Retry` with an equivalent policy.
//! - `bulkhead/uncontended`: one request through floodwall's `BulkheadLayer` and tower's
//!   `ConcurrencyLimit`, both limiting to 25.
//! - `circuit_breaker/fleet_sync` (feature `redis`; starts its own `redis-server`): one fleet
//!   breaker's sync on Redis with 10 and with 200 members — a sync's cost does not grow with
//!   the fleet.
//! - `shed/nothing_overloaded`: one request through floodwall's `ShedLayer` (a signal, level
//!   0; and with a capacity of 1,000, which counts requests in flight) and tower's `LoadShed`,
//!   with nothing overloaded. A `bare` row (the service alone) gives the added cost.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use floodwall::resilience::ErrorLayer;
use floodwall::resilience::circuit_breaker::fleet::{FleetBreaker, MemoryFleet};
use floodwall::resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer};
use futures::FutureExt;
use tower::{Layer, Service, ServiceExt, service_fn};

fn closed_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker/closed");

    let ours = CircuitBreaker::builder()
        .slow_call_duration(None)
        .build()
        .unwrap();
    let ours_slow = CircuitBreaker::builder().build().unwrap();
    let recloser = recloser::Recloser::default();
    let failsafe = failsafe::Config::new().build();

    let floodwall_call = || {
        let p = ours.try_acquire().unwrap();
        p.success();
    };
    // The member stays alive (its sync task runs); calls go through its breaker, as a layer
    // or a pipeline holding a clone of it makes them.
    let (_fleet_runtime, member) = fleet_member();
    let member_breaker = member.breaker().clone();
    let fleet_call = || {
        let p = member_breaker.try_acquire().unwrap();
        p.success();
    };
    let floodwall_slow_call = || {
        let p = ours_slow.try_acquire().unwrap();
        p.success();
    };
    let recloser_call = || black_box(recloser.call(|| Ok::<_, ()>(()))).unwrap();
    let failsafe_call = || black_box(failsafe.call(|| Ok::<_, ()>(()))).unwrap();

    g.bench_function(BenchmarkId::new("floodwall", "1 thread"), |b| {
        b.iter(floodwall_call)
    });
    g.bench_function(
        BenchmarkId::new("floodwall fleet member", "1 thread"),
        |b| b.iter(fleet_call),
    );
    g.bench_function(BenchmarkId::new("floodwall+slow-calls", "1 thread"), |b| {
        b.iter(floodwall_slow_call)
    });
    g.bench_function(BenchmarkId::new("recloser", "1 thread"), |b| {
        b.iter(recloser_call)
    });
    g.bench_function(BenchmarkId::new("failsafe", "1 thread"), |b| {
        b.iter(failsafe_call)
    });

    g.bench_function(BenchmarkId::new("floodwall", "2 threads"), |b| {
        b.iter_custom(|iters| contended(iters, floodwall_call))
    });
    g.bench_function(
        BenchmarkId::new("floodwall fleet member", "2 threads"),
        |b| b.iter_custom(|iters| contended(iters, fleet_call)),
    );
    g.bench_function(BenchmarkId::new("recloser", "2 threads"), |b| {
        b.iter_custom(|iters| contended(iters, recloser_call))
    });
    g.bench_function(BenchmarkId::new("failsafe", "2 threads"), |b| {
        b.iter_custom(|iters| contended(iters, failsafe_call))
    });
    g.finish();
    paired(
        "a fleet member against a plain breaker",
        &ours,
        &member_breaker,
    );
}

/// `calls` admit-and-succeed calls on `b`: one function for every breaker, so two breakers
/// compared run the same machine code.
#[inline(never)]
fn closed_calls(b: &CircuitBreaker, calls: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        let p = black_box(b).try_acquire().unwrap();
        p.success();
    }
    start.elapsed()
}

/// `b`'s time per call against `a`'s, in alternating rounds (the order swapping each round, so
/// a machine that drifts affects both alike), through the same code: the median of each and
/// of their ratio, printed.
fn paired(what: &str, a: &CircuitBreaker, b: &CircuitBreaker) {
    const ROUNDS: usize = 41;
    const CALLS: u32 = 200_000;
    let time = |x: &CircuitBreaker| closed_calls(x, CALLS).as_nanos() as f64 / f64::from(CALLS);
    let (mut ta, mut tb, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (x, y) = if round % 2 == 0 {
            let x = time(a);
            (x, time(b))
        } else {
            let y = time(b);
            (time(a), y)
        };
        ta.push(x);
        tb.push(y);
        ratio.push(y / x);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{what}: {:.2} ns against {:.2} ns per call, median ratio {:.3} over {ROUNDS} paired rounds",
        median(&mut tb),
        median(&mut ta),
        median(&mut ratio)
    );
}

/// A breaker like the plain row's (no slow-call detection), joined to a fleet whose sync task
/// runs on a runtime of its own for the whole bench.
fn fleet_member() -> (FleetRuntime, FleetBreaker) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder()
        .name("bench-fleet")
        .slow_call_duration(None)
        .build()
        .unwrap();
    #[cfg(feature = "redis")]
    if let Some(server) = floodwall_testkit::RedisServer::start_or_skip("fleet breaker bench") {
        use floodwall::core::redis::{RedisConnection, StoreOptions};
        use floodwall::resilience::circuit_breaker::fleet::RedisFleet;
        let member = rt.block_on(async {
            let conn = RedisConnection::standalone(server.url())
                .connect()
                .await
                .unwrap();
            FleetBreaker::builder(breaker, RedisFleet::new(StoreOptions::new(conn)))
                .join()
                .await
                .unwrap()
        });
        assert!(member.connected(), "the fleet breaker bench syncs on Redis");
        return ((rt, Some(server)), member);
    }
    let member = rt.block_on(FleetBreaker::builder(breaker, MemoryFleet::new()).join());
    ((rt, None), member.unwrap())
}

#[cfg(feature = "redis")]
type FleetRuntime = (
    tokio::runtime::Runtime,
    Option<floodwall_testkit::RedisServer>,
);
#[cfg(not(feature = "redis"))]
type FleetRuntime = (tokio::runtime::Runtime, Option<()>);

/// Time for `iters` calls on this thread while a second thread makes the same calls.
fn contended(iters: u64, op: impl Fn() + Sync) -> Duration {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                op();
            }
        });
        let start = Instant::now();
        for _ in 0..iters {
            op();
        }
        let took = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        other.join().unwrap();
        took
    })
}

/// Drives one request through an always-ready service; every future here completes on its
/// first poll.
fn one_request<S: Service<u32>>(svc: &mut S) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    let ready = svc
        .ready()
        .now_or_never()
        .expect("ready at once")
        .expect("ready");
    ready
        .call(black_box(7))
        .now_or_never()
        .expect("answered at once")
        .expect("ok")
}

fn layer(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker/layer");
    let inner = service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) });

    let breaker = CircuitBreaker::builder()
        .slow_call_duration(None)
        .build()
        .unwrap();
    let mut ours = CircuitBreakerLayer::new(breaker).layer(ErrorLayer.layer(inner));
    g.bench_function("floodwall", |b| b.iter(|| one_request(&mut ours)));

    let theirs_layer = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap();
    let mut theirs = theirs_layer.layer(inner);
    g.bench_function("tower-resilience", |b| b.iter(|| one_request(&mut theirs)));
    g.finish();
}

/// tower's retry policy equivalent to floodwall's `RetryOnError` with 3 attempts.
#[derive(Clone)]
struct TowerRetryOnError(usize);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for TowerRetryOnError {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 1 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn retry(c: &mut Criterion) {
    use floodwall::resilience::retry::{Retry, RetryLayer};
    let mut g = c.benchmark_group("retry/no_retry_needed");
    let inner = service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) });
    let mut ours = RetryLayer::new(Retry::builder().build()).layer(inner);
    g.bench_function("floodwall", |b| b.iter(|| one_request(&mut ours)));
    let mut theirs = tower::retry::RetryLayer::new(TowerRetryOnError(3)).layer(inner);
    g.bench_function("tower", |b| b.iter(|| one_request(&mut theirs)));
    g.finish();
}

fn bulkhead(c: &mut Criterion) {
    use floodwall::resilience::bulkhead::{Bulkhead, BulkheadLayer};
    let mut g = c.benchmark_group("bulkhead/uncontended");
    let inner = service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) });
    let bh = Bulkhead::builder()
        .max_concurrent(std::num::NonZeroUsize::new(25).unwrap())
        .build();
    let mut ours = BulkheadLayer::new(bh).layer(ErrorLayer.layer(inner));
    g.bench_function("floodwall", |b| b.iter(|| one_request(&mut ours)));
    let mut theirs = tower::limit::ConcurrencyLimitLayer::new(25).layer(inner);
    g.bench_function("tower", |b| b.iter(|| one_request(&mut theirs)));
    g.finish();
}

fn shed(c: &mut Criterion) {
    use floodwall::resilience::shed::{LoadShedder, Priority, ShedLayer};
    let mut g = c.benchmark_group("shed/nothing_overloaded");
    let inner = service_fn(|x: u32| async move { Ok::<u32, std::io::Error>(x) });
    let mut bare = inner;
    g.bench_function("bare", |b| b.iter(|| one_request(&mut bare)));
    let signal = LoadShedder::builder()
        .signal(|| 0.1)
        .manual_sampling()
        .build()
        .unwrap();
    signal.sample_now();
    let mut ours = ShedLayer::new(signal, Priority::Default).layer(inner);
    g.bench_function("floodwall", |b| b.iter(|| one_request(&mut ours)));
    let counted = LoadShedder::builder()
        .signal(|| 0.1)
        .capacity(1000)
        .manual_sampling()
        .build()
        .unwrap();
    let mut ours_capacity = ShedLayer::new(counted, Priority::Default).layer(inner);
    g.bench_function("floodwall-capacity", |b| {
        b.iter(|| one_request(&mut ours_capacity))
    });
    let mut theirs = tower::load_shed::LoadShedLayer::new().layer(inner);
    g.bench_function("tower", |b| b.iter(|| one_request(&mut theirs)));
    g.finish();
}

/// One fleet sync on Redis (feature `redis`; starts its own server): a report answered by the
/// script, with 10 and with 200 members in the fleet — what a fleet's size costs a sync.
#[cfg(feature = "redis")]
fn fleet_sync(c: &mut Criterion) {
    use floodwall::core::redis::{RedisConnection, StoreOptions};
    use floodwall::resilience::circuit_breaker::fleet::{
        FleetRules, FleetStore, MemberReport, MemberState, Quorum, RedisFleet,
    };
    let Some(server) = floodwall_testkit::RedisServer::start_or_skip("fleet sync bench") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        let conn = RedisConnection::standalone(server.url())
            .connect()
            .await
            .unwrap();
        RedisFleet::new(StoreOptions::new(conn))
    });
    let rules = FleetRules {
        lease: Duration::from_secs(3600),
        quorum: Quorum::Count(3),
        minimum_calls: 20,
        failure_rate_threshold: 50.0,
        slow_call_rate_threshold: 100.0,
        wait_initial: Duration::from_secs(30),
        wait_multiplier: 1.0,
        wait_max: Duration::from_secs(30),
        probers: 1,
        probe_timeout: Duration::from_secs(90),
    };
    let report = |i: usize| MemberReport {
        instance: format!("i{i}"),
        state: MemberState::Closed,
        calls: 5,
        failures: 0,
        slow: 0,
    };
    let mut g = c.benchmark_group("circuit_breaker/fleet_sync");
    for members in [10usize, 200] {
        let name = format!("bench-{members}");
        rt.block_on(async {
            for i in 0..members {
                store.sync(&name, &report(i), &rules).await.unwrap();
            }
        });
        let mine = report(0);
        g.bench_function(format!("{members} members"), |b| {
            b.iter(|| rt.block_on(store.sync(&name, &mine, &rules)).unwrap())
        });
    }
    g.finish();
}

#[cfg(not(feature = "redis"))]
fn fleet_sync(_: &mut Criterion) {}

criterion_group!(
    benches,
    closed_path,
    layer,
    retry,
    bulkhead,
    shed,
    fleet_sync
);
criterion_main!(benches);
