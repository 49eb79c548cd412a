//! Limiter hot paths, ours beside governor in the same run.
//!
//! `limiter/gcra_direct`: one `check` on an in-memory GCRA limiter for a single key, with a
//! quota high enough that calls are admitted, reading the admit bit — floodwall's `Gcra`
//! against governor's direct `RateLimiter`, both on quanta's clock.
//! `limiter/gcra_direct_full_answer`: the same, keeping floodwall's whole `Decision`, against
//! governor's `StateInformationMiddleware` snapshot and its remaining capacity.
//! `limiter/gcra_keyed_10k`: one `check` on a keyed GCRA limiter cycling over 10,000 keys —
//! floodwall's `KeyedGcra<u64>` against governor's keyed `RateLimiter` (both SipHash, both
//! sharded); the same two keyed by IPv4 strings; and floodwall's full `RateLimiter` keyed by
//! an IPv4 string (descriptor matching, key building, the verdict), through the async
//! `check` (one poll: the memory store never waits) and the synchronous `try_check_now` the
//! tower layers use.
//! `limiter/memory_algorithms`: one `check` of the fixed-window, sliding-window-counter,
//! sliding-log and leaky-bucket (meter) limiters.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::limiter::Quota;
use floodwall::limiter::gcra::Gcra;
use futures::FutureExt;

fn gcra_direct(c: &mut Criterion) {
    let mut g = c.benchmark_group("limiter/gcra_direct");
    let rate = NonZeroU32::new(1_000_000_000).unwrap();
    // Governor first: a group's first function tends to run on a cooler, slower-clocked
    // machine, and the order should not favour ours. Both answer the admit bit only (what a
    // caller that just admits or rejects reads; the compiler drops what is not read).
    let theirs = governor::RateLimiter::direct(governor::Quota::per_second(rate));
    g.bench_function("governor", |b| b.iter(|| black_box(theirs.check().is_ok())));
    let ours = Gcra::new(Quota::per_second(rate));
    g.bench_function("floodwall", |b| b.iter(|| black_box(ours.check().allowed)));
    g.finish();

    // The full answer: ours' whole `Decision` against governor's state-information
    // middleware with its remaining capacity (what rate-limit headers need).
    let mut g = c.benchmark_group("limiter/gcra_direct_full_answer");
    let theirs = governor::RateLimiter::direct(governor::Quota::per_second(rate))
        .with_middleware::<governor::middleware::StateInformationMiddleware>();
    g.bench_function("governor", |b| {
        b.iter(|| black_box(theirs.check().map(|s| s.remaining_burst_capacity())))
    });
    g.bench_function("floodwall", |b| b.iter(|| black_box(ours.check())));
    g.finish();
}

fn other_algorithms(c: &mut Criterion) {
    use floodwall::limiter::window::{WindowKind, WindowLimiter};
    let mut g = c.benchmark_group("limiter/memory_algorithms");
    let q = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap());
    let fixed = WindowLimiter::new(WindowKind::Fixed, q);
    g.bench_function("fixed_window", |b| b.iter(|| black_box(fixed.check())));
    let sliding = WindowLimiter::new(WindowKind::SlidingCounter, q);
    g.bench_function("sliding_window_counter", |b| {
        b.iter(|| black_box(sliding.check()))
    });
    let log = floodwall::limiter::sliding_log::SlidingLog::new(Quota::per_second(
        NonZeroU32::new(64).unwrap(),
    ));
    // A log of at most 64 entries, admitting and denying as time passes.
    g.bench_function("sliding_log (limit 64)", |b| {
        b.iter(|| black_box(log.check()))
    });
    let leaky = floodwall::limiter::leaky::LeakyBucket::new(q);
    g.bench_function("leaky_bucket (meter)", |b| {
        b.iter(|| black_box(leaky.check()))
    });
    g.finish();
}

fn gcra_keyed(c: &mut Criterion) {
    use floodwall::limiter::keyed::KeyedGcra;
    const KEYS: u64 = 10_000;
    let mut g = c.benchmark_group("limiter/gcra_keyed_10k");
    let rate = NonZeroU32::new(1_000_000_000).unwrap();
    let ours = KeyedGcra::<u64>::new(Quota::per_second(rate));
    let theirs = governor::RateLimiter::keyed(governor::Quota::per_second(rate));
    for k in 0..KEYS {
        ours.check(&k);
        let _ = theirs.check_key(&k);
    }
    let mut k = 0u64;
    g.bench_function("floodwall", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(ours.check(&k))
        })
    });
    let mut k = 0u64;
    g.bench_function("governor", |b| {
        b.iter(|| {
            k = (k + 1) % KEYS;
            black_box(theirs.check_key(&k))
        })
    });
    // The whole RateLimiter (descriptor lookup, tiers, all-or-nothing) on one keyed limit.
    let limiter = floodwall::limiter::RateLimiter::builder()
        .limit(
            floodwall::limiter::Limit::new(
                "ip",
                floodwall::limiter::Algorithm::Gcra,
                Quota::per_second(rate),
            )
            .keyed_by("ip"),
        )
        .build()
        .unwrap();
    let names: Vec<String> = (0..KEYS)
        .map(|k| format!("10.0.{}.{}", k / 256, k % 256))
        .collect();
    let mut k = 0usize;
    g.bench_function("floodwall RateLimiter (string keys)", |b| {
        b.iter(|| {
            k = (k + 1) % names.len();
            let d = [("ip", names[k].as_str())];
            // The memory store never waits: one poll answers (what `.await` costs in a task).
            let verdict = limiter
                .check(&d)
                .now_or_never()
                .expect("memory store is ready");
            black_box(verdict.unwrap().allowed)
        })
    });
    // The same string keys through both keyed stores: what the key type costs either side.
    let ours_s = floodwall::limiter::keyed::KeyedGcra::<String>::new(Quota::per_second(rate));
    let theirs_s = governor::RateLimiter::keyed(governor::Quota::per_second(rate));
    for n in &names {
        ours_s.check(n);
        let _ = theirs_s.check_key(n);
    }
    let mut k = 0usize;
    g.bench_function("governor (string keys)", |b| {
        b.iter(|| {
            k = (k + 1) % names.len();
            black_box(theirs_s.check_key(&names[k]).is_ok())
        })
    });
    let mut k = 0usize;
    g.bench_function("floodwall KeyedGcra (string keys)", |b| {
        b.iter(|| {
            k = (k + 1) % names.len();
            black_box(ours_s.check(&names[k]))
        })
    });
    let mut k = 0usize;
    g.bench_function("floodwall RateLimiter try_check_now (string keys)", |b| {
        b.iter(|| {
            k = (k + 1) % names.len();
            let d = [("ip", names[k].as_str())];
            black_box(limiter.try_check_now(&d).expect("memory").unwrap().allowed)
        })
    });
    g.finish();
}

criterion_group!(benches, gcra_direct, gcra_keyed, other_algorithms);
criterion_main!(benches);
