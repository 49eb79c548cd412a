//! Resilience hot paths, ours beside the peer crate in the same run.
//!
//! `circuit_breaker/closed`: admit one call and record its success on a closed breaker —
//! floodwall's permit API against failsafe's `CircuitBreaker::call` (same work: permission
//! check, then a success recorded in the failure policy), single-threaded and with two threads
//! sharing one breaker.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use floodwall::resilience::circuit_breaker::CircuitBreaker;

fn closed_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker/closed");

    let ours = CircuitBreaker::builder().build().unwrap();
    g.bench_function(BenchmarkId::new("floodwall", "1 thread"), |b| {
        b.iter(|| {
            let p = ours.try_acquire().unwrap();
            p.success();
        })
    });
    let theirs = failsafe::Config::new().build();
    g.bench_function(BenchmarkId::new("failsafe", "1 thread"), |b| {
        b.iter(|| black_box(theirs.call(|| Ok::<_, ()>(()))).unwrap())
    });

    // Two threads on one shared breaker: the time per call of the measured thread while
    // another hammers the same breaker.
    g.bench_function(BenchmarkId::new("floodwall", "2 threads"), |b| {
        b.iter_custom(|iters| {
            contended(iters, || {
                let p = ours.try_acquire().unwrap();
                p.success();
            })
        })
    });
    g.bench_function(BenchmarkId::new("failsafe", "2 threads"), |b| {
        b.iter_custom(|iters| {
            contended(iters, || {
                black_box(theirs.call(|| Ok::<_, ()>(()))).unwrap();
            })
        })
    });
    g.finish();
}

fn contended(iters: u64, op: impl Fn() + Sync) -> Duration {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                op();
            }
        });
        let start = Instant::now();
        for _ in 0..iters {
            op();
        }
        let took = start.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        other.join().unwrap();
        took
    })
}

criterion_group!(benches, closed_path);
criterion_main!(benches);
