//! Core hot paths: reading a clock and building a key, each beside the plain std equivalent.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::core::{Clock, Keyspace, ManualClock, SystemClock};

fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock/now");
    let system = SystemClock::new();
    let manual = ManualClock::new();
    g.bench_function("std::Instant::now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    g.bench_function("floodwall::SystemClock", |b| {
        b.iter(|| black_box(system.now_nanos()))
    });
    g.bench_function("floodwall::ManualClock", |b| {
        b.iter(|| black_box(manual.now_nanos()))
    });
    g.finish();
}

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("key/build");
    let ks = Keyspace::new("user", 2).unwrap();
    g.bench_function("format! (no escaping)", |b| {
        b.iter(|| {
            black_box(format!(
                "user:v2:{{{}}}:{}",
                black_box("42"),
                black_box("profile")
            ))
        })
    });
    g.bench_function("floodwall::Keyspace", |b| {
        b.iter(|| black_box(ks.key(black_box("42")).part(black_box("profile")).build()))
    });
    let hostile = "a:b{c}".repeat(40);
    g.bench_function("floodwall::Keyspace (hashed part)", |b| {
        b.iter(|| black_box(ks.key(black_box(&hostile)).build()))
    });
    g.finish();
}

criterion_group!(benches, clocks, keys);
criterion_main!(benches);
